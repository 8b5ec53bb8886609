"""Only what is stale is rebuilt (README "Rebuilding only what is stale"), on the tiny config
after one full run, and an interrupted pseudo-label write is never taken as complete.

The session's tiny run (conftest.py) runs from a copy of this repository's workflow files
(Snakefile, rules, scripts, segcore sources, configs, profiles, envs) so that the code-change
tests can edit a source file of the copy: the scripts still import the installed segcore, but
the planning hashes the import closure of each rule's entry script under the Snakefile's folder
(``code_version`` in rules/common.smk, segcore/code_version.py), which is what is checked here.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import h5py
import pytest

from segcore import stages
from segcore.pseudo.store import HardStore, SoftStore
from workflow_helpers import copy_workdir, planned_jobs, snakemake, tiny_config, write_config

CHAINS = ("gta5_to_cityscapes", "synthia_to_cityscapes")


def run_snakemake(repo: Path, workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`snakemake` of ``repo``'s Snakefile in ``workdir`` (2 cores unless ``args`` say otherwise)."""
    return snakemake(workdir, *args, timeout=timeout, snakefile=repo / "Snakefile")


def planned_outputs(output: str) -> list[str]:
    """The output paths of the jobs of a dry run (``output: a, b`` lines of each job)."""
    paths = []
    for line in output.splitlines():
        m = re.match(r"\s+output: (.*)$", line)
        if m:
            paths += [p.strip() for p in m.group(1).split(",")]
    return paths


@pytest.fixture
def wf(tiny_workflow):
    """(workflow copy, working directory) of the session's tiny run (conftest.py)."""
    return tiny_workflow.repo, tiny_workflow.work


@pytest.fixture
def restore_config(wf):
    yield
    write_config(wf[1], tiny_config())


def dry_run(wf, *args):
    proc = run_snakemake(*wf, "-n", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_stage1_parameter_reruns_stage1_and_downstream_in_both_chains(wf, restore_config):
    cfg = tiny_config()
    cfg["proda"]["stage1"]["proto_consistW"] = 5.0
    write_config(wf[1], cfg)
    out = dry_run(wf)
    # stage 1, the stage-1 and stage-2 hard labels, stages 2 and 3, SeCo on stage 1 (seco.bases)
    # and its quality tables, their evaluations, the table
    assert planned_jobs(out) == {"proda_stage1": 2, "hard_labels": 4, "distill_stage2": 2, "distill_stage3": 2,
                                 "seco_base_labels": 2, "seco_psa": 2, "seco_scc": 2, "seco_retrain": 2,
                                 "seco_quality": 2, "evaluate": 8, "results_table": 1, "all": 1,
                                 "report_tables": 1, "report_plots": 2, "report_overlays": 2, "report_quality": 2,
                                 "report_cost": 1}
    outputs = planned_outputs(out)
    for chain in CHAINS:
        assert f"results/{chain}/proda/stage1/model.pt" in outputs
        assert f"results/{chain}/eval/proda/stage3.json" in outputs
    assert not any(p.endswith(("warmup/model.pt", "soft_labels.h5", "prototypes.pt", "backbone.pt",
                               "source_only/model.pt", "oracle/model.pt")) for p in outputs), outputs


def test_synthia_converter_parameter_reruns_only_the_synthia_chain(wf, restore_config):
    cfg = tiny_config()
    cfg["datasets"]["synthia"]["size_mismatch"] = "resize_label"
    write_config(wf[1], cfg)
    out = dry_run(wf)
    # everything of the synthia chain that reads the synthia data, directly or not; the oracle
    # trains on Cityscapes only and stays
    assert planned_jobs(out) == {"convert": 1, "source_only": 1, "warmup": 1, "simclr": 1, "soft_labels": 1,
                                 "init_prototypes": 1, "class_distribution": 1, "proda_stage1": 1, "cpsl_stage1": 1,
                                 "hard_labels": 4, "distill_stage2": 2, "distill_stage3": 2,
                                 "ddb_st": 4, "ddb_prototypes": 4, "ddb_ckd": 2,
                                 "uvpt_source": 2, "uvpt_pseudo_labels": 2, "uvpt_adapt": 2,
                                 "seco_base_labels": 1, "seco_psa": 1, "seco_scc": 1, "seco_retrain": 1,
                                 "seco_quality": 1,
                                 "evaluate": len(stages.TABLE_RUNS) - 1, "results_table": 1, "all": 1,
                                 "report_tables": 1, "report_plots": 2, "report_overlays": 1, "report_quality": 1,
                                 "report_cost": 1}
    outputs = planned_outputs(out)
    assert "results/data/synthia/manifest.csv" in outputs
    # the report's per-chain plots read the whole results table: the GTA5 chain's are redrawn too
    redrawn = {f"results/report/gta5_to_cityscapes/{n}.svg" for n in ("progression", "per_class_iou")}
    outputs = [p for p in outputs if p not in redrawn]
    assert not any("gta5" in p or "data/cityscapes" in p or "oracle" in p for p in outputs), outputs


@pytest.mark.parametrize("args", [("--cores", "1"), ("--set-threads", "convert=1", "evaluate=2"),
                                  ("--resources", "mem_mb=1000"), ("--cores", "1", "--set-threads", "convert=1")],
                         ids=["cores", "set-threads", "resources", "cores+threads"])
def test_machine_settings_rerun_nothing(wf, args):
    out = dry_run(wf, *args)
    assert "Nothing to be done" in out, out[-3000:]


def test_code_change_reruns_the_stages_running_that_code(wf):
    repo, _ = wf
    source = repo / "segcore/methods/distill.py"
    original = source.read_bytes()
    try:
        source.write_bytes(original + b"\n# a change of the distillation code\n")
        out = dry_run(wf)
    finally:
        source.write_bytes(original)
    # ProDA's and CPSL's stages 2 and 3 (the same distillation code) in both chains
    assert planned_jobs(out) == {"distill_stage2": 4, "hard_labels": 4, "distill_stage3": 4, "evaluate": 8,
                                 "results_table": 1, "all": 1,
                                 "report_tables": 1, "report_plots": 2, "report_overlays": 2, "report_cost": 1}
    assert "Nothing to be done" in dry_run(wf)  # restored source: up to date again


def dry_run_after_edit(wf, rel):
    """The dry run with one source file of the copy edited (restored after)."""
    source = wf[0] / rel
    original = source.read_bytes()
    try:
        source.write_bytes(original + b"\n# an edit\n")
        return dry_run(wf)
    finally:
        source.write_bytes(original)


def test_editing_a_module_evaluation_imports_indirectly_reruns_every_evaluation(wf):
    # workflow_scripts/evaluate.py -> segcore/evaluate.py -> segcore/metrics.py; of the training
    # jobs only the stages that validate (best-on-val: segcore/train/best.py) import it
    out = dry_run_after_edit(wf, "segcore/metrics.py")
    planned = planned_jobs(out)
    assert planned["evaluate"] == len(CHAINS) * len(stages.TABLE_RUNS)
    for rule in ("source_only", "oracle", "warmup", "proda_stage1", "cpsl_stage1", "distill_stage2",
                 "distill_stage3"):
        assert planned[rule] == (4 if rule.startswith("distill") else 2), rule
    for rule in ("demo_gta5", "convert", "simclr", "ddb_st", "ddb_prototypes", "ddb_ckd", "uvpt_source",
                 "uvpt_pseudo_labels", "uvpt_adapt"):
        assert rule not in planned, rule  # they never validate: their code does not include it


def test_editing_a_module_a_stage_does_not_import_leaves_it_up_to_date(wf):
    # only CPSL stage 1 imports the CPSL module: ProDA's stages and everything upstream stay
    out = dry_run_after_edit(wf, "segcore/methods/cpsl.py")
    assert planned_jobs(out) == {"cpsl_stage1": 2, "hard_labels": 4, "distill_stage2": 2, "distill_stage3": 2,
                                 "evaluate": 6, "results_table": 1, "all": 1,
                                 "report_tables": 1, "report_plots": 2, "report_overlays": 2, "report_cost": 1}
    assert not any("/proda/" in p or "warmup/" in p for p in planned_outputs(out)), planned_outputs(out)
    assert "Nothing to be done" in dry_run(wf)


def test_targeted_forcerun_runs_that_job_only(wf):
    out = dry_run(wf, "results/gta5_to_cityscapes/proda/stage2/model.pt", "--forcerun", "distill_stage2")
    assert planned_jobs(out) == {"distill_stage2": 1}
    assert sorted(planned_outputs(out)) == [f"results/gta5_to_cityscapes/proda/stage2/{f}"
                                            for f in ("metrics_best.json", "model.pt", "model_best.pt")]


# --- pseudo-label stores: an interrupted write is never taken as complete -------------------

def _one_line_error_naming(exc_info, path):
    msg = str(exc_info.value)
    assert "\n" not in msg and str(path) in msg, msg


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_store_refuses_truncated_or_unfinished_file(wf, tmp_path, kind):
    _, work = wf
    run = "warmup/soft_labels.h5" if kind == "soft" else "proda/stage1/hard_labels.h5"
    good = work / "results/gta5_to_cityscapes" / run
    store = SoftStore if kind == "soft" else HardStore
    store(good, expect_classes=19)  # the finished one opens

    truncated = tmp_path / good.name
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(ValueError) as exc:
        store(truncated, expect_classes=19)
    _one_line_error_naming(exc, truncated)

    unfinished = tmp_path / f"unfinished_{good.name}"
    shutil.copy2(good, unfinished)
    with h5py.File(unfinished, "a") as h5:
        del h5.attrs["complete"]  # as left by a write that never reached its end
    with pytest.raises(ValueError, match="incomplete") as exc:
        store(unfinished, expect_classes=19)
    _one_line_error_naming(exc, unfinished)


def test_interrupted_pseudo_label_write_is_regenerated(wf):
    """A write killed mid-way leaves only its temporary file (the final name is created by a
    rename at the end): asking for the store again regenerates it, complete."""
    repo, shared = wf
    work = copy_workdir(shared, shared.parent / "interrupted write")  # the shared run stays as it is
    wf = (repo, work)
    rel = "results/synthia_to_cityscapes/proda/stage1/hard_labels.h5"
    target = work / rel
    target.unlink()
    leftover = target.parent / ".hard_labels.h5.k1ll3d.tmp"
    leftover.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)  # a truncated HDF5 start
    out = dry_run(wf, rel)
    assert planned_jobs(out) == {"hard_labels": 1}
    assert planned_outputs(out) == [rel]
    proc = run_snakemake(*wf, rel)
    assert proc.returncode == 0, proc.stderr[-4000:]
    HardStore(target, expect_classes=16)  # complete again

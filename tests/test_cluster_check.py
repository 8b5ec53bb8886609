"""Cluster settings that cannot work stop the workflow when it is parsed, before anything is
planned or submitted (segcore/cluster_check.py, rules/cluster_checks.smk)."""
from __future__ import annotations

import pytest

from segcore import cluster_check as cc
from workflow_helpers import ROOT, planned_jobs, snakemake, tiny_config, write_config

EXPECTED = ("Invalid cluster settings: rule proda_stage1 gets gpu=4 (set-resources) but config key "
            "'proda.stage1.batch_size' (merged from train.batch_size) is 2, not divisible by 4")


STAGE1_BATCH_4 = (cc.BatchKey("proda.stage1.batch_size", 4, "train.batch_size"),)


def rule(resources, torchrun=True, batches=STAGE1_BATCH_4):
    return cc.RuleSettings("r", resources, origin={k: "set-resources" for k in resources}, torchrun=torchrun,
                           batches=batches)


def test_batch_must_divide_by_the_gpus_of_a_torchrun_rule():
    assert cc.check_rule(rule({"gpu": 4})) == []
    assert cc.check_rule(rule({"gpu": 1}, batches=(cc.BatchKey("k.batch_size", 3),))) == []  # one process
    [line] = cc.check_rule(rule({"gpu": 3}))
    assert line == ("Invalid cluster settings: rule r gets gpu=3 (set-resources) but config key "
                    "'proda.stage1.batch_size' (merged from train.batch_size) is 4, not divisible by 3")
    [own] = cc.check_rule(rule({"gpu": 4}, batches=(cc.BatchKey("cpsl.stage2.batch_size", 6),)))
    assert "'cpsl.stage2.batch_size' is 6, not divisible by 4" in own and "merged" not in own


@pytest.mark.parametrize("resources, words", [
    ({"gpu": -1}, "gpu=-1 (set-resources) but the GPU count must be a whole number >= 0"),
    ({"gpu": "1.5"}, "gpu=1.5 (set-resources) but the GPU count must be a whole number >= 0"),
    ({"gpu": 0, "cpus_per_gpu": 4}, "cpus_per_gpu=4 (set-resources) but no GPU (gpu=0)"),
    ({"gpu": 2, "gres": "gpu:2"}, "gres=gpu:2 (set-resources) next to gpu=2"),
    ({"gpu": 1, "mem_mb": 0}, "mem_mb=0 (set-resources) but mem_mb must be a positive number"),
    ({"gpu": 1, "runtime": "soon"}, "runtime=soon (set-resources) but runtime must be a positive number"),
])
def test_profile_mistakes_are_one_line_each(resources, words):
    [line] = cc.check_rule(rule(resources))
    assert line.startswith(cc.PREFIX) and "rule r gets " in line and words in line and "\n" not in line


def test_more_than_one_gpu_for_a_one_process_rule():
    [line] = cc.check_rule(rule({"gpu": 2}, torchrun=False, batches=()))
    assert "rule r gets gpu=2 (set-resources) but it runs one process" in line


def test_stage_batch_names_the_key_it_comes_from():
    cfg = {"train": {"batch_size": 2}, "proda": {"stage1": {}, "stage2": {"batch_size": 8}}}
    assert cc.stage_batch(cfg, "proda.stage1") == cc.BatchKey("proda.stage1.batch_size", 2, "train.batch_size")
    assert cc.stage_batch(cfg, "proda.stage2") == cc.BatchKey("proda.stage2.batch_size", 8, None)
    assert cc.options_batch({"simclr": {"options": {"batch_size": 6}}}, '{"batch_size": 6}') == \
        cc.BatchKey("simclr.options.batch_size", 6)
    assert cc.options_batch({}, "{}") is None


# ------------------------------------------------------------------ through Snakemake, at parse time

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("cluster_check")
    write_config(work, tiny_config())  # train.batch_size: 2
    return work


def test_dry_run_with_too_many_gpus_for_the_batch_stops_with_one_line(workdir):
    proc = snakemake(workdir, "-n", "--set-resources", "proda_stage1:gpu=4", timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert [line for line in out.splitlines() if line.startswith(cc.PREFIX)] == [EXPECTED]
    assert "Job stats" not in out and "rule proda_stage1:" not in out  # nothing planned


def test_dry_run_plans_when_the_batch_divides(workdir):
    cfg = tiny_config()
    cfg["train"] = dict(cfg["train"], batch_size=4)
    write_config(workdir, cfg)
    try:
        proc = snakemake(workdir, "-n", "--quiet", "rules", "--set-resources", "proda_stage1:gpu=4", timeout=300)
    finally:
        write_config(workdir, tiny_config())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert planned_jobs(proc.stdout)["proda_stage1"] == 2


def test_slurm_profile_with_the_tiny_batch_stops_before_planning(workdir):
    # the real profile: 4 GPUs for the stage-1 and distillation rules, against a global batch of 2
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="snakemake-executor-plugin-slurm not installed")
    proc = snakemake(workdir, "--profile", str(ROOT / "profiles" / "slurm"), "-n", timeout=300)
    out = proc.stdout + proc.stderr
    lines = [line for line in out.splitlines() if line.startswith(cc.PREFIX)]
    assert proc.returncode != 0 and EXPECTED in lines, out[-3000:]
    assert all("(set-resources)" in line and "not divisible by 4" in line for line in lines)
    assert "Job stats" not in out

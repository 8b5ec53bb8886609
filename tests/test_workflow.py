"""The whole workflow on a tiny config: every rule of both chains runs, the results table is
right, and a second run has nothing to do."""
import json
import math
import re

import pandas as pd
import pytest

from segcore.data.classes import CLASSES19
from workflow_helpers import copy_workdir, planned_with_config, tiny_config, write_config

RUNS = {("source_only", "source_only"): "source_only", ("proda", "warmup"): "warmup",
        ("proda", "stage1"): "proda/stage1", ("proda", "stage2"): "proda/stage2",
        ("proda", "stage3"): "proda/stage3", ("cpsl", "stage1"): "cpsl/stage1", ("cpsl", "stage2"): "cpsl/stage2",
        ("cpsl", "stage3"): "cpsl/stage3", ("oracle", "oracle"): "oracle",
        ("seco", "proda/stage1"): "seco/proda_stage1/retrain",
        **{("ddb", s): f"ddb/{s}" for s in ("r1_st_cu", "r1_st_ca", "r1_ckd", "r2_st_cu", "r2_st_ca", "r2_ckd")},
        **{("uvpt", f"{f}/{k}"): f"uvpt/{f}/{k}" for f in ("swin", "mit") for k in ("source", "adapted")}}
CHAINS = ("gta5_to_cityscapes", "synthia_to_cityscapes")


@pytest.fixture
def tiny_run(tiny_workflow):
    """The working directory of the session's tiny run (conftest.py)."""
    return tiny_workflow.work


def planned(tiny_workflow, cfg):
    return planned_with_config(tiny_workflow.work, cfg, snakefile=tiny_workflow.repo / "Snakefile")


def test_table_has_every_row_with_values_from_the_metrics(tiny_run):
    table = pd.read_csv(tiny_run / "results/tables/results.csv")
    assert (tiny_run / "results/tables/results.md").read_text().count("\n") >= len(CHAINS) * len(RUNS)
    assert len(table) == len(CHAINS) * len(RUNS)
    for chain in CHAINS:
        for (method, stage), run in RUNS.items():
            row = table[(table.chain == chain) & (table.method == method) & (table.stage == stage)]
            assert len(row) == 1, (chain, method, stage)
            row = row.iloc[0]
            metrics = json.loads((tiny_run / f"results/{chain}/eval/{run}.json").read_text())
            key = "mIoU19" if chain.startswith("gta5") else "mIoU16"
            assert row.metric == key
            assert 0.0 <= row.mIoU <= 100.0
            assert row.mIoU == pytest.approx(metrics[key])
            assert metrics["images"] == 4  # the whole val split
            for name, value in metrics["iou"].items():
                if value is not None:
                    assert row[f"iou_{name}"] == pytest.approx(value)
            if key == "mIoU16":
                assert row.mIoU13 == pytest.approx(metrics["mIoU13"])
                assert math.isnan(row.iou_terrain) and math.isnan(row.iou_train)
            else:
                assert math.isnan(row.mIoU13)


def test_published_numbers_beside_ours(tiny_run):
    table = pd.read_csv(tiny_run / "results/tables/results.csv").set_index(["chain", "method", "stage"])
    assert table.loc[("gta5_to_cityscapes", "proda", "stage3"), "published"] == 57.5
    assert table.loc[("synthia_to_cityscapes", "proda", "stage3"), "published_mIoU13"] == 62.0
    assert table.loc[("gta5_to_cityscapes", "cpsl", "stage3"), "published"] == 60.8
    assert math.isnan(table.loc[("gta5_to_cityscapes", "oracle", "oracle"), "published"])


def test_artifacts_in_declared_layout_and_nothing_half_written(tiny_run):
    for chain in CHAINS:
        for rel in ("warmup/model.pt", "warmup/soft_labels.h5", "warmup/prototypes.pt", "simclr/backbone.pt",
                    "proda/stage1/hard_labels.h5", "proda/stage2/hard_labels.h5", "proda/stage3/model.pt",
                    "warmup/class_distribution.json", "cpsl/stage1/prototypes.pt", "cpsl/stage1/hard_labels.h5",
                    "cpsl/stage2/hard_labels.h5", "cpsl/stage3/model.pt"):
            assert (tiny_run / "results" / chain / rel).is_file(), rel
    for ds in ("gta5", "synthia", "cityscapes"):
        manifest = pd.read_csv(tiny_run / f"results/data/{ds}/manifest.csv")
        assert len(manifest) == (12 if ds == "cityscapes" else 8)
        stats = json.loads((tiny_run / f"results/data/{ds}/class_stats.json").read_text())
        assert stats["classes"] == list(CLASSES19)
    leftovers = [p for p in (tiny_run / "results").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    assert not list((tiny_run / "work").rglob("resume.pt"))  # rolling state is removed once a stage is done


def test_second_run_has_nothing_to_do(tiny_workflow):
    proc = tiny_workflow.snakemake("-n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_changing_a_stage_parameter_reruns_that_stage_and_what_follows(tiny_workflow):
    cfg = tiny_config()
    cfg["proda"]["stage2"]["distillation"] = 0.5
    planned_jobs = planned(tiny_workflow, cfg)
    # stage 2 of both chains, the stage-2 and stage-3 pseudo-labels, stage 3, their evaluations
    assert planned_jobs == {"distill_stage2": 2, "hard_labels": 2, "distill_stage3": 2,
                       "evaluate": 4, "results_table": 1, "all": 1,
                            "report_tables": 1, "report_plots": 2, "report_overlays": 2, "report_cost": 1}


def test_changing_a_cpsl_stage1_parameter_reruns_cpsl_only(tiny_workflow):
    cfg = tiny_config()
    cfg["cpsl"]["stage1"]["SL_lambda"] = 0.5
    planned_jobs = planned(tiny_workflow, cfg)
    # CPSL stage 1 of both chains and everything after it; ProDA and the warm-up artifacts stay
    assert planned_jobs == {"cpsl_stage1": 2, "hard_labels": 4, "distill_stage2": 2,
                       "distill_stage3": 2, "evaluate": 6, "results_table": 1, "all": 1,
                            "report_tables": 1, "report_plots": 2, "report_overlays": 2, "report_cost": 1}


def test_class_distribution_is_the_warmup_argmax_share(tiny_run):
    from segcore.pseudo.class_distribution import argmax_counts
    from segcore.pseudo.store import SoftStore

    for chain in CHAINS:
        obj = json.loads((tiny_run / f"results/{chain}/warmup/class_distribution.json").read_text())
        with SoftStore(tiny_run / f"results/{chain}/warmup/soft_labels.h5") as store:
            counts = argmax_counts(store)
        assert obj["counts"] == counts.tolist() and obj["num_classes"] == len(counts)
        assert sum(obj["distribution"]) == pytest.approx(1.0)


def test_source_only_warmup_mode_reuses_the_source_only_model(tiny_workflow):
    work = copy_workdir(tiny_workflow.work, tiny_workflow.work.parent / "warmup mode")
    write_config(work, tiny_config(warmup={"mode": "source_only"}, run_chains=["gta5_to_cityscapes"]))
    proc = tiny_workflow._replace(work=work).snakemake("results/gta5_to_cityscapes/warmup/model.pt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "rule warmup" in out and "train_source.py --mode adversarial" not in out
    assert "rule source_only" not in out  # the source-only model of the finished run is reused
    chain = work / "results/gta5_to_cityscapes"
    assert (chain / "warmup/model.pt").read_bytes() == (chain / "source_only/model.pt").read_bytes()
    assert not list(chain.rglob("*.tmp"))


def test_changing_a_ddb_cu_option_reruns_only_the_cu_path_and_what_follows(tiny_workflow):
    cfg = tiny_config()
    cfg["ddb"]["st"]["cut_area"] = 0.3
    planned_jobs = planned(tiny_workflow, cfg)
    # per chain: cu of both rounds, round 2's ca (it starts from round 1's CKD student), their
    # prototypes, both CKD students and the evaluations of all but r1_st_ca
    assert planned_jobs == {"ddb_st": 6, "ddb_prototypes": 6, "ddb_ckd": 4, "evaluate": 10,
                            "results_table": 1, "all": 1,
                            "report_tables": 1, "report_plots": 2, "report_overlays": 2, "report_cost": 1}


def test_ddb_round_two_starts_from_round_one_student(tiny_run):
    import torch

    for chain in CHAINS:
        ddb = tiny_run / "results" / chain / "ddb"
        for path in ("cu", "ca"):
            r1 = torch.load(ddb / f"r1_st_{path}/model.pt", map_location="cpu", weights_only=True)["meta"]
            r2 = torch.load(ddb / f"r2_st_{path}/model.pt", map_location="cpu", weights_only=True)["meta"]
            assert r1["round"] == 1 and "init" not in r1 and r1["lr_mult"] == 1.0
            assert r2["round"] == 2 and r2["lr_mult"] == pytest.approx(0.1)
            assert r2["init"] == f"results/{chain}/ddb/r1_ckd/model.pt"
        ckd = torch.load(ddb / "r2_ckd/model.pt", map_location="cpu", weights_only=True)["meta"]
        assert ckd["teachers"] == {p: f"results/{chain}/ddb/r2_st_{p}/model.pt" for p in ("cu", "ca")}


def test_another_seed_adds_only_its_own_runs(tiny_workflow):
    """seeds: [3, 4] after the one-seed run: every seed-dependent job again under
    results/<chain>/seed_4/ with --seed 4, the data and the seed-3 runs untouched, and the
    table over both seeds."""
    write_config(tiny_workflow.work, tiny_config(seeds=[3, 4]))
    try:
        proc = tiny_workflow.snakemake("-n", "-p")
    finally:
        write_config(tiny_workflow.work, tiny_config())
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    outputs = [p.strip() for line in out.splitlines() if line.strip().startswith("output:")
               for p in line.split(":", 1)[1].split(",")]
    per_seed = [p for p in outputs if p.startswith("results/") and "/seed_4/" in p]
    shared = sorted(set(outputs) - set(per_seed))
    assert all(p.startswith(("results/tables/", "results/report/")) for p in shared), shared
    for chain in CHAINS:
        for run in RUNS.values():
            assert f"results/{chain}/seed_4/eval/{run}.json" in per_seed, run
    seeds = set(re.findall(r"--seed (\d+)", out))
    assert seeds == {"4"}, seeds
    table_job = out.split("rule results_table:", 1)[1].split("\n\n", 1)[0]
    assert "results/gta5_to_cityscapes/eval/source_only.json" in table_job
    assert "results/gta5_to_cityscapes/seed_4/eval/source_only.json" in table_job

"""Best-on-val (segcore/train/best.py, rules/common.smk): validation during training gives what
the evaluation gives, keeps the best checkpoint as its own artifact, leaves the last one as it
is without validation, and the `handoff` switch picks which of the two the next stages read.
The runner's side (ties, resume, leftover files) is in test_runner.py."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from segcore import stages
from segcore.evaluate import evaluate
from segcore.models.checkpoint import load_model, save_model
from segcore.models.deeplabv2 import build_deeplabv2
from segcore.train import best, source_loop
from segcore.train.best_checkpoint import BestCheckpoint
from workflow_helpers import converted_gta5_cityscapes, planned_with_config, tiny_config, write_config


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory):
    """Converted tiny GTA5 and Cityscapes (train 4, val 5) sets."""
    source, cityscapes = converted_gta5_cityscapes(tmp_path_factory.mktemp("best"), val_count=5)
    return source, dict(cityscapes, split="val")


def test_validation_gives_the_evaluation_and_draws_nothing_from_the_rng(tiny_sets, tmp_path):
    _, val = tiny_sets
    torch.manual_seed(1)
    model = build_deeplabv2(19, "small")
    spec = best.BestOnVal(val, 19, str(tmp_path / "b.pt"), str(tmp_path / "b.json"), batch_size=2)
    rng = torch.get_rng_state()
    got = spec.validate(model, "cpu")
    assert torch.equal(rng, torch.get_rng_state())
    want = evaluate(model, val["manifest"], "val", 19, resize=val["resize"], batch_size=4, log=lambda s: None)
    assert got == want and got["images"] == 5 and got["pixels"] > 0


def _source_only(source, out, options, best_on_val=None):
    from segcore.config import stage_options, validate

    cfg = tiny_config()
    validate(cfg)
    opts = dict(stage_options(cfg, "source_only"), iterations=6, checkpoint_every=2, log_every=2, **options)
    return source_loop.SupervisedJob(mode="source_only", labelled=source, num_classes=19, arch="small", options=opts,
                                     seed=0, out=str(out / "model.pt"), workdir=str(out / "work"), best=best_on_val)


def test_training_job_keeps_the_best_checkpoint_and_its_metrics(tiny_sets, tmp_path):
    source, val = tiny_sets
    torch.set_num_threads(1)
    spec = best.BestOnVal(val, 19, str(tmp_path / "v/model_best.pt"), str(tmp_path / "v/metrics_best.json"),
                          val_every=2)
    lines = []
    source_loop.run(_source_only(source, tmp_path / "v", {"lr": 0.01}, spec), log=lines.append)
    assert sum("validation at" in line for line in lines) == 3  # 2, 4, 6
    model, meta = load_model(spec.model_out, expect_num_classes=19)
    metrics = json.loads((tmp_path / "v/metrics_best.json").read_text())
    chosen = metrics["selected"]["iteration"]
    assert meta["selected"]["iteration"] == chosen == meta["iterations"] and meta["stage"] == "source_only"
    assert metrics["selected"]["validated_at"] == [2, 4, 6]
    # the file's metrics are the evaluation of the file, and no other validation scored higher
    again = evaluate(model, val["manifest"], "val", 19, resize=val["resize"], log=lambda s: None)
    assert {k: metrics[k] for k in again} == again
    scores = [float(line.split("mIoU19 ")[1].split()[0]) for line in lines if "validation at" in line]
    assert round(metrics["mIoU19"], 2) == max(scores)
    # the last checkpoint is the one a run without validation writes
    source_loop.run(_source_only(source, tmp_path / "plain", {"lr": 0.01}), log=lambda s: None)
    a = torch.load(tmp_path / "v/model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "plain/model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "v/work").glob("*.pt"))


def test_arguments_go_together_and_the_split_is_checked(tiny_sets, tmp_path):
    import argparse

    _, val = tiny_sets
    p = argparse.ArgumentParser()
    best.add_arguments(p)
    assert best.from_arguments(p.parse_args([]), 19) is None
    with pytest.raises(ValueError, match="go together"):
        best.from_arguments(p.parse_args(["--val", json.dumps(val)]), 19)
    bad = dict(val, split="test")
    args = p.parse_args(["--val", json.dumps(bad), "--best-out", "b.pt", "--best-metrics", "b.json"])
    with pytest.raises(ValueError, match="no rows for split 'test'"):
        best.from_arguments(args, 19)


# --- the workflow ----------------------------------------------------------------------------


def test_table_fills_best_on_val_for_the_stages_that_keep_one(tiny_workflow):
    table = pd.read_csv(tiny_workflow.work / "results/tables/results.csv")
    for root in ("gta5_to_cityscapes", "synthia_to_cityscapes"):
        for run, (method, stage) in stages.TABLE_RUNS.items():
            row = table[(table.chain == root) & (table.method == method) & (table.stage == stage)]
            if row.empty:
                continue
            value = float(row["best_on_val_mIoU"].iloc[0])
            if run in stages.BEST_ON_VAL_RUNS:
                m = json.loads((tiny_workflow.work / f"results/{root}/{run}/metrics_best.json").read_text())
                assert value == pytest.approx(m[f"mIoU{m['num_classes']}"]), run
                assert (tiny_workflow.work / f"results/{root}/{run}/model_best.pt").is_file()
            else:
                assert math.isnan(value), run
    assert set(stages.BEST_ON_VAL_RUNS) >= {"warmup", "proda/stage1", "cpsl/stage2", "proda/stage3"}


def test_handoff_best_rereads_the_next_stages_only(tiny_workflow):
    """proda.stage1.handoff: best makes ProDA's stage 2 (teacher), its hard labels and SeCo on
    proda/stage1 read stage 1's model_best.pt: they and what follows rerun, stage 1 does not."""
    cfg = tiny_config(proda={**tiny_config()["proda"], "stage1": {"iterations": 4, "handoff": "best"}})
    planned = planned_with_config(tiny_workflow.work, cfg, snakefile=tiny_workflow.repo / "Snakefile")
    assert "proda_stage1" not in planned and "cpsl_stage1" not in planned
    assert planned["distill_stage2"] == 2 and planned["seco_base_labels"] == 2
    assert planned["hard_labels"] == 4  # proda/stage1 and proda/stage2 of both chains
    write_config(tiny_workflow.work, cfg)
    try:
        proc = tiny_workflow.snakemake("-n", "-p", "results/gta5_to_cityscapes/proda/stage2/model.pt")
    finally:
        write_config(tiny_workflow.work, tiny_config())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--teacher results/gta5_to_cityscapes/proda/stage1/model_best.pt" in proc.stdout


def test_warmup_handoff_best_starts_both_stage1s_from_the_best_warmup(tiny_workflow):
    cfg = tiny_config(warmup={"handoff": "best"})
    planned = planned_with_config(tiny_workflow.work, cfg, snakefile=tiny_workflow.repo / "Snakefile")
    assert "warmup" not in planned and "source_only" not in planned
    assert planned["soft_labels"] == 2 and planned["init_prototypes"] == 2
    assert planned["proda_stage1"] == 2 and planned["cpsl_stage1"] == 2


def test_a_stage_keeping_no_best_hands_over_its_last_checkpoint():
    from segcore.config import stage_options, validate

    cfg = tiny_config(train={**tiny_config()["train"], "handoff": "best"})
    validate(cfg)
    assert stage_options(cfg, "ddb.st")["handoff"] == "best"  # inherited, but DDB keeps no best
    assert "ddb/r1_st_cu" not in stages.BEST_ON_VAL_RUNS


def test_checkpoint_written_at_a_validation_loads_with_its_selection(tmp_path):
    torch.manual_seed(0)
    model = build_deeplabv2(19, "small")
    meta = {"arch": "small", "num_classes": 19, "bn_clr": False}
    keeper = BestCheckpoint(tmp_path / "work", "mIoU19", "val")
    keeper.load_state_dict(None)
    assert keeper.consider(3, {"mIoU19": None}, lambda p, extra: save_model(p, model, meta | extra))
    assert keeper.consider(5, {"mIoU19": 1.0}, lambda p, extra: save_model(p, model, meta | extra))
    keeper.finish(str(tmp_path / "out/model_best.pt"), str(tmp_path / "out/metrics_best.json"))
    _, got = load_model(tmp_path / "out/model_best.pt")
    assert got["selected"] == {"on": "the evaluation split (val)", "metric": "mIoU19", "iteration": 5,
                               "validated_at": [3, 5]}

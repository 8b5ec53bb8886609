"""Released ProDA/CPSL checkpoints (config `released`): a run in released.replace is imported
instead of trained and what follows reads it; every other configured file is evaluated as its
`<stage> (released)` row of the results table, beside ours and the published number. A pickled
release is unpickled only when released.allow_pickle names that file."""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from segcore.config import ConfigError, validate
from segcore.models.checkpoint import load_model
from segcore.models.deeplabv2 import build_deeplabv2
from segcore.tables import results_table
from workflow_helpers import ROOT, planned_jobs, snakemake, tiny_config, write_config

GTA, SYN = "gta5_to_cityscapes", "synthia_to_cityscapes"


def _released(path, num_classes=19, bn_clr=False, pickled=False, seed=0):
    """A checkpoint as the official train.py saves it (seeded model of the layout); ``pickled``
    adds the argparse Namespace the official files carry (refused by weights_only)."""
    torch.manual_seed(seed)
    model = build_deeplabv2(num_classes, "small", bn_clr=bn_clr)
    obj = {"ResNet101": {"model_state": model.state_dict()}, "iter": 1000}
    if pickled:
        obj.update(best_iou=np.float64(0.575), opt=argparse.Namespace(lr=2.5e-4))
    torch.save(obj, path)
    return model.state_dict()


def _config(**released):
    return tiny_config(released={"checkpoints": {GTA: {"proda/stage1": "released/s1.pkl",
                                                       "proda/stage3": "released/s3.pkl"},
                                                 SYN: {"proda/stage1": "released/s1_16.pkl"}},
                                 "replace": ["proda/stage1"], **released})


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("released")
    (work / "released").mkdir()
    want = {"s1": _released(work / "released/s1.pkl", seed=1),
            "s3": _released(work / "released/s3.pkl", bn_clr=True, pickled=True, seed=3)}
    _released(work / "released/s1_16.pkl", num_classes=16, seed=2)
    return work, want


def test_replaced_run_and_released_rows_are_planned(work):
    work, _ = work
    write_config(work, _config(allow_pickle=["released/s3.pkl"]))
    plan = snakemake(work, "-n", "-p", "results/tables/results.csv")
    assert plan.returncode == 0, plan.stderr[-3000:]
    jobs = planned_jobs(plan.stdout)
    assert "proda_stage1" not in jobs and jobs["released_stage"] == 2 and jobs["released_row"] == 1
    lines = plan.stdout.splitlines()
    imports = [ln for ln in lines if "import_checkpoint.py" in ln]
    # the pickled file alone is unpickled, as listed
    assert [("--allow-pickle" in ln) for ln in imports if "released/s3.pkl" in ln] == [True]
    assert not any("--allow-pickle" in ln for ln in imports if "released/s3.pkl" not in ln)
    # ProDA's stage 2 is taught by the imported stage 1, and the table has the released row and note
    assert any(f"--teacher results/{GTA}/proda/stage1/model.pt " in ln for ln in lines if "train_distill" in ln)
    table = next(ln for ln in lines if "make_table.py" in ln)
    assert f"--released {GTA} proda stage3 results/{GTA}/eval/released/proda/stage3.json" in table
    assert f"--note {GTA} proda stage1 'released checkpoint s1.pkl, not trained'" in table


def test_replaced_run_is_the_released_model_and_its_best(work):
    work, want = work
    write_config(work, _config(allow_pickle=["released/s3.pkl"]))
    done = snakemake(work, f"results/{GTA}/proda/stage1/model.pt", f"results/{GTA}/eval/released/proda/stage3.json")
    assert done.returncode == 0, done.stderr[-3000:]
    model, meta = load_model(work / f"results/{GTA}/proda/stage1/model.pt", expect_num_classes=19)
    assert meta["stage"] == "proda_stage1" and meta["init"] == "released" and not meta["bn_clr"]
    assert all(torch.equal(v, want["s1"][k]) for k, v in model.state_dict().items())
    best, _ = load_model(work / f"results/{GTA}/proda/stage1/model_best.pt")
    assert all(torch.equal(v, want["s1"][k]) for k, v in best.state_dict().items())
    assert json.loads((work / f"results/{GTA}/proda/stage1/metrics_best.json").read_text())["images"] == 4
    # the released row: a stage-3 file with the bn_clr layer, unpickled as allowed, then evaluated
    row, meta3 = load_model(work / f"results/{GTA}/released/proda/stage3/model.pt")
    assert meta3["bn_clr"] and all(torch.equal(v, want["s3"][k]) for k, v in row.state_dict().items())
    log = (work / f"logs/released_row/{GTA}/proda/stage3.log").read_text()
    assert "warning: " in log and "unpickled fully" in log
    metrics = json.loads((work / f"results/{GTA}/eval/released/proda/stage3.json").read_text())
    assert metrics["checkpoint"]["path"] == f"results/{GTA}/released/proda/stage3/model.pt"


def test_pickled_release_not_listed_is_refused(work):
    work, _ = work
    write_config(work, _config())
    out = f"results/{GTA}/released/proda/stage3/model.pt"
    (work / out).unlink(missing_ok=True)
    refused = snakemake(work, out)
    assert refused.returncode != 0 and not (work / out).exists()
    log = (work / f"logs/released_row/{GTA}/proda/stage3.log").read_text()
    lines = [ln for ln in log.splitlines() if "error" in ln]
    assert len(lines) == 1 and "released/s3.pkl: holds pickled objects" in lines[0], log


def test_released_row_follows_ours_with_the_published_number(tmp_path):
    from test_tables import _metrics

    ours, rel = tmp_path / "ours.json", tmp_path / "rel.json"
    _metrics(ours, 19, 0)
    s = _metrics(rel, 19, 1)
    entries = [{"chain": GTA, "method": "proda", "stage": "stage3", "metrics": str(rel), "released": True},
               {"chain": GTA, "method": "proda", "stage": "stage3", "metrics": str(ours)},
               {"chain": GTA, "method": "proda", "stage": "stage2", "metrics": str(ours)}]
    df = results_table(entries, published_csv=ROOT / "configs" / "published_results.csv")
    assert list(df["stage"]) == ["stage2", "stage3", "stage3 (released)"]
    assert list(df["published"])[1:] == [57.5, 57.5]
    assert math.isclose(df["mIoU"].iloc[2], s["mIoU19"])


def test_released_config_errors():
    cfg = tiny_config(released={"checkpoints": {GTA: {"proda/stage1": "a.pkl"}}, "replace": ["proda/stage1"]})
    with pytest.raises(ConfigError, match=r"'released.replace': proda/stage1 needs .* released.checkpoints.synthia"):
        validate(cfg)
    cfg = tiny_config(released={"checkpoints": {GTA: {"proda/stage3": "a.pkl"}}, "allow_pickle": ["b.pkl"]})
    with pytest.raises(ConfigError, match=r"'released.allow_pickle': b.pkl is not a file of released.checkpoints"):
        validate(cfg)
    cfg = tiny_config(released={"replace": ["warmup"]})  # the warm-up has warmup.mode: import
    with pytest.raises(ConfigError, match="released.replace"):
        validate(cfg)

"""warmup.mode: import: a released ProDA/CPSL warm-up checkpoint (the official .pkl layout) stands
in for the trained warm-up. Pickled objects in it are unpickled only with warmup.allow_pickle, with
a warning; without it the job stops with one line naming the file."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from segcore.config import ConfigError, validate
from segcore.models.checkpoint import load_model
from segcore.models.deeplabv2 import build_deeplabv2
from workflow_helpers import snakemake, tiny_config, write_config

CHAIN = "gta5_to_cityscapes"


def _released(path, seed=0):
    """A warm-up checkpoint as the official train.py saves it, with an argparse Namespace in it
    (an object torch.load(weights_only=True) refuses)."""
    torch.manual_seed(seed)
    model = build_deeplabv2(19, "small")
    torch.save({"ResNet101": {"model_state": model.state_dict(), "objective_vectors": torch.zeros(19, 64)},
                "iter": 1000, "best_iou": np.float64(0.433), "opt": argparse.Namespace(lr=2.5e-4)}, path)
    return model.state_dict()


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    work = tmp_path_factory.mktemp("import")
    (work / "released").mkdir()
    want = _released(work / "released/warmup.pkl")
    released = {CHAIN: "released/warmup.pkl", "synthia_to_cityscapes": "released/synthia.pkl"}
    cfg = tiny_config(warmup={"mode": "import", "released": released})
    write_config(work, cfg)
    refused = snakemake(work, f"results/{CHAIN}/warmup/model.pt")
    refused_log = (work / f"logs/warmup/{CHAIN}.log").read_text()
    refused_left = (work / f"results/{CHAIN}/warmup/model.pt").exists()
    write_config(work, dict(cfg, warmup=dict(cfg["warmup"], allow_pickle=True)))
    done = snakemake(work, f"results/{CHAIN}/warmup/model.pt")
    return work, want, (refused, refused_left), refused_log, done


def test_pickled_release_is_refused_without_allow_pickle(imported):
    _, _, (refused, left), log, _ = imported
    assert refused.returncode != 0 and not left
    lines = [ln for ln in log.splitlines() if "error" in ln]
    assert len(lines) == 1 and "released/warmup.pkl: holds pickled objects" in lines[0], log


def test_allowed_release_becomes_the_warmup_and_its_best_on_val(imported):
    work, want, _, _, done = imported
    assert done.returncode == 0, done.stderr[-3000:]
    log = (work / f"logs/warmup/{CHAIN}.log").read_text()
    assert "warning: " in log and "unpickled fully" in log
    model, meta = load_model(work / f"results/{CHAIN}/warmup/model.pt", expect_num_classes=19)
    assert meta["stage"] == "warmup" and meta["init"] == "released" and meta["released"] == "released/warmup.pkl"
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    metrics = json.loads((work / f"results/{CHAIN}/warmup/metrics_best.json").read_text())
    assert metrics["selected"]["released"] == "released/warmup.pkl" and metrics["images"] == 4
    best, _ = load_model(work / f"results/{CHAIN}/warmup/model_best.pt")
    assert all(torch.equal(v, want[k]) for k, v in best.state_dict().items())
    # no warm-up training, and ProDA's stage 1 starts from the imported model
    plan = snakemake(work, "-n", "-p", f"results/{CHAIN}/proda/stage1/model.pt")
    assert plan.returncode == 0 and "rule source_only" not in plan.stdout
    assert f"--init results/{CHAIN}/warmup/model.pt" in plan.stdout


def test_import_needs_the_released_file_of_every_chain():
    cfg = tiny_config(warmup={"mode": "import", "released": {CHAIN: "a.pkl"}})
    with pytest.raises(ConfigError, match=r"config key 'warmup.released': .* of chain synthia_to_cityscapes$"):
        validate(cfg)

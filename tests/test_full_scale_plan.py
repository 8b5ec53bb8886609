"""`snakemake -n --configfile configs/<chain>.yaml` plans the full-scale chains against a tree in
the real datasets' layout (a few generated full-size images stand in for the real sets)."""
import shutil

import pytest

from segcore.data import demo
from workflow_helpers import ROOT, planned_jobs, snakemake


@pytest.fixture(scope="module")
def real_layout(tmp_path_factory):
    work = tmp_path_factory.mktemp("fullscale")
    demo.make_gta5(work / "data/GTA5", 2, size=(1914, 1052))
    demo.make_synthia(work / "data/SYNTHIA_RAND_CITYSCAPES", 2, size=(1280, 760))
    demo.make_cityscapes(work / "data/cityscapes", 2, 2, size=(2048, 1024))
    (work / "pretrained").mkdir()
    for name in ("resnet101-5d3b4d8f.pth", "r101_1x_sk0.pth"):
        (work / "pretrained" / name).write_bytes(b"stand-in: planning reads no weights")
    shutil.copy(ROOT / "config.yaml", work / "config.yaml")
    return work


@pytest.mark.parametrize("chain, source", [("gta5_to_cityscapes", "gta5"), ("synthia_to_cityscapes", "synthia")])
def test_full_scale_chain_plans(real_layout, chain, source):
    proc = snakemake(real_layout, "-n", "-p", "--configfile", str(ROOT / "configs" / f"{chain}.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    # no demo data, one conversion job per dataset (not per image), every stage of the chain once
    assert not any(rule.startswith("demo_") for rule in jobs)
    assert jobs["convert"] == 2
    for rule in ("source_only", "oracle", "warmup", "soft_labels", "init_prototypes", "class_distribution",
                 "proda_stage1", "cpsl_stage1", "results_table"):
        assert jobs[rule] == 1, rule
    assert jobs["distill_stage2"] == jobs["distill_stage3"] == 2  # ProDA's and CPSL's
    assert "simclr" not in jobs  # the configured SimCLRv2 file initialises the stage-2 student
    out = proc.stdout
    assert f"--dataset {source} --root data/" in out
    assert "--arch resnet101" in out
    assert "--imagenet-weights pretrained/resnet101-5d3b4d8f.pth" in out
    assert '"crop": [896, 512]' in out and '"iterations": 62412' in out
    assert '"queue_length": 65536' in out and '"iterations": 95104' in out  # CPSL stage 1 (128 epochs)
    assert "--student-init pretrained/r101_1x_sk0.pth --init-kind simclr" in out
    assert '"regular_w": ' + ("0.1" if source == "gta5" else "0.0") in out
    other = "synthia_to_cityscapes" if source == "gta5" else "gta5_to_cityscapes"
    assert f"results/{other}/" not in out

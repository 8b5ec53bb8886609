"""The stage-2 student's initialisation: SimCLR (official) or ImageNet (`student_init: imagenet`),
and the refusal of the demo's SimCLR rule at full scale."""
import re

import pytest
import torch
import yaml

from segcore.config import ConfigError, check_student_init, validate
from segcore.models.deeplabv2 import build_deeplabv2
from segcore.models.weights import BACKBONE_PREFIXES
from segcore.train.distill_loop import DistillJob, build_student
from workflow_helpers import ROOT, snakemake, tiny_config, write_config


def job(init, kind):
    return DistillJob(source={}, target={}, num_classes=19, arch="small", options={}, seed=0, teacher="",
                      hard_labels="", student_init=str(init), init_kind=kind, stage="proda_stage2", out="",
                      workdir="")


def test_imagenet_student_takes_the_imagenet_backbone_and_no_bn_clr(tmp_path):
    torch.manual_seed(0)
    imagenet = build_deeplabv2(19, "small").state_dict()
    torch.save({k: v for k, v in imagenet.items() if k.startswith(BACKBONE_PREFIXES)}, tmp_path / "imagenet.pth")
    torch.save({"state_dict": imagenet}, tmp_path / "simclr.pth")
    student = build_student(job(tmp_path / "imagenet.pth", "imagenet"))
    assert not student.bn_clr
    got = student.state_dict()
    backbone = [k for k in imagenet if k.startswith(BACKBONE_PREFIXES) and "num_batches" not in k]
    assert backbone and all(torch.equal(got[k], imagenet[k]) for k in backbone)
    assert build_student(job(tmp_path / "simclr.pth", "simclr")).bn_clr  # the official SimCLR student


def demo_config():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def check(cfg):
    check_student_init(validate(cfg))


def test_full_scale_without_simclr_weights_is_refused_naming_the_key():
    cfg = demo_config()
    cfg["model"]["arch"] = "resnet101"
    with pytest.raises(ConfigError, match=r"^config key 'simclr.weights': null with model.arch resnet101 .*"
                                          r"student_init: imagenet$"):
        check(cfg)
    cfg = demo_config()
    cfg["model"].update(arch="resnet101", imagenet_weights="pretrained/resnet101.pth")
    for method in ("proda", "cpsl"):
        cfg[method]["stage2"]["student_init"] = "imagenet"
    check(cfg)  # the explicit ImageNet student needs no SimCLR file
    check(demo_config())  # the demo's small network keeps its SimCLR rule


def test_imagenet_student_needs_the_imagenet_file():
    cfg = demo_config()
    cfg["cpsl"]["stage2"]["student_init"] = "imagenet"
    with pytest.raises(ConfigError, match="config key 'cpsl.stage2.student_init': imagenet needs model.imagenet_wei"):
        check(cfg)


def test_the_workflow_refuses_it_before_planning(tmp_path):
    cfg = tiny_config()
    cfg["model"]["arch"] = "resnet101"
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n")
    assert proc.returncode != 0
    assert "Invalid configuration: config key 'simclr.weights': null with model.arch resnet101" in proc.stderr


def test_imagenet_student_plan_skips_simclr_and_notes_the_rows(tmp_path):
    (tmp_path / "imagenet.pth").write_bytes(b"stand-in: planning reads no weights")
    cfg = tiny_config(run_chains=["gta5_to_cityscapes"])
    cfg["model"]["imagenet_weights"] = "imagenet.pth"
    cfg["proda"]["stage2"]["student_init"] = "imagenet"
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n", "-p")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    stage2 = re.findall(r"train_distill.py --stage (\w+)_stage2 .*--student-init (\S+) --init-kind (\w+)", out)
    assert sorted(stage2) == [("cpsl", "results/gta5_to_cityscapes/simclr/backbone.pt", "simclr"),
                              ("proda", "imagenet.pth", "imagenet")]
    notes = re.findall(r"--note gta5_to_cityscapes (\w+) (\w+) 'stage-2 student: ImageNet weights, not SimCLR'", out)
    assert sorted(notes) == [("proda", "stage2"), ("proda", "stage3")]

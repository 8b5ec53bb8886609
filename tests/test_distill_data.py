"""The data of the distillation stages (segcore.train.distill_loop.data_sets): CPSL's stages 2 and
3 keep CPSL's pipeline (the source's LAB transfer to a target image, blur and jitter in the
target's strong view), as its official loaders do in every stage; ProDA's keep neither."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from segcore.config import stage_options, validate
from segcore.data.lab_transfer import compute_lab_stats, write_lab_stats
from segcore.train.common import image_set, labelled_set
from segcore.train.distill_loop import DistillJob, data_sets
from workflow_helpers import converted_gta5_cityscapes, tiny_config

IDENTITY_JITTER = torch.tensor([1.0, 1.0, 1.0, 0.0])


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    from segcore.pseudo.hard_store import HardWriter

    base = tmp_path_factory.mktemp("distill_data")
    source, target = converted_gta5_cityscapes(base)
    keys = image_set(target, 19).keys
    rng = np.random.default_rng(0)
    with HardWriter(base / "hard.h5", keys, (32, 64), num_classes=19, conf_encoding="float16") as w:
        for i in range(len(keys)):
            w.write(i, rng.integers(0, 19, (32, 64)).astype(np.uint8), rng.random((32, 64)).astype(np.float32))
    stats = compute_lab_stats(image_set(target, 19))
    write_lab_stats(base / "lab_stats.json", keys, stats, source=target)
    return base, source, target


def _job(sets, stage):
    base, source, target = sets
    cfg = tiny_config()
    validate(cfg)
    return DistillJob(source=source, target=target, num_classes=19, arch="small",
                      options=stage_options(cfg, stage), seed=0, teacher="", hard_labels=str(base / "hard.h5"),
                      student_init="", init_kind="checkpoint", stage=stage, out="", workdir="",
                      lab_stats=str(base / "lab_stats.json"))


@pytest.mark.parametrize("stage, cpsl", [("cpsl.stage2", True), ("cpsl.stage3", True), ("proda.stage2", False),
                                         ("proda.stage3", False)])
def test_cpsl_distillation_keeps_cpsls_data_pipeline(sets, stage, cpsl):
    job = _job(sets, stage)
    src, tgt = data_sets(job)
    plain = labelled_set(job.source, 19, job.options)
    for seed in range(3):
        a, b = src[(0, seed)], plain[(0, seed)]
        assert torch.equal(a["label"], b["label"])  # the same crop: only the colours move
        assert torch.equal(a["image"], b["image"]) != cpsl
    views = [tgt[(i % 4, seed)]["strong_view"] for i, seed in enumerate(range(24))]
    blurred = sum(bool(v["blur"]) for v in views)
    jittered = sum(not torch.equal(v["jitter"], IDENTITY_JITTER) for v in views)
    if cpsl:
        assert 0 < blurred < 24 and 0 < jittered < 24  # each with probability 0.5
    else:
        assert blurred == jittered == 0


@pytest.mark.parametrize("geometry", ["direct", "official"])
def test_label_geometry_reaches_the_target_views_of_every_stage(sets, geometry):
    """`label_geometry` of a stage's options is what its target views sample with: ProDA's and
    CPSL's stage 1 and the distillation stages."""
    from segcore.pseudo.store import SoftWriter
    from segcore.train import cpsl_stage1, proda_stage1

    base, source, target = sets
    job = _job(sets, "cpsl.stage2")
    job.options["label_geometry"] = geometry
    assert data_sets(job)[1].geometry == geometry
    keys = image_set(target, 19).keys
    if not (base / "soft.h5").exists():
        with SoftWriter(base / "soft.h5", keys, 19, (5, 9)) as w:
            w.write(list(range(len(keys))), torch.full((len(keys), 19, 5, 9), 1 / 19))
    cfg = tiny_config()
    validate(cfg)
    common = dict(source=source, target=target, num_classes=19, seed=0, init="", prototypes="",
                  soft_labels=str(base / "soft.h5"), out="", workdir="")
    proda = proda_stage1.Stage1Job(options=dict(stage_options(cfg, "proda.stage1"), label_geometry=geometry),
                                   **common)
    cpsl = cpsl_stage1.CPSLStage1Job(options=dict(stage_options(cfg, "cpsl.stage1"), label_geometry=geometry),
                                     class_distribution="", out_prototypes="", lab_stats=str(base / "lab_stats.json"),
                                     **common)
    assert proda_stage1.data_sets(proda)[1].geometry == geometry
    assert cpsl_stage1.data_sets(cpsl)[1].geometry == geometry

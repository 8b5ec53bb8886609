"""DDB cross-path knowledge distillation (CKD) on the shared runner.

A fresh ImageNet-initialised student learns from the two frozen path teachers (``cu``, ``ca``,
eval mode) of the round. One iteration (``ckd_step``): source CE on the photometrically
distorted source crop (backward); each teacher's softmax on the clean target crop, weighted per
pixel and class by the softmax of its negative distances to its prototypes, not renormalised;
the mean of the two, its argmax the label; the student's CE on the colour-jittered and blurred
view of the same target crop (weight 1 everywhere, or the scalar pseudo weight with
``use_pl_weight``) (backward); AdamW step on the student.
"""
from __future__ import annotations

import dataclasses

import torch

from ..data.datasets import open_sets
from ..methods.ddb import photometric
from ..methods.ddb.data import ddb_view, image_crops
from ..methods.ddb.ensemble import ensemble, teacher_probs
from ..methods.ddb.losses import pixel_ce, pseudo_weight
from ..models.checkpoint import load_model, save_model
from ..pseudo.prototypes import load_prototypes
from . import distributed as D
from .common import Accel, job_settings, source_target_batches
from .ddb_st import ddb_lr_factor, imagenet_student, make_adamw
from .runner import Training, run_training

TEACHERS = ("cu", "ca")


@dataclasses.dataclass
class CKDJob:
    source: dict | list
    target: dict
    num_classes: int
    options: dict             # training options + DDB CKD options (config ddb.ckd)
    seed: int
    arch: str
    teachers: dict            # {"cu": checkpoint, "ca": checkpoint} of the round's ST students
    prototypes: dict          # {"cu": file, "ca": file} of ddb_prototypes
    out: str
    workdir: str
    round: int = 1
    imagenet: str | None = None
    num_workers: int = 0
    device: str | None = None


def frozen_teacher(path, num_classes: int, accel: Accel):
    model, _ = load_model(path, expect_num_classes=num_classes)
    model.requires_grad_(False)
    return accel.place(model).eval()


def draw(n: int, opts: dict) -> dict:
    """Every random decision of one CKD step: the source distortion and the target jitter/blur."""
    return {"distortion": photometric.draw_distortion(n),
            "photo": photometric.draw_params(n, opts["jitter_strength"], opts["jitter_p"], opts["blur_p"])}


def ckd_step(student, teachers: dict, protos: dict, optimizer, s: dict, t: dict, draws: dict, opts: dict,
             accel: Accel) -> dict:
    """One CKD iteration (see the module docstring). Returns detached losses (no host sync)."""
    optimizer.zero_grad(set_to_none=True)
    valid_mean = opts["mean_over_valid"]
    source = photometric.photometric_distortion(s["image"], draws["distortion"])
    with accel.autocast():
        loss_src = pixel_ce(student(source)["out"], s["label"], mean_over_valid=valid_mean)
    loss_src.backward()
    size = t["image"].shape[-2:]
    with torch.no_grad():
        probs = []
        for name in TEACHERS:
            teachers[name].eval()
            with accel.autocast():
                out = teachers[name](t["image"])
            probs.append(teacher_probs(out, protos[name], size, opts["official_full_resolution"],
                                       opts["rectify_on_prob"]))
        conf, labels = ensemble(*probs)
    weight = pseudo_weight(conf, opts["pseudo_threshold"]) if opts["use_pl_weight"] else None
    view = photometric.jitter_and_blur(t["image"], draws["photo"], opts["official_1d_blur"])
    with accel.autocast():
        loss_tgt = pixel_ce(student(view)["out"], labels, weight, mean_over_valid=valid_mean)
    loss_tgt.backward()
    D.average_gradients(student.parameters())
    optimizer.step()
    return {"src": loss_src.detach(), "tgt": loss_tgt.detach()}


def run(job: CKDJob, log=print, on_iteration=None) -> dict:
    opts = job.options
    out = {}

    def build(accel: Accel, log) -> Training:
        teachers = {k: frozen_teacher(job.teachers[k], job.num_classes, accel) for k in TEACHERS}
        protos = {k: load_prototypes(job.prototypes[k], job.num_classes, teachers[k].feature_dim)
                  .to(accel.device) for k in TEACHERS}
        student = accel.place(D.prepare_model(imagenet_student(job.num_classes, job.arch, job.imagenet)))
        out["meta"] = {"arch": job.arch, "num_classes": job.num_classes, "bn_clr": False, "stage": "ddb_ckd",
                       "round": job.round, "iterations": opts["iterations"], "imagenet": job.imagenet,
                       "teachers": {k: str(v) for k, v in job.teachers.items()}}
        optimizer = make_adamw(student, opts)
        crop = opts["crop"]
        src = open_sets(job.source, job.num_classes,
                        transform=ddb_view(opts["source_base_width"], crop, opts["flip"], opts["cat_max_ratio"]))
        tgt = image_crops(job.target, job.num_classes, ddb_view(opts["target_base_width"], crop, opts["flip"]))

        def step(batch):
            s, t = accel.batch(batch[0]), accel.batch(batch[1])
            return ckd_step(student, teachers, protos, optimizer, s, t, draw(s["image"].shape[0], opts), opts, accel)

        return Training(
            model=student, parts={"model": student, "optimizer": optimizer}, optimizers=[optimizer],
            batches=lambda start: zip(*source_target_batches(src, tgt, opts, job.seed, start, accel, job.num_workers)),
            step=step, save=lambda _: save_model(job.out, student, out["meta"]),
            broadcast=lambda: (student,), same=lambda: (student,), compile=(student, *teachers.values()),
            lr_factor=lambda it: ddb_lr_factor(it, opts))

    run_training(build, options=opts, seed=job.seed, workdir=job.workdir, settings=job_settings(job),
                 device=job.device, log=log, on_iteration=on_iteration)
    return out["meta"]


__all__ = ["CKDJob", "TEACHERS", "frozen_teacher", "draw", "ckd_step", "run"]

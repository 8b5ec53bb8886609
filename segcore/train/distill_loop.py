"""The loop of ProDA/CPSL stages 2 and 3 (knowledge distillation into a fresh student).

Data parallel (``segcore.train.distributed``): each rank takes its slice of the global
batch; the pseudo-label CE uses the global valid-pixel count (the KD term is a plain mean);
the student's BN uses the global batch's statistics (the teacher is frozen, eval mode);
gradients are averaged; rank 0 logs and writes.
"""
from __future__ import annotations

import dataclasses

from ..data.classes import class_names
from ..data.lab_transfer import LabTransferSet, read_lab_stats
from ..data.strong_view import StrongView
from ..data.target_views import TargetViews
from ..methods.distill import distill_target_loss
from ..methods.warmup import segmentation_loss
from ..models.checkpoint import load_model, save_model
from ..models.deeplabv2 import build_deeplabv2
from ..models.weights import load_imagenet_backbone, load_simclr_backbone
from ..pseudo.store import HardStore
from . import distributed as D
from .best import BestOnVal
from .common import image_set, job_settings, labelled_set, make_sgd, source_target_batches, weak_view
from .runner import Training, run_training


@dataclasses.dataclass
class DistillJob:
    source: dict | list
    target: dict
    num_classes: int
    arch: str
    options: dict
    seed: int
    teacher: str              # checkpoint of the previous stage (frozen, eval mode)
    hard_labels: str          # its flip-averaged hard pseudo-labels (HDF5)
    student_init: str         # SimCLR or ImageNet backbone file (stage 2), or a checkpoint (stage 3)
    init_kind: str            # "simclr", "imagenet" or "checkpoint"
    stage: str
    out: str
    workdir: str
    num_workers: int = 0
    device: str | None = None         # None: the process's device (distributed.device())
    best: BestOnVal | None = None     # validate on the evaluation split, keep the best checkpoint
    lab_stats: str | None = None      # target LAB statistics (rule lab_stats) when options set lab_transfer


def build_student(job: DistillJob):
    if job.init_kind == "checkpoint":  # stage 3 starts from the stage-2 student, as the official code
        return load_model(job.student_init, expect_num_classes=job.num_classes)[0]
    if job.init_kind == "imagenet":  # the official --student_init imagenet: no bn_clr layer
        model = build_deeplabv2(job.num_classes, job.arch)
        load_imagenet_backbone(model, job.student_init)
        return model
    model = build_deeplabv2(job.num_classes, job.arch, bn_clr=True)  # SimCLR statistics need bn_clr
    load_simclr_backbone(model, job.student_init)
    return model


def data_sets(job: DistillJob):
    """The source set (weak view; CPSL's LAB transfer with ``lab_transfer``) and the target
    views (weak and strong, CPSL's blur and jitter with ``blur_p`` / ``jitter``, the teacher's
    hard labels) of a distillation stage."""
    opts = job.options
    src = labelled_set(job.source, job.num_classes, opts)
    base = image_set(job.target, job.num_classes)
    if opts["lab_transfer"]:  # CPSL's loaders colour-transfer the source in every stage
        src = LabTransferSet(src, read_lab_stats(job.lab_stats, base.keys))
    hard = HardStore(job.hard_labels, expect_keys=base.keys, expect_classes=job.num_classes)
    if opts["threshold"] is not None and not hard.supports(opts["threshold"]):  # fail now, not in a worker
        hard.thresholded(0, opts["threshold"])  # raises the store's one-line error naming the file
    strong = StrongView(n_ops=opts["strong_ops"], magnitude=opts["strong_magnitude"], cutout=opts["cutout"],
                        blur_p=opts["blur_p"], jitter=opts["jitter"], jitter_p=opts["jitter_p"])
    tgt = TargetViews(base, weak_view(opts), strong, hard_store=hard, threshold=opts["threshold"],
                      label_stride=opts["label_stride"], keep_full=False, geometry=opts["label_geometry"])
    return src, tgt


def train_step(student, teacher, optimizer, s: dict, t: dict, opts: dict, accel) -> dict:
    """One distillation step on a source batch ``s`` and a target batch ``t`` (on the device):
    source CE, then the target losses (``methods.distill``), each with its own backward as the
    official code; averaged gradients; the optimiser step. Returns detached losses."""
    optimizer.zero_grad(set_to_none=True)
    with accel.autocast():
        loss_src = segmentation_loss(student(s["image"])["out"], s["label"])
    loss_src.backward()
    with accel.autocast():
        loss_tgt, logs = distill_target_loss(student, teacher, t, opts)
    loss_tgt.backward()
    D.average_gradients(student.parameters())
    optimizer.step()
    return {"src": loss_src.detach(), **logs}


def run(job: DistillJob, log=print, on_iteration=None) -> dict:
    opts = job.options
    meta = {"arch": job.arch, "num_classes": job.num_classes, "bn_clr": True,
            "classes": list(class_names(job.num_classes)), "stage": job.stage, "iterations": opts["iterations"],
            "init": job.init_kind}

    def build(accel, log) -> Training:
        student = accel.place(D.prepare_model(build_student(job)))
        teacher, _ = load_model(job.teacher, expect_num_classes=job.num_classes)
        teacher = accel.place(teacher.eval().requires_grad_(False))
        optimizer = make_sgd(student, opts)

        src, tgt = data_sets(job)

        def step(batch):
            s, t = batch
            return train_step(student, teacher, optimizer, accel.batch(s), accel.batch(t), opts, accel)

        return Training(
            model=student, parts={"model": student, "optimizer": optimizer}, optimizers=[optimizer], step=step,
            batches=lambda start: zip(*source_target_batches(src, tgt, opts, job.seed, start, accel, job.num_workers)),
            save=lambda _: save_model(job.out, student, meta), broadcast=(student,), compile=(student, teacher),
            checkpoint=lambda path, extra: save_model(path, student, meta | extra),
            same=(student,))

    run_training(build, options=opts, seed=job.seed, workdir=job.workdir, settings=job_settings(job),
                 device=job.device, log=log, on_iteration=on_iteration, best=job.best)
    return meta

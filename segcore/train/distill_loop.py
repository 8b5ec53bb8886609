"""The loop of ProDA/CPSL stages 2 and 3 (knowledge distillation into a fresh student)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..data.classes import class_names
from ..data.datasets import infinite_loader
from ..data.strong_view import StrongView
from ..data.target_views import TargetViews
from ..methods.distill import distill_target_loss
from ..methods.warmup import segmentation_loss
from ..models.checkpoint import load_model, save_model
from ..models.deeplabv2 import build_deeplabv2
from ..models.weights import load_simclr_backbone
from ..pseudo.store import HardStore
from .common import Progress, freeze_bn, image_set, labelled_set, make_sgd, restore, snapshot, weak_view
from .resume import RollingState, fingerprint
from .rng import seed_everything
from .schedule import poly_factor, set_lr


@dataclasses.dataclass
class DistillJob:
    source: dict
    target: dict
    num_classes: int
    arch: str
    options: dict
    seed: int
    teacher: str              # checkpoint of the previous stage (frozen, eval mode)
    hard_labels: str          # its flip-averaged hard pseudo-labels (HDF5)
    student_init: str         # "simclr" weights file (stage 2) or a checkpoint (stage 3)
    init_kind: str            # "simclr" or "checkpoint"
    stage: str
    out: str
    workdir: str
    num_workers: int = 0


def build_student(job: DistillJob):
    if job.init_kind == "checkpoint":  # stage 3 starts from the stage-2 student, as the official code
        return load_model(job.student_init, expect_num_classes=job.num_classes)[0]
    model = build_deeplabv2(job.num_classes, job.arch, bn_clr=True)
    load_simclr_backbone(model, job.student_init)
    return model


def run(job: DistillJob, log=print) -> dict:
    opts = job.options
    seed_everything(job.seed)
    student = build_student(job)
    teacher, _ = load_model(job.teacher, expect_num_classes=job.num_classes)
    teacher.eval().requires_grad_(False)
    optimizer = make_sgd(student, opts)

    src = labelled_set(job.source, job.num_classes, opts)
    base = image_set(job.target, job.num_classes)
    hard = HardStore(job.hard_labels, expect_keys=base.keys, expect_classes=job.num_classes)
    strong = StrongView(n_ops=opts["strong_ops"], magnitude=opts["strong_magnitude"], cutout=opts["cutout"])
    tgt = TargetViews(base, weak_view(opts), strong, hard_store=hard, threshold=opts["threshold"],
                      label_stride=opts["label_stride"], keep_full=False)

    state = RollingState(Path(job.workdir) / "resume.pt", opts["checkpoint_every"],
                         fingerprint(dataclasses.asdict(job) | {"workdir": None, "num_workers": None}))
    parts = {"model": student, "optimizer": optimizer}
    start = restore(state, parts, log)

    src_iter = infinite_loader(src, opts["batch_size"], job.seed, num_workers=job.num_workers, start=start)
    tgt_iter = infinite_loader(tgt, opts["batch_size"], job.seed + 1, num_workers=job.num_workers, start=start)
    total, horizon = opts["iterations"], opts["poly_horizon"] or opts["iterations"]
    student.train()
    if opts["freeze_bn"]:
        freeze_bn(student)
    progress = Progress(total, start, opts["log_every"], log)
    for it in range(start, total):
        set_lr(optimizer, poly_factor(it, horizon, opts["poly_power"]))
        optimizer.zero_grad(set_to_none=True)
        s = next(src_iter)
        loss_src = segmentation_loss(student(s["image"])["out"], s["label"])
        loss_src.backward()
        loss_tgt, logs = distill_target_loss(student, teacher, next(tgt_iter), opts)
        loss_tgt.backward()
        optimizer.step()
        done = it + 1
        progress(done, optimizer.param_groups[0]["lr"], {"src": loss_src.detach(), **logs})
        if state.due(done) and done < total:
            snapshot(state, done, parts)

    meta = {"arch": job.arch, "num_classes": job.num_classes, "bn_clr": True,
            "classes": list(class_names(job.num_classes)), "stage": job.stage, "iterations": total,
            "init": job.init_kind}
    save_model(job.out, student, meta)
    state.clear()
    return meta

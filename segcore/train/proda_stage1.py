"""The ProDA stage-1 loop: source CE, rectified self-training on the weak crop, prototype
consistency on the strong view, moving prototypes, EMA teacher (reference/proda_cpsl.md 2.3)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..data.datasets import infinite_loader
from ..data.strong_view import StrongView
from ..data.target_views import TargetViews
from ..methods import proda
from ..methods.warmup import segmentation_loss
from ..models.checkpoint import load_model, save_model
from ..pseudo.prototypes import PrototypeBank
from ..pseudo.store import SoftStore
from .common import Progress, freeze_bn, image_set, labelled_set, make_sgd, restore, snapshot, weak_view
from .ema import EMATeacher
from .resume import RollingState, fingerprint
from .rng import seed_everything
from .schedule import poly_factor, set_lr


@dataclasses.dataclass
class Stage1Job:
    source: dict              # {"manifest", "split", "resize"} of the labelled source set
    target: dict              # the same for the unlabelled target train set
    num_classes: int
    options: dict             # training options + ProDA stage-1 options (config proda.stage1)
    seed: int
    init: str                 # warm-up checkpoint (student and teacher start from it)
    prototypes: str           # initial prototypes file
    soft_labels: str          # HDF5 soft pseudo-labels of the warm-up model on target train
    out: str
    workdir: str
    num_workers: int = 0


def run(job: Stage1Job, log=print) -> dict:
    opts = job.options
    seed_everything(job.seed)
    student, meta = load_model(job.init, expect_num_classes=job.num_classes)
    teacher = EMATeacher(student, momentum=opts["ema_momentum"], train_mode=opts["ema_train_mode"])
    bank = PrototypeBank.from_protos(torch.load(job.prototypes, map_location="cpu", weights_only=True)["protos"])
    optimizer = make_sgd(student, opts)

    src = labelled_set(job.source, job.num_classes, opts)
    base = image_set(job.target, job.num_classes)
    soft = SoftStore(job.soft_labels, expect_keys=base.keys, expect_classes=job.num_classes)
    strong = StrongView(n_ops=opts["strong_ops"], magnitude=opts["strong_magnitude"], cutout=opts["cutout"])
    tgt = TargetViews(base, weak_view(opts), strong, soft_store=soft, label_stride=opts["label_stride"])

    state = RollingState(Path(job.workdir) / "resume.pt", opts["checkpoint_every"],
                         fingerprint(dataclasses.asdict(job) | {"workdir": None, "num_workers": None}))
    parts = {"model": student, "teacher": teacher, "prototypes": bank, "optimizer": optimizer}
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
        loss_src.backward()  # separate backward, as the official code: frees the source graph early
        t = next(tgt_iter)
        loss_tgt, logs, teacher_out = proda.stage1_target_losses(student, teacher, bank.protos, t, opts)
        loss_tgt.backward()
        optimizer.step()
        if opts["moving_prototype"]:
            means, valid = proda.teacher_class_means(teacher_out, job.num_classes, opts["label_stride"],
                                                     t["full"].shape[-2:])
            bank.moving_update(means, valid, opts["proto_momentum"])
        teacher.update(student)
        done = it + 1
        progress(done, optimizer.param_groups[0]["lr"], {"src": loss_src.detach(), **logs})
        if state.due(done) and done < total:
            snapshot(state, done, parts)

    meta = dict(meta, stage="proda_stage1", iterations=total)
    save_model(job.out, student, meta)
    state.clear()
    return meta

"""The ProDA stage-1 loop: source CE, rectified self-training on the weak crop, prototype
consistency on the strong view, moving prototypes, EMA teacher (reference/proda_cpsl.md 2.3).

Data parallel (``segcore.train.distributed``): each rank takes its slice of the global
batch; losses with data-dependent normalisers use the global counts; BN (student and the
train-mode EMA teacher) uses the global batch's statistics, as the official SyncBN over 4
GPUs does; the moving-prototype update reads the class means of every rank (all-gathered in
global batch order), so the bank and the EMA teacher stay identical on every rank; rank 0
logs and writes.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..data.strong_view import StrongView
from ..data.target_views import TargetViews
from ..methods import proda
from ..methods.warmup import segmentation_loss
from ..models.checkpoint import save_model
from ..pseudo.prototypes import PrototypeBank
from ..pseudo.store import SoftStore
from . import distributed as D
from .common import Accel, begin_training, image_set, labelled_set, make_sgd, restore, snapshot, source_target_batches, start_run, student_with_ema_teacher, weak_view
from .resume import RollingState, fingerprint
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
    device: str | None = None         # None: the process's device (distributed.device())


def train_step(student, teacher, bank, optimizer, s: dict, t: dict, opts: dict, accel: Accel,
               num_classes: int) -> dict:
    """One stage-1 step on a source batch ``s`` and a target batch ``t`` (on the device):
    both backward passes, the averaged gradients, the optimiser step, the moving prototypes
    and the EMA teacher. Returns the losses (detached device tensors: no host sync)."""
    optimizer.zero_grad(set_to_none=True)
    with accel.autocast():
        loss_src = segmentation_loss(student(s["image"])["out"], s["label"])
    loss_src.backward()  # separate backward, as the official code: frees the source graph early
    with accel.autocast():
        loss_tgt, logs, teacher_out = proda.stage1_target_losses(student, teacher, bank.protos, t, opts)
    loss_tgt.backward()
    D.average_gradients(student.parameters())
    optimizer.step()
    if opts["moving_prototype"]:
        means, valid = proda.teacher_class_means(teacher_out, num_classes, opts["label_stride"],
                                                 t["full"].shape[-2:])
        # every rank's images, in global batch order: the same bank on every rank
        bank.moving_update(D.all_gather_cat(means), D.all_gather_cat(valid), opts["proto_momentum"])
    teacher.update(student)
    return {"src": loss_src.detach(), **logs}


def run(job: Stage1Job, log=print) -> dict:
    opts = job.options
    accel, log = start_run(opts, job.seed, job.device, log)
    student, meta, teacher = student_with_ema_teacher(job.init, job.num_classes, opts, accel)
    bank = PrototypeBank.from_protos(torch.load(job.prototypes, map_location="cpu", weights_only=True)["protos"])
    bank.to(accel.device)
    optimizer = make_sgd(student, opts)

    src = labelled_set(job.source, job.num_classes, opts)
    base = image_set(job.target, job.num_classes)
    soft = SoftStore(job.soft_labels, expect_keys=base.keys, expect_classes=job.num_classes)
    strong = StrongView(n_ops=opts["strong_ops"], magnitude=opts["strong_magnitude"], cutout=opts["cutout"])
    tgt = TargetViews(base, weak_view(opts), strong, soft_store=soft, label_stride=opts["label_stride"])

    state = RollingState(Path(job.workdir) / "resume.pt", opts["checkpoint_every"],
                         fingerprint(dataclasses.asdict(job) | {"workdir": None, "num_workers": None, "device": None}))
    parts = {"model": student, "teacher": teacher, "prototypes": bank, "optimizer": optimizer}
    start = restore(state, parts, log)
    D.broadcast_module(student, teacher.module)
    D.broadcast_tensor(bank.protos)
    accel.compiled(student, teacher.module)

    src_iter, tgt_iter = source_target_batches(src, tgt, opts, job.seed, start, accel, job.num_workers)
    total, horizon, progress = begin_training(student, opts, start, log)
    for it in range(start, total):
        set_lr(optimizer, poly_factor(it, horizon, opts["poly_power"]))
        logs = train_step(student, teacher, bank, optimizer, accel.batch(next(src_iter)),
                          accel.batch(next(tgt_iter)), opts, accel, job.num_classes)
        done = it + 1
        progress(done, optimizer.param_groups[0]["lr"], logs)
        if state.due(done) and done < total:
            snapshot(state, done, parts)

    meta = dict(meta, stage="proda_stage1", iterations=total)
    D.assert_same(student, teacher.module, bank.protos, what="student / EMA teacher / prototypes")
    if D.is_main():
        save_model(job.out, student, meta)
        state.clear()
    return meta

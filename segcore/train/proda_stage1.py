"""The ProDA stage-1 loop: source CE, rectified self-training on the weak crop, prototype
consistency on the strong view, moving prototypes, EMA teacher (docs/methods/proda.md).

Data parallel (``segcore.train.distributed``): each rank takes its slice of the global
batch; losses with data-dependent normalisers use the global counts; BN (student and the
train-mode EMA teacher) uses the global batch's statistics, as the official SyncBN over 4
GPUs does; the moving-prototype update reads the class means of every rank (all-gathered in
global batch order), so the bank and the EMA teacher stay identical on every rank; rank 0
logs and writes.
"""
from __future__ import annotations

import dataclasses

import torch

from ..data.strong_view import StrongView
from ..data.target_views import TargetViews
from ..methods import proda
from ..methods.warmup import segmentation_loss
from ..models.checkpoint import save_model
from ..pseudo.prototypes import PrototypeBank
from ..pseudo.store import SoftStore
from . import distributed as D
from .best import BestOnVal
from .common import (
    Accel,
    image_set,
    job_settings,
    labelled_set,
    make_sgd,
    source_target_batches,
    student_with_ema_teacher,
    weak_view,
)
from .runner import Training, run_training


@dataclasses.dataclass
class Stage1Job:
    source: dict | list       # {"manifest", "split", "resize"} of the labelled source set (a list: their union)
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
    best: BestOnVal | None = None     # validate on the evaluation split, keep the best checkpoint


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


def data_sets(job: Stage1Job):
    """The source set (weak view) and the target views (weak and strong, the warm-up's soft
    labels) of stage 1."""
    opts = job.options
    src = labelled_set(job.source, job.num_classes, opts)
    base = image_set(job.target, job.num_classes)
    soft = SoftStore(job.soft_labels, expect_keys=base.keys, expect_classes=job.num_classes)
    strong = StrongView(n_ops=opts["strong_ops"], magnitude=opts["strong_magnitude"], cutout=opts["cutout"])
    return src, TargetViews(base, weak_view(opts), strong, soft_store=soft, label_stride=opts["label_stride"],
                            geometry=opts["label_geometry"])


def run(job: Stage1Job, log=print, on_iteration=None) -> dict:
    opts = job.options
    out = {}

    def build(accel: Accel, log) -> Training:
        student, meta, teacher = student_with_ema_teacher(job.init, job.num_classes, opts, accel)
        out["meta"] = dict(meta, stage="proda_stage1", iterations=opts["iterations"])
        protos = torch.load(job.prototypes, map_location="cpu", weights_only=True)["protos"]
        bank = PrototypeBank.from_protos(protos)
        bank.to(accel.device)
        optimizer = make_sgd(student, opts)

        src, tgt = data_sets(job)

        def step(batch):
            s, t = batch
            return train_step(student, teacher, bank, optimizer, accel.batch(s), accel.batch(t), opts, accel,
                              job.num_classes)

        return Training(
            model=student, parts={"model": student, "teacher": teacher, "prototypes": bank, "optimizer": optimizer},
            optimizers=[optimizer], step=step,
            batches=lambda start: zip(*source_target_batches(src, tgt, opts, job.seed, start, accel, job.num_workers)),
            save=lambda _: save_model(job.out, student, out["meta"]),
            checkpoint=lambda path, extra: save_model(path, student, out["meta"] | extra),
            broadcast=lambda: (student, teacher.module, bank.protos), compile=(student, teacher.module),
            same=lambda: (student, teacher.module, bank.protos))

    run_training(build, options=opts, seed=job.seed, workdir=job.workdir, settings=job_settings(job),
                 device=job.device, log=log, on_iteration=on_iteration, best=job.best)
    return out["meta"]

"""The CPSL stage-1 loop: source CE (LAB-transferred source), CutMix of source into the target
weak crop, self-training on labels rectified by the EMA prototypes, class-balanced
self-labeling of the learnable prototypes (Sinkhorn with the class prior over a feature
memory), cosine prototype consistency on the strong view, optional supervised contrast,
EMA teacher and EMA prototypes (docs/methods/cpsl.md). Method pieces:
``segcore.methods.cpsl``.

Data parallel (``segcore.train.distributed``), as the other loops: each rank takes its slice
of the global batch; losses with data-dependent normalisers (CE, the masked KL, the contrast
over the kept anchors) use the global counts; BN (student and the train-mode EMA teacher) uses
the global batch's statistics. The memory entries (the teacher's sampled pixels) of every rank
are all-gathered in global batch order right after sampling, so the self-labeling loss (Sinkhorn
over the memory plus the whole global batch's samples) is the single-process one on every rank
and every rank pushes the same rows: the memory, the prototypes P (averaged gradients) and
their EMA P', and the EMA teacher stay identical on every rank. The per-image random draws
(pixel sampling) are those of the single process (``global_rand``); the CutMix draw is one per
step from the identically seeded RNG. Rank 0 logs and writes.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from ..atomic import save_torch
from ..data.cutmix import box_mask, mix_images, mix_labels, sample_box, subsample_labels
from ..data.lab_transfer import LabTransferSet, read_lab_stats
from ..data.strong_view import StrongView
from ..data.target_views import TargetViews
from ..data.transforms import apply_view
from ..methods import cpsl
from ..methods.feature_memory import FeatureMemory
from ..methods.proda import self_training_loss
from ..methods.rectify import cosine_scores, cosine_weights, rectify
from ..methods.warmup import segmentation_loss, upsample
from ..models.checkpoint import save_model
from ..pseudo.class_distribution import read_class_distribution
from ..pseudo.prototypes import load_prototypes
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

#: the network's output stride; CutMix boxes sit on its grid (and on the loss grid's)
OUTPUT_STRIDE = 8


@dataclasses.dataclass
class CPSLStage1Job:
    source: dict | list       # {"manifest", "split", "resize"} of the labelled source set (a list: their union)
    target: dict              # the same for the unlabelled target train set
    num_classes: int
    options: dict             # training options + CPSL stage-1 options (config cpsl.stage1)
    seed: int
    init: str                 # warm-up checkpoint (student and teacher start from it)
    prototypes: str           # initial (ProDA) prototypes file of the warm-up model
    soft_labels: str          # HDF5 soft pseudo-labels of the warm-up model on target train
    class_distribution: str   # JSON class prior (rules/cpsl.smk, class_distribution)
    out: str
    out_prototypes: str       # the learnt prototypes P and their EMA P'
    workdir: str
    num_workers: int = 0
    device: str | None = None  # None: the process's device (distributed.device())
    best: BestOnVal | None = None  # validate on the evaluation split, keep the best checkpoint
    lab_stats: str | None = None  # target LAB statistics (rule lab_stats) when options set lab_transfer


def fill_empty_prototypes(protos: torch.Tensor, seed: int, log=print) -> torch.Tensor:
    """Zero rows (classes the warm-up model never predicted on target train, so
    ``init_prototypes`` found no pixel for them) replaced by random unit vectors: a zero
    prototype has no direction, and the gradient of ``normalize`` at 0 is 1/eps. The official
    code has no such case (its warm-up predicts every class)."""
    empty = protos.norm(dim=1) == 0
    if bool(empty.any()):
        g = torch.Generator().manual_seed(int(seed))
        rand = torch.nn.functional.normalize(torch.randn(protos.shape, generator=g, dtype=protos.dtype), dim=1)
        protos = torch.where(empty[:, None], rand, protos)
        log(f"prototypes of class(es) {empty.nonzero().flatten().tolist()} are empty (never predicted by the "
            "warm-up model); they start from random unit vectors")
    return protos


def cutmix_batch(target_weak, target_labels, source_image, source_label, opts):
    """With probability ``cutmix_p``, one box (for the whole batch, as the official code) of the
    source crop pasted into the target weak crop and the source label into the pseudo-labels at
    the same pixels. Returns (image, labels, cut). The draws come from the CPU RNG (no host
    sync), identically seeded on every rank under DDP: the same box for the global batch; the
    masks are built on the batch's device."""
    if opts["cutmix_p"] <= 0 or float(torch.rand(())) >= opts["cutmix_p"]:
        return target_weak, target_labels, False
    n, _, h, w = target_weak.shape
    align = math.lcm(int(opts["label_stride"]), OUTPUT_STRIDE)
    box = torch.tensor(sample_box(h, w, opts["cutmix_area"], align)).to(target_weak.device, non_blocking=True)
    box = box.expand(n, 4)
    image = mix_images(target_weak, source_image, box_mask(box, h, w))
    labels = mix_labels(target_labels, source_label, box_mask(box, h, w, size=target_labels.shape[-2:]))
    return image, labels, True


def target_losses(student, teacher, protos, memory, prior, t, s, opts):
    """Target-side losses of one iteration and this step's memory entries (under DDP, those of
    the whole global batch, all-gathered in rank order: the same on every rank)."""
    stride, tau = opts["label_stride"], opts["temperature"]
    size_q = t["soft"].shape[-2:]
    with torch.no_grad():
        o = teacher(t["full"])
        feat_full, out_full = o["feat"], o["out"]
        # float32: under bf16 autocast the sampling coordinates must not be rounded to bf16
        scores_w = cosine_scores(apply_view(feat_full.float(), t["view"], "bilinear", stride=stride), protos.ema)
        labels = rectify(t["soft"], cosine_weights(scores_w, tau), opts["train_thred"])
        # the same rectification on the full image's grid, for the memory's labels
        labels_full = rectify(t["soft_full"], cosine_weights(cosine_scores(feat_full, protos.ema), tau),
                              opts["train_thred"])
        entries = cpsl.memory_entries(feat_full, out_full, labels_full, opts["samples_per_image"])
        # every rank's samples in global batch order: Sinkhorn runs over the memory plus the
        # whole global batch, and every rank pushes the same rows
        entries = {k: D.all_gather_cat(v) for k, v in entries.items()}
    weak, labels, cut = cutmix_batch(t["weak"], labels, s["image"], s["label"], opts)
    o_w = student(weak)
    loss_st = self_training_loss(upsample(o_w["out"], size_q), labels, opts)
    loss_sl, _ = cpsl.self_labeling_loss(entries, protos, memory, prior, tau, opts["epsilon"],
                                         opts["sinkhorn_iterations"])
    loss = loss_st + opts["SL_lambda"] * loss_sl
    logs = {"st": loss_st.detach(), "sl": loss_sl.detach()}
    if opts["contrast_lambda"] > 0 and not cut and memory.full:
        feat_w = o_w["feat"]
        anchor_labels = subsample_labels(labels, feat_w.shape[-2:])
        a, y = cpsl.sample_pixels([feat_w, anchor_labels], opts["samples_per_image"])
        loss_con = cpsl.contrastive_loss(torch.nn.functional.normalize(a.float(), dim=1), y, memory.get("feat"),
                                         memory.get("label"), tau)
        loss = loss + opts["contrast_lambda"] * loss_con
        logs["con"] = loss_con.detach()
    if opts["proto_consistW"] > 0:
        feat_s = upsample(student(t["strong"])["feat"], size_q)
        loss_kl = cpsl.cosine_consistency_loss(scores_w, feat_s, t["strong_view"], protos.ema, tau,
                                               geometry=opts["label_geometry"])
        loss = loss + opts["proto_consistW"] * loss_kl
        logs["kl"] = loss_kl.detach()
    return loss, logs, entries


def train_step(student, teacher, protos, memory, prior, optimizer, s: dict, t: dict, opts: dict,
               accel: Accel) -> dict:
    """One stage-1 step on a source batch ``s`` and a target batch ``t`` (on the device): both
    backward passes, the averaged gradients (student and P), the optimiser step, the memory
    push, the EMA teacher and P'. Returns the losses (detached device tensors: no host sync)."""
    optimizer.zero_grad(set_to_none=True)
    with accel.autocast():
        loss_src = segmentation_loss(student(s["image"])["out"], s["label"])
    loss_src.backward()  # separate backward, as the official code
    with accel.autocast():
        loss_tgt, logs, entries = target_losses(student, teacher, protos, memory, prior, t, s, opts)
    loss_tgt.backward()
    D.average_gradients(list(student.parameters()) + [protos.weight])
    optimizer.step()
    memory.push(**entries)
    teacher.update(student)
    protos.update_ema()
    return {"src": loss_src.detach(), **logs}


def data_sets(job: CPSLStage1Job):
    """The source set (weak view, the LAB transfer with ``lab_transfer``) and the target views
    (weak and strong with blur and jitter, the warm-up's soft labels on the crop and on the full
    image) of stage 1."""
    opts = job.options
    src = labelled_set(job.source, job.num_classes, opts)
    base = image_set(job.target, job.num_classes)
    if opts["lab_transfer"]:
        src = LabTransferSet(src, read_lab_stats(job.lab_stats, base.keys))
    soft = SoftStore(job.soft_labels, expect_keys=base.keys, expect_classes=job.num_classes)
    strong = StrongView(n_ops=opts["strong_ops"], magnitude=opts["strong_magnitude"], cutout=opts["cutout"],
                        blur_p=opts["blur_p"], jitter=opts["jitter"], jitter_p=opts["jitter_p"])
    return src, TargetViews(base, weak_view(opts), strong, soft_store=soft, label_stride=opts["label_stride"],
                            keep_soft_full=True, geometry=opts["label_geometry"])


def run(job: CPSLStage1Job, log=print, on_iteration=None) -> dict:
    opts = job.options
    out = {}

    def build(accel: Accel, log) -> Training:
        student, meta, teacher = student_with_ema_teacher(job.init, job.num_classes, opts, accel)
        out["meta"] = dict(meta, stage="cpsl_stage1", iterations=opts["iterations"])
        init_protos = fill_empty_prototypes(load_prototypes(job.prototypes, job.num_classes), job.seed, log)
        protos = cpsl.CosinePrototypes(init_protos, ema_momentum=opts["proto_ema_momentum"]).to(accel.device)
        if protos.weight.shape[1] != student.feature_dim:
            raise ValueError(f"{job.prototypes}: prototypes of dim {protos.weight.shape[1]}, the model's features "
                             f"have {student.feature_dim}")
        # checked here once (non-negative, sums to 1): sinkhorn does not re-check it per call
        prior = read_class_distribution(job.class_distribution, job.num_classes).to(accel.device)
        optimizer = make_sgd(student, opts)
        p_lr = opts["lr"] * opts["proto_lr_mult"]
        optimizer.add_param_group({"params": [protos.weight], "lr": p_lr, "initial_lr": p_lr, "name": "prototypes"})
        memory = FeatureMemory(opts["queue_length"], {"feat": ((student.feature_dim,), torch.float32),
                                                      "logits": ((job.num_classes,), torch.float32),
                                                      "label": ((), torch.int64)}, device=accel.device)

        src, tgt = data_sets(job)

        def step(batch):
            s, t = batch
            return train_step(student, teacher, protos, memory, prior, optimizer, accel.batch(s), accel.batch(t),
                              opts, accel)

        def save(_):
            save_torch(job.out_prototypes, {"protos": protos.weight.detach().cpu().clone(),
                                            "protos_ema": protos.ema.detach().cpu().clone()})
            save_model(job.out, student, out["meta"])

        return Training(
            model=student, optimizers=[optimizer], step=step, save=save,
            checkpoint=lambda path, extra: save_model(path, student, out["meta"] | extra),
            parts={"model": student, "teacher": teacher, "prototypes": protos, "memory": memory,
                   "optimizer": optimizer},
            batches=lambda start: zip(*source_target_batches(src, tgt, opts, job.seed, start, accel, job.num_workers)),
            broadcast=(student, teacher.module, protos), compile=(student, teacher.module),
            same=lambda: (student, teacher.module, protos, *memory.buffers.values()))

    run_training(build, options=opts, seed=job.seed, workdir=job.workdir, settings=job_settings(job),
                 device=job.device, log=log, on_iteration=on_iteration, best=job.best)
    return out["meta"]

"""DDB self-training of one bridging path (``cu``: cross-domain CutMix, ``ca``: cross-domain
ClassMix) on the shared runner. Method pieces: ``segcore.methods.ddb``.

One iteration t (``st_step``): the mean teacher takes its EMA step (t >= 1); source CE
(backward); the teacher's argmax and confidence on the clean target crop, the scalar pseudo
weight q (share of pixels with confidence >= 0.968); the bridged image
``M*X_src + (1-M)*X_tgt`` with colour jitter and blur, its labels (source label / pseudo-label)
and weights (1 / q); the weighted CE of the student on it (backward); AdamW step.

Round 1 starts from ImageNet (``imagenet``: a ``resnet101_v1c`` file; none: the network's own
init, the demo); a later round starts student and teacher from the previous round's CKD
student (``init``) at ``later_round_lr_mult`` (0.1) times the learning rate.

Data parallel as the other loops: each rank takes its slice of the global batch; the pseudo
weight and the CE normalisers are global; the per-sample random draws (masks, jitter) are the
single process's rows (``distributed.global_rand``); gradients are averaged.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..data.datasets import open_sets
from ..methods.ddb import bridging, photometric
from ..methods.ddb.data import ddb_view, image_crops
from ..methods.ddb.losses import mixed_targets, pixel_ce, pseudo_weight, upsample
from ..methods.ddb.teacher import MeanTeacher
from ..models.checkpoint import load_model, save_model
from ..models.ddb_net import adamw_param_groups, build_ddb_net
from ..models.ddb_weights import load_v1c_imagenet
from . import distributed as D
from .common import Accel, job_settings, source_target_batches
from .runner import Training, run_training
from .schedule import poly_factor, warmup_factor

PATHS = ("cu", "ca")


@dataclasses.dataclass
class STJob:
    source: dict | list       # {"manifest", "split", "resize"} of the labelled source set (a list: their union)
    target: dict              # the same for the unlabelled target train set
    num_classes: int
    options: dict             # training options + DDB ST options (config ddb.st)
    seed: int
    path: str                 # "cu" or "ca"
    arch: str                 # a key of segcore.models.ddb_net.DDB_ARCHS
    out: str
    workdir: str
    round: int = 1
    init: str | None = None   # round > 1: the previous round's CKD student (segcore checkpoint)
    imagenet: str | None = None  # round 1: resnet_v1c ImageNet file (None: random init)
    num_workers: int = 0
    device: str | None = None


def ddb_lr_factor(iteration: int, opts: dict) -> float:
    """mmcv's poly schedule with linear warm-up, by iteration: ``poly(it)`` times the warm-up
    factor ``1 - (1 - it/W)(1 - ratio)`` while ``it < W`` (the warm-up scales the regular lr)."""
    f = poly_factor(iteration, opts.get("poly_horizon") or opts["iterations"], opts["poly_power"])
    w = int(opts.get("warmup_iterations") or 0)
    if w and iteration < w:
        f *= warmup_factor(iteration, w, opts["warmup_ratio"])
    return f


def make_adamw(model, opts, lr_mult: float = 1.0) -> torch.optim.AdamW:
    lr = opts["lr"] * lr_mult
    return torch.optim.AdamW(adamw_param_groups(model, lr, opts["head_lr_mult"]), lr=lr,
                             betas=tuple(opts.get("betas", (0.9, 0.999))), weight_decay=opts["weight_decay"])


def imagenet_student(num_classes: int, arch: str, imagenet: str | None):
    """A fresh DDB network, its backbone from a ``resnet_v1c`` ImageNet file when given."""
    net = build_ddb_net(num_classes, arch)
    if imagenet:
        load_v1c_imagenet(net, imagenet)
    return net


def bridge_masks(path: str, s: dict, num_classes: int, opts: dict):
    """The bridging masks (n, H, W) bool of the batch, True on source pixels."""
    n, _, h, w = s["image"].shape
    if path == "cu":
        return bridging.cut_masks(n, h, w, opts["cut_area"], device=s["image"].device)
    if path == "ca":
        return bridging.class_masks(s["label"], num_classes, official_ignore=opts["classmix_official_ignore"])
    raise ValueError(f"unknown DDB path {path!r} (known: {', '.join(PATHS)})")


def draw(path: str, s: dict, num_classes: int, opts: dict) -> dict:
    """Every random decision of one ST step: the masks and the photometric parameters."""
    return {"mask": bridge_masks(path, s, num_classes, opts),
            "photo": photometric.draw_params(s["image"].shape[0], opts["jitter_strength"], opts["jitter_p"],
                                             opts["blur_p"])}


def st_step(student, teacher: MeanTeacher, optimizer, s: dict, t: dict, draws: dict, iteration: int,
            opts: dict, accel: Accel) -> dict:
    """One ST iteration on a source batch ``s`` and a target batch ``t`` (on the device) with
    the step's random ``draws`` (see ``draw``). Returns the losses (detached, no host sync)."""
    if iteration > 0:
        teacher.update(student, iteration)
    optimizer.zero_grad(set_to_none=True)
    valid_mean = opts["mean_over_valid"]
    with accel.autocast():
        loss_src = pixel_ce(student(s["image"])["out"], s["label"], mean_over_valid=valid_mean)
    loss_src.backward()
    with accel.autocast():
        logits_t = teacher(t["image"])["out"]
    conf, pseudo = F.softmax(upsample(logits_t.float(), t["image"].shape[-2:]), dim=1).max(dim=1)
    q = pseudo_weight(conf, opts["pseudo_threshold"])
    mask = draws["mask"]
    image = photometric.jitter_and_blur(bridging.mix(s["image"], t["image"], mask), draws["photo"],
                                        opts["official_1d_blur"])
    labels, weights = mixed_targets(mask, s["label"], pseudo, q)
    with accel.autocast():
        loss_mix = pixel_ce(student(image)["out"], labels, weights, mean_over_valid=valid_mean)
    loss_mix.backward()
    D.average_gradients(student.parameters())
    optimizer.step()
    return {"src": loss_src.detach(), "mix": loss_mix.detach(), "pl_weight": q.detach()}


def run(job: STJob, log=print, on_iteration=None) -> dict:
    opts = job.options
    if job.path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}, got {job.path!r}")
    out = {}

    def build(accel: Accel, log) -> Training:
        if job.round > 1:
            student, _ = load_model(job.init, expect_num_classes=job.num_classes)
            lr_mult = opts["later_round_lr_mult"]
            start = {"init": str(job.init)}
        else:
            student, lr_mult = imagenet_student(job.num_classes, job.arch, job.imagenet), 1.0
            start = {"imagenet": job.imagenet}
        out["meta"] = {"arch": job.arch, "num_classes": job.num_classes, "bn_clr": False,
                       "stage": f"ddb_st_{job.path}", "round": job.round,
                       "iterations": opts["iterations"], "lr_mult": lr_mult, **start}
        student = accel.place(D.prepare_model(student))
        teacher = MeanTeacher(student, alpha=opts["ema_alpha"], bn_train_mode=opts["ema_train_mode"])
        optimizer = make_adamw(student, opts, lr_mult)
        crop = opts["crop"]
        src = open_sets(job.source, job.num_classes,
                        transform=ddb_view(opts["source_base_width"], crop, opts["flip"], opts["cat_max_ratio"]))
        tgt = image_crops(job.target, job.num_classes, ddb_view(opts["target_base_width"], crop, opts["flip"]))
        counter = {"it": 0}

        def batches(start_it):
            counter["it"] = start_it
            return zip(*source_target_batches(src, tgt, opts, job.seed, start_it, accel, job.num_workers))

        def step(batch):
            s, t = accel.batch(batch[0]), accel.batch(batch[1])
            logs = st_step(student, teacher, optimizer, s, t, draw(job.path, s, job.num_classes, opts),
                           counter["it"], opts, accel)
            counter["it"] += 1
            return logs

        return Training(
            model=student, parts={"model": student, "teacher": teacher, "optimizer": optimizer},
            optimizers=[optimizer], batches=batches, step=step,
            save=lambda _: save_model(job.out, student, out["meta"]),
            broadcast=lambda: (student, teacher.module), same=lambda: (student, teacher.module),
            compile=(student, teacher.module), lr_factor=lambda it: ddb_lr_factor(it, opts))

    run_training(build, options=opts, seed=job.seed, workdir=job.workdir, settings=job_settings(job),
                 device=job.device, log=log, on_iteration=on_iteration)
    return out["meta"]


__all__ = ["STJob", "PATHS", "ddb_lr_factor", "make_adamw", "imagenet_student", "bridge_masks", "draw", "st_step",
           "run"]

"""Supervised training loops: source-only, oracle (target labels) and the adversarial warm-up.

One loop for the three because they differ only in which labelled set they read and in
the optional discriminator; the losses live in ``segcore.methods.warmup``.

Data parallel (``segcore.train.distributed``): each rank takes its slice of the global
batch, the CE is normalised by the global valid-pixel count, BN statistics are those of the
global batch (unless ``freeze_bn``: the official warm-up freezes BN), gradients of the
network and of the discriminator are averaged before their optimiser steps, rank 0 logs and
writes. Mixed precision / channels_last / compile: ``common.Accel``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..data.classes import class_names
from ..data.datasets import SegmentationDataset, infinite_loader
from ..methods import warmup as W
from ..models.checkpoint import save_model
from ..models.deeplabv2 import build_deeplabv2
from ..models.discriminator import FCDiscriminator
from ..models.weights import load_imagenet_backbone
from . import distributed as D
from .common import Accel, begin_training, make_sgd, restore, snapshot, start_run, weak_view
from .resume import RollingState, fingerprint
from .schedule import poly_factor, set_lr

MODES = ("source_only", "oracle", "adversarial")


@dataclasses.dataclass
class SupervisedJob:
    mode: str
    labelled: dict            # {"manifest", "split", "resize"}: the set whose labels train the model
    num_classes: int
    arch: str
    options: dict             # merged training options of the stage (config `train` + overrides)
    seed: int
    out: str
    workdir: str
    unlabelled: dict | None = None   # target images for the adversarial warm-up
    imagenet_weights: str | None = None
    num_workers: int = 0
    device: str | None = None         # None: the process's device (distributed.device())


def _loader(spec: dict, num_classes: int, opts: dict, seed: int, start: int, with_labels: bool, workers: int,
            accel: Accel):
    ds = SegmentationDataset(spec["manifest"], spec["split"], num_classes, resize=spec.get("resize"),
                             transform=weak_view(opts), with_labels=with_labels)
    return infinite_loader(ds, opts["batch_size"], seed, start=start, **accel.loader_kwargs(workers))


def train_step(model, optimizer, batch: dict, opts: dict, accel: Accel, disc=None, d_opt=None,
               target_images=None) -> dict:
    """One supervised step (with the LS-GAN terms when ``disc`` is given); returns the losses
    (detached device tensors: no host sync). Learning rates are set by the caller."""
    images, labels = batch["image"], batch["label"]
    optimizer.zero_grad(set_to_none=True)
    with accel.autocast():
        out = model(images)["out"]
        loss = W.segmentation_loss(out, labels)
        logs = {"seg": loss.detach()}
        if disc is not None:
            W.set_requires_grad(disc, False)
            crop = images.shape[-2:]
            src_up = W.upsample(out, crop)
            tgt_up = W.upsample(model(target_images)["out"], crop)
            adv = W.generator_adv_loss(disc, tgt_up)
            loss = loss + opts["adv_weight"] * adv
            logs["adv"] = adv.detach()
    loss.backward()
    D.average_gradients(model.parameters())
    optimizer.step()
    if disc is not None:
        W.set_requires_grad(disc, True)
        d_opt.zero_grad(set_to_none=True)
        with accel.autocast():
            d_loss = W.discriminator_loss(disc, src_up, tgt_up)
        d_loss.backward()
        D.average_gradients(disc.parameters())
        d_opt.step()
        logs["disc"] = d_loss.detach()
    return logs


def run(job: SupervisedJob, log=print) -> dict:
    if job.mode not in MODES:
        raise ValueError(f"unknown training mode '{job.mode}' (known: {', '.join(MODES)})")
    opts = job.options
    accel, log = start_run(opts, job.seed, job.device, log)
    model = build_deeplabv2(job.num_classes, job.arch)
    init = "random"
    if job.imagenet_weights:
        load_imagenet_backbone(model, job.imagenet_weights)
        init = "imagenet"
    model = accel.place(D.prepare_model(model))
    optimizer = make_sgd(model, opts)
    adversarial = job.mode == "adversarial"
    if adversarial:
        disc = accel.place(FCDiscriminator(job.num_classes))
        d_opt = torch.optim.Adam(disc.parameters(), lr=opts["disc_lr"], betas=tuple(opts["disc_betas"]))
        for g in d_opt.param_groups:
            g["initial_lr"] = g["lr"]

    state = RollingState(Path(job.workdir) / "resume.pt", opts["checkpoint_every"],
                         fingerprint([dataclasses.asdict(job) | {"workdir": None, "num_workers": None,
                                                                 "device": None}]))
    parts = {"model": model, "optimizer": optimizer}
    if adversarial:
        parts |= {"disc": disc, "d_opt": d_opt}
    start = restore(state, parts, log)
    D.broadcast_module(model, *([disc] if adversarial else []))
    accel.compiled(model, *([disc] if adversarial else []))

    labelled = _loader(job.labelled, job.num_classes, opts, job.seed, start, True, job.num_workers, accel)
    if adversarial:
        unlabelled = _loader(job.unlabelled, job.num_classes, opts, job.seed + 1, start, False, job.num_workers,
                             accel)

    total, horizon, progress = begin_training(model, opts, start, log)
    for it in range(start, total):
        factor = poly_factor(it, horizon, opts["poly_power"])
        set_lr(optimizer, factor)
        if adversarial:
            set_lr(d_opt, factor)
        batch = accel.batch(next(labelled))
        tgt = accel.batch(next(unlabelled))["image"] if adversarial else None
        logs = train_step(model, optimizer, batch, opts, accel, disc=disc if adversarial else None,
                          d_opt=d_opt if adversarial else None, target_images=tgt)
        done = it + 1
        progress(done, optimizer.param_groups[0]["lr"], logs)
        if state.due(done) and done < total:
            snapshot(state, done, parts)

    meta = {"arch": job.arch, "num_classes": job.num_classes, "bn_clr": False,
            "classes": list(class_names(job.num_classes)), "stage": job.mode, "init": init,
            "iterations": total}
    D.assert_same(model, *([disc] if adversarial else []), what="model / discriminator")
    if D.is_main():
        save_model(job.out, model, meta)
        state.clear()
    return meta

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

import torch

from ..data.classes import class_names
from ..data.datasets import infinite_loader, open_sets
from ..methods import warmup as W
from ..models.checkpoint import save_model
from ..models.deeplabv2 import build_deeplabv2
from ..models.discriminator import FCDiscriminator
from ..models.weights import load_imagenet_backbone
from . import distributed as D
from .best import BestOnVal
from .common import Accel, job_settings, make_sgd, weak_view
from .runner import Training, run_training

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
    best: BestOnVal | None = None     # validate on the evaluation split, keep the best checkpoint


def _loader(spec: dict, num_classes: int, opts: dict, seed: int, start: int, with_labels: bool, workers: int,
            accel: Accel):
    ds = open_sets(spec, num_classes, transform=weak_view(opts), with_labels=with_labels)
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


def run(job: SupervisedJob, log=print, on_iteration=None) -> dict:
    if job.mode not in MODES:
        raise ValueError(f"unknown training mode '{job.mode}' (known: {', '.join(MODES)})")
    opts = job.options
    adversarial = job.mode == "adversarial"
    meta = {"arch": job.arch, "num_classes": job.num_classes, "bn_clr": False,
            "classes": list(class_names(job.num_classes)), "stage": job.mode,
            "init": "imagenet" if job.imagenet_weights else "random", "iterations": opts["iterations"]}

    def build(accel: Accel, log) -> Training:
        model = build_deeplabv2(job.num_classes, job.arch)
        if job.imagenet_weights:
            load_imagenet_backbone(model, job.imagenet_weights)
        model = accel.place(D.prepare_model(model))
        optimizer = make_sgd(model, opts)
        parts, nets, disc, d_opt = {"model": model, "optimizer": optimizer}, [model], None, None
        if adversarial:
            disc = accel.place(FCDiscriminator(job.num_classes))
            d_opt = torch.optim.Adam(disc.parameters(), lr=opts["disc_lr"], betas=tuple(opts["disc_betas"]))
            for g in d_opt.param_groups:
                g["initial_lr"] = g["lr"]
            parts |= {"disc": disc, "d_opt": d_opt}
            nets.append(disc)

        def batches(start):
            labelled = _loader(job.labelled, job.num_classes, opts, job.seed, start, True, job.num_workers, accel)
            if not adversarial:
                return ((b, None) for b in labelled)
            unlabelled = _loader(job.unlabelled, job.num_classes, opts, job.seed + 1, start, False,
                                 job.num_workers, accel)
            return zip(labelled, unlabelled)

        def step(batch):
            labelled, unlabelled = batch
            tgt = accel.batch(unlabelled)["image"] if adversarial else None
            return train_step(model, optimizer, accel.batch(labelled), opts, accel, disc=disc, d_opt=d_opt,
                              target_images=tgt)

        return Training(model=model, parts=parts, optimizers=[optimizer] + ([d_opt] if adversarial else []),
                        batches=batches, step=step, save=lambda _: save_model(job.out, model, meta),
                        checkpoint=lambda path, extra: save_model(path, model, meta | extra),
                        broadcast=tuple(nets), compile=tuple(nets), same=tuple(nets))

    run_training(build, options=opts, seed=job.seed, workdir=job.workdir, settings=job_settings(job),
                 device=job.device, log=log, on_iteration=on_iteration, best=job.best)
    return meta

"""Uni-UVPT stage 1: source-only pre-training of encoder + DAFormer head (the official
``pretrain.py`` recipe: AdamW, head lr x10, no weight decay on norms, linear warm-up then
poly). The only Uni-UVPT stage that reads source data; its checkpoint is the hand-over point
of the source-free adaptation (``segcore.train.uvpt_adapt``).

Data parallel as the other loops: each rank its slice of the global batch, CE over the global
count of valid pixels, gradients averaged, BN of the head over the global batch.
"""
from __future__ import annotations

import dataclasses

import torch

from ..data.classes import class_names
from ..data.datasets import infinite_loader
from ..methods.warmup import segmentation_loss
from ..models.checkpoint import save_model
from ..models.uvpt import build_uvpt, load_imagenet_encoder, param_groups, parameter_counts
from . import distributed as D
from .common import Accel, job_settings, labelled_set
from .runner import Training, run_training


@dataclasses.dataclass
class UVPTSourceJob:
    source: dict | list       # {"manifest", "split", "resize"} of the labelled source set (a list: their union)
    num_classes: int
    backbone: str             # swin_b, mit_b5, swin_small, mit_small
    options: dict             # training options (lr, head_lr_mult, weight_decay, betas, schedule, crop, ...)
    seed: int
    out: str
    workdir: str
    imagenet_weights: str | None = None   # torchvision Swin / SegFormer MiT ImageNet file
    num_workers: int = 0
    device: str | None = None


def make_adamw(net, opts, prompt_mult: float = 1.0) -> torch.optim.AdamW:
    groups = param_groups(net, opts["lr"], opts["weight_decay"], opts["head_lr_mult"], prompt_mult)
    return torch.optim.AdamW(groups, lr=opts["lr"], betas=tuple(opts["betas"]), weight_decay=opts["weight_decay"])


def train_step(net, optimizer, batch: dict, accel: Accel) -> dict:
    optimizer.zero_grad(set_to_none=True)
    with accel.autocast():
        loss = segmentation_loss(net(batch["image"])["out"], batch["label"])
    loss.backward()
    D.average_gradients(p for p in net.parameters() if p.requires_grad)
    optimizer.step()
    return {"seg": loss.detach()}


def run(job: UVPTSourceJob, log=print, on_iteration=None) -> dict:
    opts = job.options
    out = {}

    def build(accel: Accel, log) -> Training:
        net = build_uvpt(job.backbone, job.num_classes, adapter=False)
        init = "random"
        if job.imagenet_weights:
            load_imagenet_encoder(net, job.imagenet_weights)
            init = "imagenet"
        net = accel.place(D.prepare_model(net))
        optimizer = make_adamw(net, opts)
        src = labelled_set(job.source, job.num_classes, opts)
        out["meta"] = {"arch": net.arch, "num_classes": job.num_classes, "bn_clr": False, "adapter": False,
                       "classes": list(class_names(job.num_classes)), "stage": "uvpt_source", "init": init,
                       "iterations": int(opts["iterations"]), **parameter_counts(net)}

        def batches(start):
            return infinite_loader(src, opts["batch_size"], job.seed, start=start,
                                   **accel.loader_kwargs(job.num_workers))

        return Training(model=net, parts={"model": net, "optimizer": optimizer}, optimizers=[optimizer],
                        batches=batches, step=lambda b: train_step(net, optimizer, accel.batch(b), accel),
                        save=lambda _: save_model(job.out, net, out["meta"]),
                        broadcast=(net,), same=(net,), compile=(net,))

    run_training(build, options=opts, seed=job.seed, workdir=job.workdir, settings=job_settings(job),
                 device=job.device, log=log, on_iteration=on_iteration)
    return out["meta"]


__all__ = ["UVPTSourceJob", "make_adamw", "train_step", "run"]

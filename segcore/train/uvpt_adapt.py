"""Uni-UVPT stage 2: source-free adaptation through prompt adapters, on the source model's
hard pseudo-labels of target train, with adaptive pseudo-label correction.

Reads only target images, the pseudo-label store and the source checkpoint (no source data).
The adapted network is the source model's encoder (frozen unless ``released``) with a new
prompt adapter and the source head (trainable), plus the scale-mixture weights. Optimiser:
AdamW, encoder / mixture at ``lr``, adapter at ``lr * prompt_lr_mult``, head at
``lr * head_lr_mult``; cosine schedule to ``min_lr_ratio`` (``schedule: cosine``).

Target view: the official pipeline's random crop of the resized image and horizontal flip
(no rescaling; ``WeakView`` with scale 1); the labels of a crop come from the correction
state's full label maps (``segcore.methods.uvpt_correction``), not from the loader, because
the correction rewrites them during training.

Data parallel: each rank its slice of the global batch; gradients averaged. The means in the
objective are exact under that average; the Lovasz term is computed per rank (it does not
decompose over pixels), so 2 ranks with B/2 differ slightly from 1 with B. The correction
receives the global batch (indices, boxes, flips and all-gathered predictions) on every rank
and stays identical everywhere.
"""
from __future__ import annotations

import dataclasses

import torch

from ..data.classes import class_names
from ..data.datasets import SegmentationDataset, infinite_loader
from ..data.transforms import WeakView
from ..methods.uvpt_correction import PseudoLabelCorrection
from ..methods.uvpt_objective import adaptation_losses
from ..models.checkpoint import load_model, save_model
from ..models.uvpt import UVPTNet, build_uvpt, parameter_counts, set_backbone_frozen
from ..pseudo.store import HardStore
from . import distributed as D
from .common import Accel, job_settings
from .runner import Training, run_training
from .uvpt_source import make_adamw


@dataclasses.dataclass
class UVPTAdaptJob:
    target: dict              # {"manifest", "split", "resize"} of the target train set (images only)
    num_classes: int
    options: dict             # training + adaptation + correction options
    seed: int
    init: str                 # the uvpt_source checkpoint
    pseudo_labels: str        # hard store of the source model on target train
    out: str
    workdir: str
    num_workers: int = 0
    device: str | None = None


def adapted_from_source(source: UVPTNet, released: bool = False) -> UVPTNet:
    """The source network's encoder and head with a new prompt adapter (and scale mixture);
    the encoder frozen unless ``released`` (the released launcher trains it)."""
    net = build_uvpt(source.backbone_name, source.num_classes, adapter=True)
    missing, unexpected = net.load_state_dict(source.state_dict(), strict=False)
    bad = [k for k in missing if not k.startswith(("adapter.", "scale_weights"))] + list(unexpected)
    if bad:
        raise ValueError(f"source network does not fit the adapted one: {bad[0]}")
    set_backbone_frozen(net, frozen=not released)
    return net


def read_label_maps(path, keys, num_classes: int, size_hw) -> torch.Tensor:
    """The store's labels of every target image as one (N, H, W) uint8 tensor."""
    store = HardStore(path, expect_keys=keys, expect_classes=num_classes)
    try:
        if tuple(store.size_hw) != tuple(size_hw):
            raise ValueError(f"{path}: labels of size {tuple(store.size_hw)}, the resized target images are "
                             f"{tuple(size_hw)}")
        return torch.stack([store.get(i)[0].to(torch.uint8) for i in range(len(keys))])
    finally:
        store.close()


def target_set(spec: dict, num_classes: int, opts: dict) -> SegmentationDataset:
    """Target train images through a random crop + flip of the resized image (no rescale)."""
    width = int(spec["resize"][0]) if spec.get("resize") else None
    ds = SegmentationDataset(spec["manifest"], spec["split"], num_classes, resize=spec.get("resize"),
                             with_labels=False)
    if width is None:
        width = int(ds.sizes[0][0])
    ds.transform = WeakView(base_width=width, crop=tuple(opts["crop"]), scale_range=(1.0, 1.0), flip_p=opts["flip"])
    return ds


def train_step(net, optimizer, correction, batch: dict, opts: dict, accel: Accel, done: int) -> dict:
    """One adaptation iteration (``done``: iterations completed after it): relabel and read
    the crops' labels, the three-scale objective, averaged gradients, the AdamW step, the
    correction's bookkeeping. Returns detached losses."""
    index, box, flip = batch["index"].cpu(), batch["view"]["crop"].cpu(), batch["view"]["flip"].cpu()
    g_index, g_box, g_flip = (D.all_gather_cat(t.to(accel.device)).cpu() for t in (index, box, flip))
    correction.relabel(g_index)
    labels = correction.labels_for(index, box, flip).to(accel.device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    with accel.autocast():
        loss, logs, mix = adaptation_losses(net, batch["image"], labels, opts)
    loss.backward()
    D.average_gradients(p for p in net.parameters() if p.requires_grad)
    optimizer.step()
    conf, pred = mix.max(dim=1)
    correction.record(g_index, g_box, g_flip, D.all_gather_cat(pred.to(torch.uint8)),
                      D.all_gather_cat(conf.float()), D.all_gather_cat(labels), done)
    logs["relabelled"] = correction.relabelled.to(torch.float64)
    return logs


def make_correction(labels: torch.Tensor, opts: dict, n_images: int) -> PseudoLabelCorrection:
    c = opts["correction"]
    crop_w, crop_h = (int(v) for v in opts["crop"])
    return PseudoLabelCorrection(labels, (crop_h, crop_w), opts["num_classes"],
                                 epoch_iters=max(1, n_images // int(opts["batch_size"])), queue=c["queue"],
                                 interval=c["interval"], slope_threshold=c["slope_threshold"],
                                 quantile=c["quantile"], enabled=c["enabled"])


def run(job: UVPTAdaptJob, log=print, on_iteration=None) -> dict:
    opts = dict(job.options, num_classes=job.num_classes)
    out = {}

    def build(accel: Accel, log) -> Training:
        source, meta = load_model(job.init, expect_num_classes=job.num_classes)
        if not isinstance(source, UVPTNet) or source.has_adapter:
            raise ValueError(f"{job.init}: not a Uni-UVPT source checkpoint (arch {meta['arch']!r})")
        released = bool(opts.get("released", False))
        net = accel.place(D.prepare_model(adapted_from_source(source, released)))
        optimizer = make_adamw(net, opts, prompt_mult=opts["prompt_lr_mult"])
        ds = target_set(job.target, job.num_classes, opts)
        h, w = ds.load_image(0).shape[-2:]
        correction = make_correction(read_label_maps(job.pseudo_labels, ds.keys, job.num_classes, (h, w)),
                                     opts, len(ds))
        counts = parameter_counts(net)
        out["meta"] = {"arch": net.arch, "num_classes": job.num_classes, "bn_clr": False, "adapter": True,
                       "classes": list(class_names(job.num_classes)), "stage": "uvpt_adapt",
                       "init": meta.get("init", "random"), "frozen_backbone": not released,
                       "iterations": int(opts["iterations"]), **counts}
        log(f"adapted model: {counts['trainable_params']} trainable of {counts['total_params']} parameters")
        it = [0]

        def batches(start):
            it[0] = start
            return infinite_loader(ds, opts["batch_size"], job.seed, start=start,
                                   **accel.loader_kwargs(job.num_workers))

        def step(batch):
            it[0] += 1
            return train_step(net, optimizer, correction, accel.batch(batch), opts, accel, it[0])

        def save(finished):
            out["meta"]["relabelled_pixels"] = int(correction.relabelled)
            out["meta"]["update_classes"] = [int(c) for c in correction.in_update.nonzero().flatten()]
            save_model(job.out, net, out["meta"])

        return Training(model=net, parts={"model": net, "optimizer": optimizer, "correction": correction},
                        optimizers=[optimizer], batches=batches, step=step, save=save,
                        broadcast=(net,), compile=(),
                        same=lambda: (net, correction.labels, correction.thresholds, correction.history))

    run_training(build, options=opts, seed=job.seed, workdir=job.workdir, settings=job_settings(job),
                 device=job.device, log=log, on_iteration=on_iteration)
    return out["meta"]


__all__ = ["UVPTAdaptJob", "adapted_from_source", "read_label_maps", "target_set", "train_step", "make_correction",
           "run"]

"""Uni-UVPT's adaptation objective on one batch of target crops and their pseudo-labels.

The crop ``x`` is seen at scales 1, 0.5 and 2 (bilinear, ``align_corners=True``); each
scale's logits are upsampled to the crop (bilinear, ``align_corners=True``) and turned into
probabilities p_s. Then (``segcore.methods.uvpt_losses``)::

    L = lovasz(p_1, y) + entropy_weight * robust_entropy(z_1)
        + consistency_weight * sum_s mask * KL(p_s || mix(p))      (mask: mix's top prob >= 0.8)
        + prompt_weight * sum_stage prompt_mse(injected tokens of the three scales)

Options (with their official values): ``entropy_weight`` 0.005, ``consistency_weight`` 1.0,
``confidence_threshold`` 0.8, ``prompt_weight`` 0.001, ``released`` false (true: the
released code's prompt clamp and batch-wide consistency mask; it also leaves the encoder
trainable, see ``segcore.train.uvpt_adapt``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import uvpt_losses as L

SCALES = (1.0, 0.5, 2.0)   # scale 1 first: its prediction is the one the segmentation loss sees


def rescale(x: torch.Tensor, scale: float) -> torch.Tensor:
    if scale == 1.0:
        return x
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=True)


def adaptation_losses(net, images: torch.Tensor, labels: torch.Tensor, opts: dict):
    """(total loss, {name: detached loss}, mixture (N, C, H, W) of the crops, detached)."""
    size = images.shape[-2:]
    logits, prompts = [], []
    for s in SCALES:
        out = net(rescale(images, s))
        logits.append(F.interpolate(out["out"].float(), size=size, mode="bilinear", align_corners=True))
        prompts.append(out["prompts"])
    probs = [z.softmax(1) for z in logits]
    released = bool(opts.get("released", False))
    seg = L.lovasz_softmax(probs[0], labels)
    ent = L.robust_entropy(logits[0])
    mix = L.scale_mixture(probs, net.scale_weights)
    mask = L.confidence_mask(mix.detach(), labels, opts["confidence_threshold"], over_batch=released)
    cons = L.consistency_loss(probs, mix, mask)
    prompt = L.prompt_consistency(prompts, clamp=released)
    loss = (seg + opts["entropy_weight"] * ent + opts["consistency_weight"] * cons
            + opts["prompt_weight"] * prompt)
    logs = {"lovasz": seg.detach(), "ent": ent.detach(), "cons": cons.detach(), "prompt": prompt.detach(),
            "mask": mask.detach().mean()}
    return loss, logs, mix.detach()


__all__ = ["SCALES", "rescale", "adaptation_losses"]

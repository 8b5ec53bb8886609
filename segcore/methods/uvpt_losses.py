"""Uni-UVPT's training objective on target pseudo-labels (one crop seen at scales 1, 0.5, 2).

* ``lovasz_softmax``: the Lovasz extension of the Jaccard loss (Berman et al.), over the
  classes present in the labels, the batch flattened (mmseg's ``per_image=False``).
* ``robust_entropy``: FDA's ``mean(((H(p) / ln C)^2 + 1e-8)^2)``, weight 0.005 (the official
  constant 2.9444 is ln 19).
* ``scale_mixture`` / ``consistency_loss``: the three scales' softmax maps (at the crop size)
  mixed with learnable weights ``softmax(w)``, clamped to [1e-3, 1 - 1e-3]; a pixel counts
  where the mixture's top probability (pseudo-label not ignored) reaches 0.8; the loss is the
  mean over pixels of the sum over scales of KL(p_s || mixture) on those pixels.
* ``prompt_consistency``: per encoder stage, the MSE of each scale's injected tokens (resized
  to the scale-1 map) to their mean over the scales, averaged over scales; weight 1e-3.

Official quirks kept behind switches: the consistency mask's max also runs over the batch
(``mask_over_batch``), and the prompt tokens are clamped to [1e-3, 1 - 1e-3] before the MSE
(``clamp``: its gradient is zero outside that band).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.classes import IGNORE_INDEX

EPS = 1e-3


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension w.r.t. sorted errors (gt_sorted: 0/1 float)."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_softmax(probs: torch.Tensor, labels: torch.Tensor, ignore: int = IGNORE_INDEX) -> torch.Tensor:
    """probs (N, C, H, W) (a softmax), labels (N, H, W); classes present in the valid labels.
    A batch without a valid pixel gives 0 (connected to the graph)."""
    c = probs.shape[1]
    p = probs.permute(0, 2, 3, 1).reshape(-1, c)
    y = labels.reshape(-1)
    valid = y != ignore
    p, y = p[valid], y[valid]
    losses = []
    for k in torch.unique(y).tolist():
        fg = (y == k).to(p.dtype)
        errors = (fg - p[:, k]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[order])))
    if not losses:
        return probs.sum() * 0.0
    return torch.stack(losses).mean()


def robust_entropy(logits: torch.Tensor, eta: float = 2.0) -> torch.Tensor:
    """``mean(((H / ln C)^2 + 1e-8)^eta)`` of the per-pixel Shannon entropy H of softmax(logits)."""
    logp = F.log_softmax(logits.float(), dim=1)
    ent = -(logp.exp() * logp).sum(1) / math.log(logits.shape[1])
    return ((ent**2 + 1e-8) ** eta).mean()


def scale_mixture(probs: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """``clamp(sum_s softmax(weights)_s * probs_s, 1e-3, 1 - 1e-3)``."""
    w = torch.softmax(weights.float(), dim=0)
    mix = sum(w[s] * p for s, p in enumerate(probs))
    return mix.clamp(EPS, 1.0 - EPS)


def confidence_mask(mixture: torch.Tensor, labels: torch.Tensor, threshold: float = 0.8,
                    over_batch: bool = False, ignore: int = IGNORE_INDEX) -> torch.Tensor:
    """(N, H, W) float mask: the mixture's top probability (0 where the label is ignored)
    reaches ``threshold``. ``over_batch``: the official max over the batch too (one (H, W)
    mask shared by all images)."""
    top = mixture.max(dim=1).values * (labels != ignore).to(mixture.dtype)
    if over_batch:
        top = top.max(dim=0, keepdim=True).values.expand_as(top)
    return (top >= threshold).to(mixture.dtype)


def consistency_loss(probs: list[torch.Tensor], mixture: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mean_{n,x} sum_s mask * KL(p_s || mixture)`` (the mixture keeps its gradient: it is how
    the scale weights learn)."""
    log_mix = mixture.log()
    total = 0.0
    for p in probs:
        kl = (p * (p.clamp_min(1e-12).log() - log_mix)).sum(1)
        total = total + kl * mask
    return total.mean()


def prompt_consistency(prompts: list[list[torch.Tensor]], clamp: bool = False) -> torch.Tensor:
    """``sum_stage mean_s MSE(g_s, mean_s g_s)``; ``prompts[s][i]``: scale s (scale 1 first),
    stage i, a (N, D, h, w) map resized to scale 1's size. ``clamp``: the official clamp."""
    total = 0.0
    for stage in range(len(prompts[0])):
        size = prompts[0][stage].shape[-2:]
        g = [_resize(p[stage].float(), size) for p in prompts]
        if clamp:
            g = [x.clamp(EPS, 1.0 - EPS) for x in g]
        mean = sum(g) / len(g)
        total = total + sum(F.mse_loss(x, mean) for x in g) / len(g)
    return total


__all__ = ["lovasz_softmax", "lovasz_grad", "robust_entropy", "scale_mixture", "confidence_mask",
           "consistency_loss", "prompt_consistency"]

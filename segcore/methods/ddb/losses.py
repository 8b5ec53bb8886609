"""DDB's losses (mmseg 0.22's cross-entropy as the official code runs it).

* ``pixel_ce``: logits upsampled bilinearly (``align_corners=False``) to the label size, per-pixel
  CE (0 on the ignore value) times an optional per-pixel weight, averaged over ALL pixels,
  ignored ones included (mmseg before 0.23 has no ``avg_non_ignore``). ``mean_over_valid``
  divides by the non-ignored pixels instead. Under DDP the normaliser is the global one.
* ``pseudo_weight``: the DACS/DAFormer scalar weight of the pseudo-labels: the share of the
  batch's pixels whose teacher confidence is >= the threshold (0.968); no pixel is dropped.
* ``mixed_targets``: the labels and weights of the bridged image: source label and weight 1
  on source pixels, the teacher's argmax and the scalar weight elsewhere.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...data.classes import IGNORE_INDEX
from ...train import distributed as D


def upsample(logits: Tensor, size) -> Tensor:
    """mmseg's ``resize`` of the decode head's output to the label size."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def pixel_ce(logits: Tensor, labels: Tensor, weight: Tensor | None = None, mean_over_valid: bool = False) -> Tensor:
    """Weighted pixel CE at label resolution (see the module docstring)."""
    up = upsample(logits, labels.shape[-2:])
    up = up.float() if up.dtype in (torch.float16, torch.bfloat16) else up   # autocast: the loss in float32
    ce = F.cross_entropy(up, labels.long(), ignore_index=IGNORE_INDEX, reduction="none")
    if weight is not None:
        ce = ce * weight
    count = (labels != IGNORE_INDEX).sum() if mean_over_valid else torch.tensor(labels.numel(), device=labels.device)
    return D.global_mean(ce.sum(), count, min_count=1)


def pseudo_weight(confidence: Tensor, threshold: float = 0.968) -> Tensor:
    """Share of pixels (over the global batch) with confidence >= ``threshold`` (a 0-dim tensor)."""
    above = (confidence >= threshold).sum()
    count = D.all_reduce_sum(torch.tensor(confidence.numel(), device=confidence.device))
    return D.all_reduce_sum(above).float() / count.float()


def mixed_targets(mask: Tensor, source_labels: Tensor, pseudo_labels: Tensor, weight: Tensor):
    """(labels, weights) of the bridged image: ``mask`` (n, H, W) bool, True on source pixels."""
    labels = torch.where(mask, source_labels, pseudo_labels)
    weights = torch.where(mask, torch.ones_like(mask, dtype=torch.float32), weight.float().expand(mask.shape))
    return labels, weights


__all__ = ["upsample", "pixel_ce", "pseudo_weight", "mixed_targets"]

"""DDB's two bridges between a source and a target crop (``X_mix = M*X_src + (1-M)*X_tgt``,
M = 1 on source pixels), built for the whole batch on the batch's device:

* ``cut_masks`` (coarse region path ``cu``): one box per sample covering ``area`` (0.4) of the
  crop, height fraction ``area ** u`` (log-uniform in [area, 1]), width fraction
  ``area / height fraction``, at a uniform position fully inside the crop, sizes and corners
  rounded as the official ``get_cut_masks``.
* ``class_masks`` (fine class path ``ca``): ceil(|C|/2) of the classes C present in the source
  label crop, uniformly without replacement; M = 1 where the source label is one of them. The
  ignore value is never a class (the official code may pick 255, a slip; ``official_ignore``
  reproduces it: 255 then counts in C and its pixels can be pasted).

The random draws come from the CPU RNG through ``distributed.global_rand`` (the rows a single
process would use for these samples under DDP), so no draw depends on the device or on the
number of processes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...data.classes import IGNORE_INDEX
from ...train import distributed as D


def cut_boxes(n: int, height: int, width: int, area: float = 0.4, u: Tensor | None = None) -> Tensor:
    """(n, 4) int64 boxes (y0, x0, y1, x1); ``u`` (n, 3) uniforms (drawn when None)."""
    if not 0 < area <= 1:
        raise ValueError(f"cut area must be in (0, 1], got {area}")
    u = D.global_rand((n, 3), dtype=torch.float64) if u is None else u.to(torch.float64)
    y_frac = torch.exp(u[:, 0] * torch.log(torch.tensor(float(area), dtype=torch.float64)))
    x_frac = area / y_frac
    bh, bw = torch.round(y_frac * height), torch.round(x_frac * width)
    y0, x0 = torch.round((height - bh) * u[:, 1]), torch.round((width - bw) * u[:, 2])
    return torch.stack([y0, x0, y0 + bh, x0 + bw], dim=1).long()


def boxes_to_masks(boxes: Tensor, height: int, width: int, device=None) -> Tensor:
    """Bool masks (n, H, W) set inside each box."""
    boxes = boxes.to(device)
    ys = torch.arange(height, device=device)[None, :, None]
    xs = torch.arange(width, device=device)[None, None, :]
    b = boxes[:, :, None, None]
    return (ys >= b[:, 0]) & (ys < b[:, 2]) & (xs >= b[:, 1]) & (xs < b[:, 3])


def cut_masks(n: int, height: int, width: int, area: float = 0.4, device=None) -> Tensor:
    """The ``cu`` path's masks (n, H, W) bool."""
    return boxes_to_masks(cut_boxes(n, height, width, area), height, width, device)


def class_masks(labels: Tensor, num_classes: int, official_ignore: bool = False,
                keys: Tensor | None = None) -> Tensor:
    """The ``ca`` path's masks (n, H, W) bool from source labels (n, H, W).

    Per sample: the present classes get iid uniform keys (``keys`` (n, C+1), drawn when None;
    column C stands for the ignore value), and the ceil(k/2) present ones with the smallest
    keys are chosen: a uniform subset without replacement, without a host sync."""
    n = labels.shape[0]
    c = int(num_classes)
    bins = torch.where((labels >= 0) & (labels < c), labels, torch.full_like(labels, c)).long()
    present = torch.zeros(n, c + 1, dtype=torch.bool, device=labels.device)
    present.scatter_(1, bins.reshape(n, -1), True)
    if not official_ignore:
        present[:, c] = False
    keys = D.global_rand((n, c + 1), dtype=torch.float64) if keys is None else keys
    keys = torch.where(present, keys.to(labels.device, torch.float64), torch.full_like(keys, 2.0, dtype=torch.float64,
                                                                                         device=labels.device))
    rank = keys.argsort(dim=1).argsort(dim=1)                 # 0 = smallest key
    k = (present.sum(dim=1, keepdim=True) + 1) // 2           # ceil(|C| / 2)
    chosen = present & (rank < k)
    return chosen.gather(1, bins.reshape(n, -1)).reshape(labels.shape)


def mix(source: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """``mask`` ? source : target, for images (n, 3, H, W) or labels / weights (n, H, W)."""
    m = mask[:, None] if source.dim() == 4 else mask
    return torch.where(m, source, target)


__all__ = ["cut_boxes", "boxes_to_masks", "cut_masks", "class_masks", "mix", "IGNORE_INDEX"]

"""CPSL's CutMix of source into target: a box of the source crop is pasted into the target weak
crop, and the source label into the target pseudo-label at exactly the same pixels
(docs/methods/cpsl.md, Stage 1; the official code ``rand_bbox`` in ``models/utils.py``).

The official box covers ``area`` (0.5) of the crop, with height fraction ``area ** U(0, 1)``
(in [area, 1]) and width fraction ``area / height fraction``, at a uniform position inside the
crop. Its label paste was misaligned before the fix of 2022-09-16 (lslrh/CPSL issue #8); the
fixed version upsamples the 1/4 pseudo-label x4, pastes, and subsamples again.

Here the box is drawn on a grid of ``align`` pixels (the official draw is ``align = 1``), and
one mask defines both pastes: the image takes source pixels where the mask is set, and a
label map at ``1/stride`` takes the source label where its nearest-neighbour sampling point
(pixel ``(i*stride, j*stride)``, what ``F.interpolate(mode="nearest")`` samples) lies in the
box (``box_mask(..., size=label size)``). When ``stride`` divides ``align`` the label mask,
blown up by ``stride``, IS the image mask: the label says "source" exactly where the image
shows source pixels, at every such resolution
(the loss grid at 1/4 and the network's output stride 8 both divide the default ``align`` 8).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sample_box(height: int, width: int, area: float = 0.5, align: int = 1,
               generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """``(y0, x0, y1, x1)`` of a box covering about ``area`` of a ``height`` x ``width`` crop,
    corners on multiples of ``align`` (sizes and positions are drawn in cells of ``align``
    pixels, rounded as the official ``rand_bbox``)."""
    if not 0 < area <= 1:
        raise ValueError(f"area must be in (0, 1], got {area}")
    gh, gw = max(1, height // align), max(1, width // align)
    u = torch.rand(3, generator=generator, dtype=torch.float64)
    y_frac = area ** float(u[0])
    x_frac = area / y_frac
    bh = min(gh, max(1, round(y_frac * gh)))
    bw = min(gw, max(1, round(x_frac * gw)))
    y0, x0 = round((gh - bh) * float(u[1])), round((gw - bw) * float(u[2]))
    return y0 * align, x0 * align, (y0 + bh) * align, (x0 + bw) * align


def box_mask(boxes: Tensor, height: int, width: int, size=None) -> Tensor:
    """Bool mask (N, h, w) of boxes (N, 4) = (y0, x0, y1, x1) in the pixels of a ``height`` x
    ``width`` crop, on a grid of ``size`` = (h, w) (default: the crop itself). Grid pixel (i, j)
    is set when the crop pixel that nearest-neighbour subsampling takes for it,
    (floor(i*height/h), floor(j*width/w)) as in ``subsample_labels``, lies in [y0, y1) x [x0, x1)."""
    boxes = torch.as_tensor(boxes).reshape(-1, 4)
    h, w = (height, width) if size is None else (int(size[0]), int(size[1]))
    ys = torch.floor(torch.arange(h, device=boxes.device, dtype=torch.float64) * (height / h)).long()
    xs = torch.floor(torch.arange(w, device=boxes.device, dtype=torch.float64) * (width / w)).long()
    b = boxes[:, :, None]
    in_y = (ys[None] >= b[:, 0]) & (ys[None] < b[:, 2])   # (N, h)
    in_x = (xs[None] >= b[:, 1]) & (xs[None] < b[:, 3])   # (N, w)
    return in_y[:, :, None] & in_x[:, None, :]


def mix_images(target: Tensor, source: Tensor, mask: Tensor) -> Tensor:
    """``target`` (N, 3, H, W) with ``source`` pixels where ``mask`` (N, H, W) is set (a new tensor)."""
    if mask.shape != (target.shape[0], *target.shape[-2:]) or source.shape != target.shape:
        raise ValueError(f"mix_images: target {tuple(target.shape)}, source {tuple(source.shape)}, "
                         f"mask {tuple(mask.shape)} do not match")
    return torch.where(mask[:, None].to(target.device), source, target)


def subsample_labels(labels: Tensor, size) -> Tensor:
    """Nearest-neighbour subsampling of labels (N, H, W) to ``size`` (h, w), as the official
    ``F.interpolate(..., scale_factor=0.25)`` (pixel (i, j) takes (floor(i*H/h), floor(j*W/w)))."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].to(labels.dtype)


def mix_labels(target_labels: Tensor, source_labels: Tensor, mask: Tensor) -> Tensor:
    """Target pseudo-labels (N, h, w) at some stride with the source labels (N, H, W, crop
    resolution) pasted where ``mask`` (N, h, w; ``box_mask`` at the same stride) is set."""
    if mask.shape != target_labels.shape:
        raise ValueError(f"mix_labels: mask {tuple(mask.shape)} and labels {tuple(target_labels.shape)} differ")
    src = subsample_labels(source_labels, target_labels.shape[-2:]).to(target_labels.device, target_labels.dtype)
    return torch.where(mask.to(target_labels.device), src, target_labels)


__all__ = ["sample_box", "box_mask", "mix_images", "subsample_labels", "mix_labels"]

"""Target samples for self-training: the full image, its weak crop, the strong view of that
crop, and pseudo-labels moved exactly as the pixels were moved.

Pseudo-labels are defined on the full image grid (soft ones at the network's output
stride, hard ones at label resolution). They are warped into the weak crop at
``1/label_stride`` of its resolution (the official code works at 1/4 of the crop) and, for
hard labels, further into the strong view, all inside the loader workers.

``geometry`` (``"direct"`` by default, or ``"official"``) is passed to ``apply_view`` and
``warp_to_strong``: ``"official"`` samples the pseudo-labels where the official loader chain and
``label_strong_T`` sample them (docs/geometry.md).
"""
from __future__ import annotations

import torch

from .datasets import SegmentationDataset
from .strong_view import StrongView, warp_to_strong
from .transforms import WeakView, apply_view, check_geometry


class TargetViews(torch.utils.data.Dataset):
    def __init__(self, base: SegmentationDataset, weak: WeakView, strong: StrongView | None = None,
                 soft_store=None, hard_store=None, threshold: float | None = None, label_stride: int = 4,
                 keep_full: bool = True, keep_soft_full: bool = False, geometry: str = "direct"):
        self.base, self.weak, self.strong = base, weak, strong
        self.geometry = check_geometry(geometry)
        self.soft, self.hard, self.threshold = soft_store, hard_store, threshold
        self.stride, self.keep_full = label_stride, keep_full
        self.keep_soft_full = keep_soft_full  # also the soft label on the full image's grid (CPSL)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        index, view_seed = key
        g = torch.Generator().manual_seed(int(view_seed))
        full = self.base.load_image(index)
        weak, _, pw = self.weak(full, None, generator=g)
        out = {"index": index, "weak": weak, "view": pw}
        if self.keep_full:
            out["full"] = full
        ps = None
        if self.strong is not None:
            out["strong"], ps = self.strong(weak, generator=g)
            out["strong_view"] = ps
        if self.soft is not None:
            soft = self.soft[index]
            out["soft"] = apply_view(soft, pw, "bilinear", stride=self.stride, geometry=self.geometry)
            if self.keep_soft_full:
                out["soft_full"] = soft
        if self.hard is not None:
            if self.threshold is None:
                label = self.hard.get(index)[0]
            else:
                label = self.hard.thresholded(index, self.threshold)
            label = apply_view(label, pw, "nearest", stride=self.stride, geometry=self.geometry)
            out["hard"] = (warp_to_strong(label, ps, "nearest", geometry=self.geometry) if ps is not None
                           else label)
        return out

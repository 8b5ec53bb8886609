"""DDB's data: the source and target crops of its pipelines, and the multi-source union.

* Source (mmseg pipeline of the official configs): resize keeping the aspect to the source
  width (1280; GTA5 1914x1052 -> 1280x703), a random 512x512 crop that retries (up to 10 times)
  while one class covers more than ``cat_max_ratio`` (0.75) of the crop's labelled pixels,
  flip with p 0.5. Target: resize to the target width (1024), random 512x512 crop, flip.
  Images stay in [0, 1]; the network normalises them itself.
* A multi-source chain's source is the union of its converted sets
  (``segcore.data.datasets.open_sets``), as the official multi-source ``ConcatDataset``.
"""
from __future__ import annotations

import torch

from ...data.classes import IGNORE_INDEX
from ...data.datasets import SegmentationDataset
from ...data.transforms import WeakView, apply_view

MAX_CROP_TRIES = 10


class CatMaxRatioView(WeakView):
    """``WeakView`` whose crop is redrawn (at most 10 times) while one class holds more than
    ``cat_max_ratio`` of the crop's labelled pixels (mmseg's ``RandomCrop(cat_max_ratio)``;
    the last draw is kept). ``cat_max_ratio >= 1`` is a plain ``WeakView``."""

    def __init__(self, *args, cat_max_ratio: float = 0.75, **kwargs):
        super().__init__(*args, **kwargs)
        self.cat_max_ratio = float(cat_max_ratio)

    def sample_for(self, image, label, generator):
        params = self.sample(image.shape[-2], image.shape[-1], generator)
        if label is None or self.cat_max_ratio >= 1:
            return params
        for _ in range(MAX_CROP_TRIES - 1):
            crop = apply_view(label, params, "nearest")
            counts = torch.bincount(crop[crop != IGNORE_INDEX].flatten(), minlength=1)
            if counts.numel() > 1 and counts.max() < self.cat_max_ratio * counts.sum():
                break
            params = self.sample(image.shape[-2], image.shape[-1], generator)
        return params


def ddb_view(base_width: int, crop, flip: float, cat_max_ratio: float = 1.0) -> WeakView:
    """Resize to ``base_width`` keeping the aspect (no random scale), crop, flip."""
    return CatMaxRatioView(base_width=base_width, crop=tuple(crop), scale_range=(1.0, 1.0), flip_p=flip,
                           cat_max_ratio=cat_max_ratio)


def image_crops(spec: dict, num_classes: int, view: WeakView) -> SegmentationDataset:
    """Target crops without labels."""
    return SegmentationDataset(spec["manifest"], spec["split"], num_classes, resize=spec.get("resize"),
                               transform=view, with_labels=False)


__all__ = ["CatMaxRatioView", "ddb_view", "image_crops"]

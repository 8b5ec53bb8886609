"""Class prototypes of a DDB path teacher on the target train images: per-image class means of
the 256-d bottleneck feature over the teacher's own argmax (classes with >= 10 pixels),
folded image by image into a running mean whose count is capped at 3,000
(``segcore.pseudo.prototypes``), the official ``cal_prototype.py`` rule; the teacher in eval mode.

As the official script, features and logits are upsampled bilinearly to the input size before
the argmax and the means (``resolution="input"``); ``"feature"`` works at output stride 8.
Ours is one deterministic pass over the whole resized images; the official script runs four
passes over random training crops (flips included).
"""
from __future__ import annotations

import torch

from ...data.datasets import inference_loader
from ...pseudo.prototypes import PrototypeBank, class_means
from .losses import upsample


@torch.no_grad()
def path_prototypes(model, dataset, batch_size: int = 1, device="cpu", resolution: str = "input",
                    min_pixels: int = 10, cap: int = 3000, num_workers: int = 0) -> PrototypeBank:
    if resolution not in ("input", "feature"):
        raise ValueError(f"resolution must be 'input' or 'feature', got {resolution!r}")
    model.eval().to(device)
    bank = None
    loader = inference_loader(dataset, batch_size, num_workers, device)
    for batch in loader:
        images = batch["image"].to(device)
        out = model(images)
        for i in range(images.shape[0]):          # one image at a time: 256 x H x W floats at input size
            feat, logits = out["feat"][i:i + 1].float(), out["out"][i:i + 1].float()
            if resolution == "input":
                feat, logits = upsample(feat, images.shape[-2:]), upsample(logits, images.shape[-2:])
            means, valid = class_means(feat, logits.argmax(1), logits.shape[1], min_pixels)
            if bank is None:
                bank = PrototypeBank(logits.shape[1], feat.shape[1], device=device)
            bank.add_image_means(means, valid, cap)
    return bank


__all__ = ["path_prototypes"]

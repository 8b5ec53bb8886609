"""Evaluation as in the official test.py: single scale, logits upsampled (bilinear,
align_corners=True) to the label's resolution, one confusion matrix over the whole split."""
from __future__ import annotations

import torch

from .data.datasets import SegmentationDataset
from .methods.warmup import upsample
from .metrics import ConfusionMatrix, summarize


@torch.no_grad()
def evaluate(model, manifest, split: str, num_classes: int, resize=None, batch_size: int = 4,
             num_workers: int = 0, device="cpu") -> dict:
    ds = SegmentationDataset(manifest, split, num_classes, resize=resize, resize_label=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    model.eval().to(device)
    cm = ConfusionMatrix(num_classes, device=device)
    for batch in loader:
        labels = batch["label"].to(device)
        logits = model(batch["image"].to(device))["out"]
        pred = upsample(logits, labels.shape[-2:]).argmax(1)
        cm.update(pred, labels)
    result = summarize(cm.matrix.cpu(), num_classes)
    result["images"] = len(ds)
    return result

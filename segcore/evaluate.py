"""Evaluation as in the official test.py: single scale, logits upsampled (bilinear,
align_corners=True) to the label's resolution, one confusion matrix over the whole split.
Progress (images done, rate, elapsed, ETA, timestamp, CUDA peak memory) goes to ``log`` every
``log_every`` images (whole batches), at least every 30 s and at the end."""
from __future__ import annotations

import torch

from .data.datasets import SegmentationDataset, inference_loader
from .methods.warmup import upsample
from .metrics import ConfusionMatrix, summarize
from .progress import image_meter

# checkpoint meta copied into the metrics: what the model is, and (Uni-UVPT) what was trained
CHECKPOINT_META = ("stage", "init", "iterations", "trainable_params", "total_params", "backbone_params",
                   "adapter_params", "head_params", "relabelled_pixels", "update_classes")


def _print(line: str) -> None:
    print(line, flush=True)


def evaluation_record(result: dict, model_path) -> dict:
    """The metrics JSON of an evaluation (results/<chain>/eval/<run>.json): ``result`` of
    ``evaluate`` with the checkpoint's path and the meta of :data:`CHECKPOINT_META` it has."""
    from .preflight import checkpoint_meta

    meta = checkpoint_meta(model_path)
    return {**result, "checkpoint": {"path": str(model_path), **{k: meta[k] for k in CHECKPOINT_META if k in meta}}}


@torch.no_grad()
def evaluate(model, manifest, split: str, num_classes: int, resize=None, batch_size: int = 4,
             num_workers: int = 0, device="cpu", log=_print, log_every: int = 100) -> dict:
    ds = SegmentationDataset(manifest, split, num_classes, resize=resize, resize_label=False)
    loader = inference_loader(ds, batch_size, num_workers, device)
    model.eval().to(device)
    cm = ConfusionMatrix(num_classes, device=device)
    meter = image_meter(len(ds), batch_size, log_every)
    done = 0
    for batch in loader:
        labels = batch["label"].to(device)
        logits = model(batch["image"].to(device))["out"]
        pred = upsample(logits, labels.shape[-2:]).argmax(1)
        cm.update(pred, labels)
        done += len(labels)
        if meter.due(done):
            log(meter.line(done, f"evaluate {split}"))
    result = summarize(cm.matrix.cpu(), num_classes)
    result["images"] = len(ds)
    return result

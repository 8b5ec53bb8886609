"""The class distribution of the warm-up model's predictions on target train: CPSL's class prior
for Sinkhorn (docs/methods/cpsl.md, Class distribution; the official ``generate_class_distribution.py``).

The official script runs the warm-up model in eval mode over the Cityscapes train images and
counts, per class, the pixels where the class is the argmax of the logits at the network's
output resolution (no upsampling); the distribution is the counts over their sum. The soft
pseudo-label store (``rules/pseudo.smk``, ``soft_labels``) holds exactly that model's softmax at
that resolution, so the counts are read from it instead of running the model again (argmax of
the softmax = argmax of the logits; a float16 store can only differ where the top two
probabilities are closer than float16 resolution; a top-k store keeps the top-1 class).

The artifact is JSON: ``{"num_classes", "classes", "counts", "distribution", "source"}``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..atomic import write_json
from ..data.classes import class_names
from ..progress import image_meter
from .soft_store import SoftStore


def _print(line: str) -> None:
    print(line, flush=True)


def argmax_counts(store: SoftStore, log=_print, log_every: int = 500) -> torch.Tensor:
    """Pixels per class of the argmax of every image of a soft store, int64 (C,). Progress goes
    to ``log`` every ``log_every`` images, at least every 30 s and at the end."""
    c = store.num_classes
    counts = torch.zeros(c, dtype=torch.int64)
    meter = image_meter(len(store), 1, log_every)
    for i in range(len(store)):  # one image at a time: the store is read image by image
        counts += torch.bincount(store[i].argmax(dim=0).flatten(), minlength=c)
        if meter.due(i + 1):
            log(meter.line(i + 1, "class distribution"))
    return counts


def write_class_distribution(path, counts: torch.Tensor, source: str = "") -> dict:
    counts = [int(v) for v in counts.tolist()]
    total = sum(counts)
    if total <= 0:
        raise ValueError(f"{path}: no pixels to count")
    obj = {"num_classes": len(counts), "classes": list(class_names(len(counts))), "counts": counts,
           "distribution": [v / total for v in counts], "source": str(source)}
    write_json(path, obj)
    return obj


def read_class_distribution(path, num_classes: int | None = None) -> torch.Tensor:
    """The distribution (C,) float64 of a class-distribution JSON, checked: one-line
    ``ValueError``s naming the file (missing, unreadable, wrong class count, negative or
    non-finite entries, not summing to 1)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: class distribution file not found")
    try:
        obj = json.loads(path.read_text())
        dist = [float(v) for v in obj["distribution"]]
    except (ValueError, KeyError, TypeError) as exc:
        what = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise ValueError(f"{path}: not a class distribution file ({what})") from None
    if num_classes is not None and len(dist) != num_classes:
        raise ValueError(f"{path}: class distribution has {len(dist)} classes, the chain has {num_classes}")
    if not all(math.isfinite(v) and v >= 0 for v in dist):
        raise ValueError(f"{path}: class distribution has negative or non-finite entries")
    if abs(sum(dist) - 1.0) > 1e-6:
        raise ValueError(f"{path}: class distribution sums to {sum(dist):.6g}, not 1")
    return torch.tensor(dist, dtype=torch.float64)


__all__ = ["argmax_counts", "write_class_distribution", "read_class_distribution"]

"""Segmentation metrics: one confusion matrix over a whole split, IoU and mIoU from it.

Protocol (docs/protocol.md, Evaluation): pixels with ``0 <= gt < C`` are counted (255 and
any other id outside the class range are skipped); IoU_c = TP / (TP + FP + FN); mIoU is the
mean over the classes whose IoU is defined (NaN-mean: a class absent from both the ground
truth and the prediction does not count). SYNTHIA chains (16 classes) also report mIoU13,
the mean of the same 16 IoUs without wall, fence and pole.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from segcore.data.classes import CLASSES13_IN_16, class_names

__all__ = ["confusion_matrix", "ConfusionMatrix", "iou_per_class", "summarize"]


def confusion_matrix(pred, label, num_classes: int) -> torch.Tensor:
    """int64 ``[C, C]`` matrix, rows = ground truth, columns = prediction.

    ``pred`` and ``label`` are integer tensors of the same shape (any shape, CPU or CUDA).
    Pixels whose label lies outside ``[0, C)`` are skipped. A prediction outside
    ``[0, C)`` on a counted pixel is an error (it would corrupt the matrix).
    """
    if pred.shape != label.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != label shape {tuple(label.shape)}")
    if pred.is_floating_point() or label.is_floating_point():
        raise TypeError("pred and label must be integer tensors (class ids)")
    c = int(num_classes)
    if pred.device.type == "cpu" and label.device.type == "cpu":
        counts = _confusion_cpu(pred.detach().numpy(), label.detach().numpy(), c)
        if counts is not None:
            return torch.from_numpy(counts)
    label = label.reshape(-1).to(torch.int64)
    pred = pred.reshape(-1).to(device=label.device, dtype=torch.int64)
    # unlabelled pixels go to an extra bin that is dropped: no boolean gather (4x faster on CPU)
    valid = (label >= 0) & (label < c)
    if bool((valid & ((pred < 0) | (pred >= c))).any()):
        raise ValueError(f"prediction ids must lie in [0, {c}) on labelled pixels")
    index = torch.where(valid, label * c + pred, c * c)
    counts = torch.bincount(index, minlength=c * c + 1)[: c * c]
    return counts.reshape(c, c)


def _confusion_cpu(pred: np.ndarray, label: np.ndarray, c: int):
    """The CPU fast path of ``confusion_matrix``, or None where its preconditions fail.

    When every prediction lies in ``[0, C)`` and no label is negative, ``label * C + pred``
    is computed in uint16 (a label >= C lands at or above ``C * C``, so ignored pixels need no
    mask) and counted by ``np.bincount``: a quarter of the bytes of the int64 torch path and
    no mask or gather. Counts are exact, so the matrix is identical to the general path's.
    """
    if pred.size == 0 or c * c > 65536:
        return None
    if (pred.dtype.kind not in "ub" and int(pred.min()) < 0) or int(pred.max()) >= c:
        return None  # the general path decides (an error only on labelled pixels)
    if label.dtype.kind not in "ub" and int(label.min()) < 0:
        return None
    if (int(label.max()) + 1) * c > 65536:
        return None
    index = label.astype(np.uint16).reshape(-1)
    np.multiply(index, c, out=index, casting="unsafe")
    np.add(index, pred.reshape(-1), out=index, casting="unsafe")  # 0 <= pred < C: no wrap-around
    return np.bincount(index, minlength=c * c)[: c * c].reshape(c, c).astype(np.int64, copy=False)


class ConfusionMatrix:
    """Accumulates a confusion matrix over batches (on the device of the first update)."""

    def __init__(self, num_classes: int, device=None):
        self.num_classes = int(num_classes)
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)

    def update(self, pred, label) -> None:
        cm = confusion_matrix(pred, label, self.num_classes)
        if self.matrix.device != cm.device:
            self.matrix = self.matrix.to(cm.device)
        self.matrix += cm

    def reset(self) -> None:
        self.matrix.zero_()

    def all_reduce(self) -> None:
        """Sum the matrices of all DDP ranks in place (no-op outside torch.distributed)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def summary(self) -> dict:
        return summarize(self.matrix, self.num_classes)


def _as_numpy(cm) -> np.ndarray:
    if isinstance(cm, torch.Tensor):
        cm = cm.detach().cpu().numpy()
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    return cm.astype(np.float64)


def iou_per_class(cm) -> np.ndarray:
    """float64 IoU per class (fraction, not percent); NaN where TP + FP + FN == 0."""
    cm = _as_numpy(cm)
    tp = np.diag(cm)
    denom = cm.sum(axis=0) + cm.sum(axis=1) - tp
    iou = np.full(tp.shape, np.nan)
    np.divide(tp, denom, out=iou, where=denom > 0)
    return iou


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def _jsonable(x: float):
    return None if x is None or math.isnan(x) else float(x)


def summarize(cm, num_classes: int) -> dict:
    """JSON-serialisable summary of a chain's matrix; every score in percent, full precision.

    Keys: ``num_classes``, ``classes``, ``iou`` ({name: percent or None}), ``mIoU19`` (19
    classes) or ``mIoU16`` and ``mIoU13`` (16 classes), ``pixel_accuracy``, ``pixels``.
    Undefined values (a class never seen nor predicted, an empty matrix) are None.
    """
    names = class_names(num_classes)
    arr = _as_numpy(cm)
    if arr.shape != (len(names), len(names)):
        raise ValueError(f"confusion matrix shape {arr.shape} does not match {num_classes} classes")
    iou = iou_per_class(arr) * 100.0
    total = float(arr.sum())
    out = {
        "num_classes": len(names),
        "classes": list(names),
        "iou": {n: _jsonable(v) for n, v in zip(names, iou)},
        f"mIoU{len(names)}": _jsonable(_nanmean(iou)),
    }
    if len(names) == 16:
        out["mIoU13"] = _jsonable(_nanmean(iou[list(CLASSES13_IN_16)]))
    out["pixel_accuracy"] = _jsonable(float(np.trace(arr)) / total * 100.0 if total > 0 else math.nan)
    out["pixels"] = int(round(total))
    return out

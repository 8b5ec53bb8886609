"""The base stage's pixel pseudo-labels: its confident pixels (SeCo's step 0).

The paper keeps "the top 50% confidence-ranked pixels" of each baseline. We rank within each
class over the whole target set (``scope="class"``, CBST's rule): a global ranking would keep
almost only the easy, large classes (road, sky, building), whose confidences are high
everywhere, and drop most pixels of the rare thing classes that SeCo's region prompts need.
``scope="global"`` ranks all pixels together.

The thresholds are exact quantiles on the float16 confidence: one histogram over the 65,536
float16 bit patterns per class (two passes over the store; memory independent of the set's
size). A pixel is kept when its confidence is at least its class's threshold, the smallest
value whose upper tail holds ``fraction`` of the class's pixels (ties at the threshold are kept).
"""
from __future__ import annotations

import numpy as np

from ..pseudo.store_base import IGNORE

SCOPES = ("class", "global")
_BINS = 65536


def _bits(conf) -> np.ndarray:
    """float16 bit patterns of non-negative confidences, ordered like the values."""
    c = np.clip(np.asarray(conf, dtype=np.float32), 0.0, 1.0).astype(np.float16)
    return c.view(np.uint16)


def class_histograms(pairs, num_classes: int) -> np.ndarray:
    """[num_classes, 65536] counts of the float16 confidence per predicted class over ``pairs``
    (an iterable of (label [H, W], conf [H, W]); 255 ignored)."""
    hist = np.zeros((num_classes, _BINS), dtype=np.int64)
    for label, conf in pairs:
        label = np.asarray(label).reshape(-1)
        bits = _bits(conf).reshape(-1).astype(np.int64)
        ok = label != IGNORE
        if ((label[ok] < 0) | (label[ok] >= num_classes)).any():
            raise ValueError(f"labels outside 0..{num_classes - 1} and {IGNORE}")
        flat = label[ok].astype(np.int64) * _BINS + bits[ok]
        hist += np.bincount(flat, minlength=num_classes * _BINS).reshape(num_classes, _BINS)
    return hist


def thresholds(hist: np.ndarray, fraction: float, scope: str = "class") -> np.ndarray:
    """The float16 bit pattern each class keeps from (-1: no pixel of the class, keep none)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"confident fraction must be in (0, 1], got {fraction}")
    if scope not in SCOPES:
        raise ValueError(f"unknown confident-pixel scope {scope!r} (choose from {', '.join(SCOPES)})")
    rows = hist if scope == "class" else hist.sum(axis=0, keepdims=True)
    tail = np.cumsum(rows[:, ::-1], axis=1)[:, ::-1]          # tail[c, b] = #pixels with bits >= b
    want = np.ceil(fraction * rows.sum(axis=1)).astype(np.int64)
    out = np.full(len(rows), -1, dtype=np.int64)
    for c in range(len(rows)):
        if want[c] > 0:
            out[c] = int(np.flatnonzero(tail[c] >= want[c]).max())  # largest b whose tail reaches the share
    return out if scope == "class" else np.repeat(out, hist.shape[0])


def confident_label(label, conf, keep_from: np.ndarray) -> np.ndarray:
    """``label`` (uint8) with 255 where the confidence is below its class's threshold."""
    label = np.asarray(label).astype(np.int64)
    bits = _bits(conf).astype(np.int64)
    ok = label != IGNORE
    lim = np.where(ok, keep_from[np.where(ok, label, 0)], 0)
    keep = ok & (lim >= 0) & (bits >= lim)
    return np.where(keep, label, IGNORE).astype(np.uint8)


def check_rankable(store) -> None:
    """A hard store whose confidence can be ranked (not the two-level ``thresholds`` code)."""
    if getattr(store, "conf_encoding", None) == "thresholds":
        raise ValueError(f"{store.path}: its confidence is stored only as its side of "
                         f"{', '.join(f'{t:g}' for t in store._edges)}; SeCo ranks confidences: "
                         "write the base's hard labels with the float16 confidence")


def confident_pixels(store, fraction: float = 0.5, scope: str = "class"):
    """Per image of a ``HardStore``: the confident label (uint8 [H, W], 255 elsewhere).
    Returns ``(labels, keep_from)``; ``labels`` is a generator over the images."""
    check_rankable(store)
    num_classes = store.num_classes
    hist = class_histograms(((store.get(i)[0].numpy(), store.get(i)[1].numpy()) for i in range(len(store))),
                            num_classes)
    keep_from = thresholds(hist, fraction, scope)

    def labels():
        for i in range(len(store)):
            lab, conf = store.get(i)
            yield confident_label(lab.numpy(), conf.numpy(), keep_from)

    return labels(), keep_from

"""Pseudo-label quality against ground truth: per class, precision and coverage.

For a label set L and the ground truth G (255 = unlabelled in either), per class c:

* precision_c = #{L = c and G = c} / #{L = c, G labelled}: how often a label c is right;
* coverage_c  = #{L labelled and G = c} / #{G = c}: the share of the class's pixels that carry
  any label;

and over all classes the pixel precision and coverage. The method never reads the ground truth;
only this measurement does.
"""
from __future__ import annotations

import numpy as np

from ..data.classes import class_names
from ..pseudo.store_base import IGNORE


def counts(pairs, num_classes: int) -> np.ndarray:
    """[num_classes + 1, num_classes + 1] matrix: rows the ground truth (last = ignore), columns
    the label (last = ignore), over ``pairs`` of (label, gt) arrays."""
    k = num_classes + 1
    m = np.zeros((k, k), dtype=np.int64)
    for label, gt in pairs:
        lab = np.asarray(label).reshape(-1).astype(np.int64)
        g = np.asarray(gt).reshape(-1).astype(np.int64)
        if lab.shape != g.shape:
            raise ValueError(f"label of {lab.size} pixels against ground truth of {g.size}")
        lab = np.where(lab == IGNORE, num_classes, lab)
        g = np.where(g == IGNORE, num_classes, g)
        m += np.bincount(g * k + lab, minlength=k * k).reshape(k, k)
    return m


def quality(m: np.ndarray) -> dict:
    """Per-class precision / coverage (NaN where undefined) and the overall ones, from ``counts``."""
    c = m.shape[0] - 1
    inner = m[:c, :c]
    tp = np.diag(inner).astype(np.float64)
    labelled_as = inner.sum(axis=0)
    gt = m[:c, :].sum(axis=1)
    covered = inner.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(labelled_as > 0, tp / labelled_as, np.nan)
        coverage = np.where(gt > 0, covered / gt, np.nan)
    return {"precision": precision, "coverage": coverage,
            "pixel_precision": float(tp.sum() / max(labelled_as.sum(), 1)),
            "pixel_coverage": float(covered.sum() / max(gt.sum(), 1)),
            "mean_precision": float(np.nanmean(precision)) if np.isfinite(precision).any() else float("nan")}


def table_rows(results: dict, num_classes: int) -> list[dict]:
    """One row per label set (name -> ``quality`` result): overall numbers, then per class
    ``precision_<class>`` and ``coverage_<class>`` in percent."""
    names = class_names(num_classes)
    rows = []
    for name, q in results.items():
        row = {"labels": name, "pixel_precision": 100 * q["pixel_precision"],
               "pixel_coverage": 100 * q["pixel_coverage"], "mean_precision": 100 * q["mean_precision"]}
        row |= {f"precision_{n}": 100 * float(v) for n, v in zip(names, q["precision"])}
        row |= {f"coverage_{n}": 100 * float(v) for n, v in zip(names, q["coverage"])}
        rows.append(row)
    return rows


def markdown(rows: list[dict], title: str = "") -> str:
    """A short markdown table (overall columns) of ``table_rows``."""
    head = ["labels", "pixel_precision", "pixel_coverage", "mean_precision"]
    lines = ([f"## {title}", ""] if title else []) + ["| " + " | ".join(head) + " |",
                                                       "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["labels"]] + [f"{r[h]:.1f}" for h in head[1:]]) + " |")
    return "\n".join(lines) + "\n"

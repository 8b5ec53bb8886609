"""Pseudo-label quality plot of one quality table (``results/{chain}/seco/quality.csv``, the
seco_quality rule): one panel per label set, each class a point at (coverage, precision)
against the target-train ground truth, in its Cityscapes colour."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd

from segcore.data.classes import CLASSES19, TRAINID_COLORS

from .style import chain_title, save, short
from .tables import read_csv


def read_quality(path) -> tuple[pd.DataFrame, list[str]]:
    """The table and its classes (from its ``precision_<class>`` columns); one-line errors."""
    df = read_csv(path, "quality table")
    classes = [c.removeprefix("precision_") for c in df.columns if c.startswith("precision_")]
    missing = [c for c in ("labels", "pixel_precision", "pixel_coverage") if c not in df.columns]
    missing += [f"coverage_{c}" for c in classes if f"coverage_{c}" not in df.columns]
    if missing or not classes:
        raise ValueError(f"{path}: quality table lacks column(s) {', '.join(missing) or 'precision_<class>'}")
    unknown = [c for c in classes if c not in CLASSES19]
    if unknown:
        raise ValueError(f"{path}: quality table has unknown class(es) {', '.join(unknown)}")
    if df.empty:
        raise ValueError(f"{path}: quality table has no rows")
    return df, classes


def plot_quality(df: pd.DataFrame, classes: list[str], chain: str, out) -> None:
    ncols = min(3, len(df))
    nrows = math.ceil(len(df) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols, 3.6 * nrows), sharex=True, sharey=True,
                             squeeze=False)
    for ax, (_, row) in zip(axes.flat, df.iterrows()):
        for c in classes:
            cov, prec = row[f"coverage_{c}"], row[f"precision_{c}"]
            if math.isnan(cov) or math.isnan(prec):
                continue
            colour = [v / 255 for v in TRAINID_COLORS[CLASSES19.index(c)]]
            ax.scatter(cov, prec, s=28, color=colour, edgecolors="black", linewidths=0.4, zorder=3)
            ax.annotate(short(c), (cov, prec), xytext=(3, 2), textcoords="offset points", fontsize=6.5)
        ax.plot(row["pixel_coverage"], row["pixel_precision"], "k*", ms=10, zorder=4)
        ax.set_title(f"{row['labels']}\nall pixels: {row['pixel_precision']:.1f}% precise, "
                     f"{row['pixel_coverage']:.1f}% covered", fontsize=8)
        ax.set_xlim(-3, 105)
        ax.set_ylim(-3, 105)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(df):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("coverage (% of the class's pixels labelled)")
    for ax in axes[:, 0]:
        ax.set_ylabel("precision (% of labels correct)")
    fig.suptitle(f"{chain_title(chain)}: pseudo-label quality on target train (★: all pixels; "
                 "classes without labelled pixels left out)")
    fig.tight_layout()
    save(fig, out)

"""Per-class IoU heatmap of one chain: rows are the runs of the results table, columns the
chain's classes (short names), each cell its IoU."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from segcore.data.classes import class_names
from segcore.tables import CHAIN_NUM_CLASSES

from .style import chain_title, save, short
from .tables import run_label


def plot_heatmap(results: pd.DataFrame, chain: str, out) -> None:
    rows = results[results["chain"] == chain]
    if rows.empty:
        raise ValueError(f"results table has no rows of chain {chain!r}")
    n = CHAIN_NUM_CLASSES.get(chain) or (16 if rows["mIoU13"].notna().any() else 19)
    names = class_names(n)
    values = rows[[f"iou_{c}" for c in names]].to_numpy(dtype=float)
    labels = [f"{run_label(m, s)}  ({v:.1f})" for m, s, v in zip(rows["method"], rows["stage"], rows["mIoU"])]
    fig, ax = plt.subplots(figsize=(0.42 * len(names) + 2.6, 0.3 * len(rows) + 1.4))
    im = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(names)), [short(c) for c in names], rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), labels)
    for (i, j), v in np.ndenumerate(values):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6.5, color="white" if v < 60 else "black")
    ax.spines[:].set_visible(False)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label="IoU (%)")
    ax.set_title(f"{chain_title(chain)}: IoU per class (row label: {rows['metric'].iloc[0]})")
    fig.tight_layout()
    save(fig, out)

"""Stage-progression plot of one chain: per method, our mIoU by stage (line; over several
seeds the mean with the std as an error bar) with the paper's number of each stage as a
hollow marker; source-only, the warm-up and the oracle as reference
lines across every panel."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd

from .style import chain_title, save

#: rows drawn as horizontal reference lines, not as a method's panel
REFERENCES = {("source_only", "source_only"): ("source-only", "#888888", ":"),
              ("proda", "warmup"): ("warm-up", "#d08000", "--"),
              ("oracle", "oracle"): ("oracle", "#2a9d2a", "-.")}


def plot_progression(results: pd.DataFrame, chain: str, out) -> None:
    rows = results[results["chain"] == chain]
    if rows.empty:
        raise ValueError(f"results table has no rows of chain {chain!r}")
    metric = rows["metric"].iloc[0]
    with13 = rows["mIoU13"].notna().any()
    refs = {k: rows[(rows["method"] == k[0]) & (rows["stage"] == k[1])] for k in REFERENCES}
    panels = [(m, part) for m, part in rows.groupby("method", sort=False)
              if not all((m, s) in REFERENCES for s in part["stage"])]
    ncols = min(3, max(1, len(panels)))
    nrows = math.ceil(len(panels) / ncols) if panels else 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), sharey=True, squeeze=False)
    values = rows[["mIoU", "published", "mIoU13", "published_mIoU13"]].to_numpy(dtype=float)
    top = min(100.0, 10.0 * math.ceil((max(values[~pd.isna(values)].max(initial=0.0), 1.0) + 5) / 10))
    for ax, (method, part) in zip(axes.flat, panels):
        part = part[[(method, s) not in REFERENCES for s in part["stage"]]]
        x = list(range(len(part)))
        # a line per sequence of stages: "swin/source" and "mit/source" start two sequences
        seq = [str(s).split("/")[0] if "/" in str(s) else "" for s in part["stage"]]
        for i, (col, colour, lw, ms, name) in enumerate(
                [("mIoU", "#1f5fa8", 1.5, 6, f"ours ({metric})")]
                + ([("mIoU13", "#7fa8d8", 1, 4, "ours (mIoU13)")] if with13 else [])):
            for k, key in enumerate(dict.fromkeys(seq)):
                xs = [j for j in x if seq[j] == key]
                ax.plot(xs, part[col].iloc[xs], "o-", color=colour, lw=lw, ms=ms,
                        label=name if k == 0 else None)
                std = part[f"{col}_std"].iloc[xs] if f"{col}_std" in part else None
                if std is not None and std.notna().any():  # several seeds: the std as an error bar
                    ax.errorbar(xs, part[col].iloc[xs], yerr=std.fillna(0.0).to_numpy(),
                                fmt="none", ecolor=colour, elinewidth=1, capsize=3)
            paper = "published" if col == "mIoU" else "published_mIoU13"
            ax.plot(x, part[paper], "D", mfc="none", mec=colour, ms=ms + 1,
                    label="paper" if i == 0 else "paper (mIoU13)")
        for (key, (name, colour, style)) in REFERENCES.items():
            ref = refs[key]
            if not ref.empty and not math.isnan(ref["mIoU"].iloc[0]):
                ax.axhline(ref["mIoU"].iloc[0], color=colour, ls=style, lw=1, label=name)
        ax.set_xticks(list(x), [str(s) for s in part["stage"]], rotation=30, ha="right")
        ax.set_title(method)
        ax.set_ylim(0, top)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    axes[0, 0].set_ylabel(f"{metric} (%)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.suptitle(f"{chain_title(chain)}: {metric} by stage (last checkpoint)", y=1.05)
    fig.tight_layout()
    save(fig, out)

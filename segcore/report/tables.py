"""The readable tables of the report, derived from the results table (``results.csv``, written
by :mod:`segcore.tables`): a summary (one row per chain, method and stage: our mIoU, the
paper's, the difference, the checkpoint kind) and the per-class IoUs with short class names.
Each as csv (one file for both chains), markdown and HTML (one section per chain)."""
from __future__ import annotations

import html
import math

import pandas as pd

from segcore.atomic import atomic_path, write_text
from segcore.data.classes import CLASSES19, class_names
from segcore.tables import CHAIN_NUM_CLASSES

from .style import chain_title, short

__all__ = ["read_results", "summary_table", "per_class_table", "write_table", "write_frame", "run_label"]

NEEDED = ["chain", "method", "stage", "metric", "mIoU", "mIoU13", "published", "published_mIoU13",
          *(f"iou_{c}" for c in CLASSES19)]


def read_csv(path, what: str) -> pd.DataFrame:
    """A csv input of a report rule (``what``: "results table", "quality table"); a one-line
    error naming the file when it is missing or unreadable."""
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found") from None
    except Exception as exc:  # noqa: BLE001 - any parse error is bad input
        raise ValueError(f"{path}: cannot read {what} ({str(exc).splitlines()[0]})") from None


def read_results(path) -> pd.DataFrame:
    """``results.csv`` as written by the results_table rule; a one-line error naming the file
    when it is missing, unreadable or lacks a column."""
    df = read_csv(path, "results table")
    missing = [c for c in NEEDED if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: results table lacks column(s) {', '.join(missing)}")
    if df.empty:
        raise ValueError(f"{path}: results table has no rows")
    return df


def run_label(method: str, stage: str) -> str:
    """One short name of a row: ``proda stage1``, ``source_only`` (method and stage alike)."""
    return method if method == stage else f"{method} {stage}"


def _count(n) -> int:
    return 1 if n is None or (isinstance(n, float) and math.isnan(n)) else int(n)


def _diff(ours, paper) -> float:
    return ours - paper if not (math.isnan(ours) or math.isnan(paper)) else math.nan


def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    """chain, method, stage, metric, mIoU, paper, diff, mIoU13, paper_mIoU13, diff_mIoU13,
    checkpoint ("last": the primary number; then a "best-on-val" row where the results table
    has one, selected on the evaluation split), and over several seeds the mean (mIoU, mIoU13),
    std (mIoU_std, mIoU13_std; the last checkpoint's only) and count (seeds)."""
    rows = []
    for r in results.itertuples(index=False):
        rows.append({
            "chain": r.chain, "method": r.method, "stage": r.stage, "metric": r.metric,
            "mIoU": r.mIoU, "paper": r.published, "diff": _diff(r.mIoU, r.published),
            "mIoU13": r.mIoU13, "paper_mIoU13": r.published_mIoU13, "diff_mIoU13": _diff(r.mIoU13, r.published_mIoU13),
            "checkpoint": "last",
            "mIoU_std": getattr(r, "mIoU_std", math.nan), "mIoU13_std": getattr(r, "mIoU13_std", math.nan),
            "seeds": _count(getattr(r, "seeds", 1)),
        })
        best = getattr(r, "best_on_val_mIoU", math.nan)
        if isinstance(best, float) and not math.isnan(best):
            rows.append({**rows[-1], "mIoU": best, "diff": _diff(best, r.published),
                         "mIoU13": r.best_on_val_mIoU13, "diff_mIoU13": _diff(r.best_on_val_mIoU13, r.published_mIoU13),
                         "checkpoint": "best-on-val", "mIoU_std": math.nan, "mIoU13_std": math.nan})
    return pd.DataFrame(rows)


def per_class_table(results: pd.DataFrame) -> pd.DataFrame:
    """chain, method, stage, then one column per class (short names; empty where the chain
    does not evaluate the class)."""
    out = results[["chain", "method", "stage"]].copy()
    for c in CLASSES19:
        out[short(c)] = results[f"iou_{c}"]
    return out


def _fmt_mean_std(mean, std) -> str:
    """"24.4 ± 1.2" over several seeds, "24.4" for one."""
    return _fmt(mean) + (f" ± {std:.1f}" if _fmt(mean) and not math.isnan(std) else "")


def _fmt(v, signed=False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:+.1f}" if signed else f"{v:.1f}"
    return str(v)


def _chain_sections(df: pd.DataFrame, kind: str):
    """(title, header, rows) per chain, only the columns that chain fills."""
    for chain, part in df.groupby("chain", sort=False):
        labels = [run_label(m, s) for m, s in zip(part["method"], part["stage"])]
        if kind == "summary":
            metric = part["metric"].iloc[0]
            cols = [("mIoU", metric, False), ("paper", "paper", False), ("diff", "Δ", True)]
            if part["mIoU13"].notna().any():
                cols += [("mIoU13", "mIoU13", False), ("paper_mIoU13", "paper13", False), ("diff_mIoU13", "Δ13", True)]
            seeds = "seeds" in part and (part["seeds"] > 1).any()
            header = ["run", *(h for _, h, _ in cols), "ckpt", *(["n"] if seeds else [])]
            rows = [[lab, *(_fmt_mean_std(v[c], v[f"{c}_std"]) if seeds and c in ("mIoU", "mIoU13") else _fmt(v[c], s)
                            for c, _, s in cols), v["checkpoint"], *([str(v["seeds"])] if seeds else [])]
                    for lab, (_, v) in zip(labels, part.iterrows())]
            spread = "; ours: mean ± std over n seeds" if seeds else ""
            title = f"{chain_title(chain)} ({metric}; Δ = ours − paper{spread})"
        else:
            n = CHAIN_NUM_CLASSES.get(chain)
            names = [short(c) for c in (class_names(n) if n else CLASSES19)]
            header = ["run", *names]
            rows = [[lab, *(_fmt(v[c]) for c in names)] for lab, (_, v) in zip(labels, part.iterrows())]
            title = f"{chain_title(chain)}: IoU per class"
        yield chain, title, header, rows


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == ""
    return True


def _markdown(sections) -> str:
    out = []
    for _, title, header, rows in sections:
        numeric = [all(_is_number(r[i]) for r in rows) for i in range(len(header))]
        out += [f"## {title}", "", "| " + " | ".join(header) + " |",
                "|" + "|".join("---:" if num and i else ":---" for i, num in enumerate(numeric)) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        out.append("")
    return "\n".join(out)


_CSS = ("body{font-family:sans-serif;font-size:13px;margin:8px}table{border-collapse:collapse;margin-bottom:16px}"
        "th,td{padding:2px 6px;border-bottom:1px solid #ddd;text-align:right}th:first-child,td:first-child"
        "{text-align:left}th{background:#f3f3f3}")


def _html(sections, heading: str) -> str:
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(heading)}</title>",
           f"<style>{_CSS}</style></head><body>"]
    for _, title, header, rows in sections:
        out.append(f"<h3>{html.escape(title)}</h3><table><thead><tr>")
        out += [f"<th>{html.escape(h)}</th>" for h in header]
        out.append("</tr></thead><tbody>")
        for r in rows:
            out.append("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>")
        out.append("</tbody></table>")
    out.append("</body></html>\n")
    return "".join(out)


def write_table(df: pd.DataFrame, kind: str, out_csv, out_md, out_html) -> None:
    """``kind``: "summary" or "per_class"; csv at full precision, markdown and HTML at one
    decimal, one section per chain."""
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    sections = list(_chain_sections(df, kind))
    write_text(out_md, _markdown(sections))
    write_text(out_html, _html(sections, "Summary" if kind == "summary" else "IoU per class"))


def write_frame(df: pd.DataFrame, title: str, out_csv, out_md=None, out_html=None) -> None:
    """Any table as csv (full precision) and, when asked, markdown and HTML (one decimal)."""
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    rows = [[_fmt(v) for v in r] for r in df.itertuples(index=False)]
    sections = [(None, title, [str(c) for c in df.columns], rows)]
    if out_md is not None:
        write_text(out_md, _markdown(sections))
    if out_html is not None:
        write_text(out_html, _html(sections, title))

"""The results table: our numbers per (chain, method, stage) next to the published ones.

Each entry points at a metrics JSON written by :func:`segcore.metrics.summarize` (the
last checkpoint: our primary number) and optionally at a second one for the checkpoint
selected on the evaluation set (``metrics_best``: what the papers report, labelled as
such). Published numbers come from a CSV such as ``configs/published_results.csv``.
The row order of methods and stages comes from the declarations in :mod:`segcore.stages`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from segcore.atomic import atomic_path, write_text
from segcore.data.classes import CLASSES19
from segcore.stages import BASELINE_METHODS, METHOD_ORDER, STAGE_ORDER

__all__ = [
    "CHAIN_ORDER",
    "METHOD_ORDER",
    "STAGE_ORDER",
    "BASELINE_METHODS",
    "CHAIN_NUM_CLASSES",
    "COLUMNS",
    "RELEASED_SUFFIX",
    "load_published",
    "results_table",
    "write_tables",
]

# Row order of the table: chains as listed here, methods and stages in the order of their
# declarations (segcore.stages, where "oracle" stays last); method names not declared sort after
# the declared ones but before "oracle", alphabetically, and stage names not declared after the
# declared ones in entry order. BASELINE_METHODS (declared without published numbers) get no
# paper number.
CHAIN_ORDER = ["gta5_to_cityscapes", "synthia_to_cityscapes", "gta5_synthia_to_cityscapes"]
#: class count each known chain is evaluated with (a metrics file must agree)
CHAIN_NUM_CLASSES = {"gta5_to_cityscapes": 19, "synthia_to_cityscapes": 16, "gta5_synthia_to_cityscapes": 19}

IOU_COLUMNS = [f"iou_{c}" for c in CLASSES19]
COLUMNS = [
    "chain",
    "method",
    "stage",
    "metric",
    "mIoU",
    "mIoU13",
    "mIoU_std",
    "mIoU13_std",
    "seeds",
    "best_on_val_mIoU",
    "best_on_val_mIoU13",
    "published",
    "published_mIoU13",
    "published_source",
    *IOU_COLUMNS,
    "note",
]
_PUBLISHED_COLUMNS = ["method", "stage", "chain", "metric", "value", "source"]
#: the stage label of a released checkpoint's row: "stage3 (released)"
RELEASED_SUFFIX = " (released)"


def load_published(csv_path) -> pd.DataFrame:
    """The published-results CSV (method, stage, chain, metric, value, source, iou_*)."""
    df = pd.read_csv(csv_path)
    missing = [c for c in _PUBLISHED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing columns {missing}")
    return df


def _num(x) -> float:
    return math.nan if x is None else float(x)


def _load_metrics(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    with open(path) as f:
        m = json.load(f)
    n = m.get("num_classes")
    key = f"mIoU{n}"
    if n not in (16, 19) or key not in m or "iou" not in m:
        raise ValueError(f"{path}: not a metrics file written by segcore.metrics.summarize")
    return m


def _seed_metrics(paths) -> list[dict]:
    """The metrics of one row, one file per seed, all with the same class count."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise ValueError("a table entry without a metrics file")
    if len(set(map(str, paths))) != len(paths):
        raise ValueError(f"{paths[0]}: the same metrics file twice in one row")
    ms = [_load_metrics(p) for p in paths]
    for p, m in zip(paths[1:], ms[1:]):
        if m["num_classes"] != ms[0]["num_classes"]:
            raise ValueError(f"{p}: {m['num_classes']} classes, the row's first seed {ms[0]['num_classes']}")
    return ms


def _mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for one value) of the defined values."""
    v = [x for x in map(_num, values) if not math.isnan(x)]
    if not v:
        return math.nan, math.nan
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else math.nan
    return mean, std


def _lookup(published: pd.DataFrame | None, method, stage, chain, metric):
    """(value, source) of the preferred published row, or (nan, None)."""
    if published is None:
        return math.nan, None
    rows = published[
        (published["method"] == method)
        & (published["stage"] == stage)
        & (published["chain"] == chain)
        & (published["metric"] == metric)
    ]
    if rows.empty:
        return math.nan, None
    readme = rows[rows["source"].astype(str).str.contains("README")]
    row = (readme if not readme.empty else rows).iloc[0]
    return float(row["value"]), str(row["source"])


def _rank(value, order) -> tuple:
    if value in order:
        return (order.index(value), "")
    # unknown names: after the known ones, but before "oracle" when the order ends with it
    before = order.index("oracle") if "oracle" in order else len(order)
    return (before - 0.5, str(value))


def results_table(entries: list[dict], published_csv=None) -> pd.DataFrame:
    """One row per (chain, method, stage), columns :data:`COLUMNS`, in table order.

    ``entries``: dicts with ``chain``, ``method``, ``stage``, ``metrics`` (path of a
    summarize() JSON, or a list of them: one per seed, averaged, with the sample std and the
    count in ``*_std`` and ``seeds``), optional ``metrics_best`` (same, one per seed, for the checkpoint selected on the
    evaluation set), optional ``note`` and optional ``released`` (true: the row of a released
    checkpoint, shown as ``<stage> (released)`` right after our row of that stage, with the
    same published number). Scores are in percent; NaN where undefined.
    """
    published = load_published(published_csv) if published_csv is not None else None
    rows, seen = [], set()
    for e in entries:
        chain, method, base_stage = str(e["chain"]), str(e["method"]), str(e["stage"])
        stage = f"{base_stage}{RELEASED_SUFFIX}" if e.get("released") else base_stage
        if (chain, method, stage) in seen:
            raise ValueError(f"duplicate table entry {(chain, method, stage)}")
        seen.add((chain, method, stage))
        seeds = _seed_metrics(e["metrics"])
        m = seeds[0]
        n = m["num_classes"]
        expected = CHAIN_NUM_CLASSES.get(chain)
        if expected is not None and expected != n:
            raise ValueError(f"{e['metrics']}: {n} classes, but chain {chain} uses {expected}")
        metric = f"mIoU{n}"
        row = dict.fromkeys(COLUMNS, math.nan)
        row.update(chain=chain, method=method, stage=stage, metric=metric, published_source=None)
        row["mIoU"], row["mIoU_std"] = _mean_std(x[metric] for x in seeds)
        row["mIoU13"], row["mIoU13_std"] = _mean_std(x.get("mIoU13") for x in seeds)
        row["seeds"] = len(seeds)
        if e.get("metrics_best") is not None:  # one file per seed, as ``metrics``: their mean
            best = _seed_metrics(e["metrics_best"])
            if best[0]["num_classes"] != n:
                raise ValueError(f"{e['metrics_best']}: class count differs from {e['metrics']}")
            if len(best) != len(seeds):
                raise ValueError(f"{e['metrics_best']}: {len(best)} best-on-val files for {len(seeds)} seeds")
            row["best_on_val_mIoU"] = _mean_std(x[metric] for x in best)[0]
            row["best_on_val_mIoU13"] = _mean_std(x.get("mIoU13") for x in best)[0]
        for name in m["iou"]:
            if f"iou_{name}" not in row:
                raise ValueError(f"{e['metrics']}: unknown class {name!r}")
            row[f"iou_{name}"] = _mean_std(x["iou"].get(name) for x in seeds)[0]
        if method not in BASELINE_METHODS:
            value, source = _lookup(published, method, base_stage, chain, metric)
            value13, source13 = (math.nan, None)
            if n == 16:
                value13, source13 = _lookup(published, method, base_stage, chain, "mIoU13")
            row["published"], row["published_mIoU13"] = value, value13
            row["published_source"] = source if source is not None else source13
        row["note"] = e.get("note") or None
        rows.append(row)
    df = pd.DataFrame(rows, columns=COLUMNS)
    if df.empty:
        return df
    # stages not declared (a third DDB round) follow the declared ones in the order of the entries;
    # a released row right after our row of its stage
    bases = [s.removesuffix(RELEASED_SUFFIX) for s in df["stage"]]
    stage_order = STAGE_ORDER + [s for s in dict.fromkeys(bases) if s not in STAGE_ORDER]
    keys = df.apply(
        lambda r: (_rank(r["chain"], CHAIN_ORDER), _rank(r["method"], METHOD_ORDER),
                   _rank(r["stage"].removesuffix(RELEASED_SUFFIX), stage_order), r["stage"].endswith(RELEASED_SUFFIX)),
        axis=1,
    )
    df = df.iloc[sorted(range(len(df)), key=lambda i: keys.iloc[i])].reset_index(drop=True)
    return df


def _markdown(df: pd.DataFrame) -> str:
    """1 decimal; over several seeds mIoU (and mIoU13) read "mean ± std (n=seeds)" and the std
    columns are left out."""
    shown, align = df.copy(), []
    for col in ("mIoU", "mIoU13"):
        shown[col] = [
            "" if pd.isna(v) else f"{v:.1f} ± {sd:.1f} (n={n})" if n > 1 else f"{v:.1f}"
            for v, sd, n in zip(df[col], df[f"{col}_std"], df["seeds"])
        ]
    shown = shown.drop(columns=["mIoU_std", "mIoU13_std", "seeds"])
    for col in shown.columns:
        if pd.api.types.is_numeric_dtype(shown[col]):
            shown[col] = [("" if pd.isna(v) else f"{v:.1f}") for v in shown[col]]
            align.append("right")
        else:
            shown[col] = ["" if pd.isna(v) else str(v) for v in shown[col]]
            align.append("left")
    return shown.to_markdown(index=False, disable_numparse=True, colalign=align) + "\n"


def write_tables(df: pd.DataFrame, out_csv, out_md) -> None:
    """Write the table as CSV (full precision) and Markdown (1 decimal), atomically."""
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    write_text(out_md, _markdown(df))

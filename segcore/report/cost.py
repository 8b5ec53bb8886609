"""The cost of every job of the workflow, from the rules' ``benchmark:`` files (Snakemake's tsv:
wall seconds ``s``, peak resident memory ``max_rss`` in MB, ``cpu_time``; with
``benchmark-extended`` also the job's resources, whose ``gpu`` count gives GPU-hours)."""
from __future__ import annotations

import ast
import csv
import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from .style import save

__all__ = ["read_benchmark", "cost_table", "cost_by_rule", "plot_cost"]


def _num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):  # "NA": Snakemake could not sample the process
        return math.nan


def read_benchmark(path) -> dict:
    """The last record of one benchmark tsv: s, max_rss, cpu_time, gpus (nan when the file
    does not record the job's resources); one-line errors naming the file."""
    try:
        with open(path, newline="") as fh:
            records = list(csv.DictReader(fh, delimiter="\t"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: benchmark file not found") from None
    if not records or "s" not in records[-1]:
        raise ValueError(f"{path}: not a Snakemake benchmark file (no 's' column or no record)")
    rec = records[-1]
    gpus = math.nan
    if rec.get("resources"):
        try:
            res = ast.literal_eval(rec["resources"])
        except (ValueError, SyntaxError):
            raise ValueError(f"{path}: unreadable resources column {rec['resources'][:60]!r}") from None
        gpus = _num(res.get("gpu", 0)) if isinstance(res, dict) else math.nan
    wall = _num(rec["s"])
    if math.isnan(wall):
        raise ValueError(f"{path}: wall time 's' is not a number ({rec['s']!r})")
    return {"wall_s": wall, "max_rss_mb": _num(rec.get("max_rss")), "cpu_s": _num(rec.get("cpu_time")),
            "gpus": gpus}


def cost_table(jobs: list[tuple[str, str, str]]) -> pd.DataFrame:
    """One row per job ``(rule, wildcards, benchmark tsv)``: rule, job, chain, wall_s,
    max_rss_mb, cpu_s, gpus, gpu_hours (0 for a job without GPUs, empty where unknown, and
    every value empty for a job whose benchmark file does not exist)."""
    rows = []
    for rule, wildcards, path in jobs:
        if not Path(path).exists():  # e.g. converted data brought from elsewhere: no record
            b = {"wall_s": math.nan, "max_rss_mb": math.nan, "cpu_s": math.nan, "gpus": math.nan}
        else:
            b = read_benchmark(path)
        chain = dict(kv.split("=", 1) for kv in wildcards.split(", ") if "=" in kv).get("chain", "")
        rows.append({"rule": rule, "job": wildcards, "chain": chain, **b,
                     "gpu_hours": b["gpus"] * b["wall_s"] / 3600.0})
    return pd.DataFrame(rows, columns=["rule", "job", "chain", "wall_s", "max_rss_mb", "cpu_s", "gpus",
                                       "gpu_hours"])


def cost_by_rule(table: pd.DataFrame) -> pd.DataFrame:
    """Per rule: jobs, total and longest wall time, peak memory, total GPU-hours (slowest first)."""
    g = table.groupby("rule", sort=False)
    out = pd.DataFrame({
        "jobs": g.size(), "wall_s": g["wall_s"].sum(), "longest_s": g["wall_s"].max(),
        "max_rss_mb": g["max_rss_mb"].max(),
        "gpu_hours": g["gpu_hours"].sum(min_count=1),
    }).reset_index()
    return out.sort_values("wall_s", ascending=False, kind="stable").reset_index(drop=True)


def plot_cost(by_rule: pd.DataFrame, out) -> None:
    """Two bar panels per rule: summed wall time, and peak memory."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 0.24 * len(by_rule) + 1.4), sharey=True)
    y = range(len(by_rule))
    a.barh(y, by_rule["wall_s"], color="#1f5fa8")
    for i, (s, n) in enumerate(zip(by_rule["wall_s"], by_rule["jobs"])):
        a.text(s, i, f" {s:.0f} s ({n} job{'s' if n > 1 else ''})", va="center", fontsize=7)
    a.set_yticks(list(y), by_rule["rule"])
    a.invert_yaxis()
    a.set_xlabel("wall time, all jobs of the rule (s)")
    a.set_xlim(0, by_rule["wall_s"].max() * 1.35 + 1)
    b.barh(y, by_rule["max_rss_mb"].fillna(0), color="#d08000")
    b.set_xlabel("peak memory of one job, max_rss (MB)")
    fig.suptitle(f"Cost per rule: {by_rule['jobs'].sum()} jobs, {by_rule['wall_s'].sum() / 60:.1f} min of job "
                 "wall time (summed: jobs ran in parallel)")
    fig.tight_layout()
    save(fig, out)

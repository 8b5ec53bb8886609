"""Build the results table (CSV + Markdown) from per-run metrics JSON files.

    python workflow_scripts/make_table.py \
        --entry gta5_to_cityscapes proda warmup results/.../metrics.json \
        [--best gta5_to_cityscapes proda warmup results/.../metrics_best.json] \
        [--note gta5_to_cityscapes proda warmup "student init: SimCLR rule on target images"] \
        [--released gta5_to_cityscapes proda stage3 results/.../eval/released/proda/stage3.json] \
        [--published configs/published_results.csv] \
        --out-csv results/table.csv --out-md results/table.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from segcore.tables import results_table, write_tables
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from segcore.tables import results_table, write_tables


def build_entries(args) -> list[dict]:
    entries = {}
    for chain, method, stage, metrics in args.entry:  # a repeated row: one more seed of it
        key = (chain, method, stage)
        entries.setdefault(key, {"chain": chain, "method": method, "stage": stage, "metrics": []})
        if metrics in entries[key]["metrics"]:
            raise ValueError(f"duplicate --entry {' '.join(key)} {metrics}")
        entries[key]["metrics"].append(metrics)
    for chain, method, stage, metrics in args.released or []:  # a released checkpoint: one file, its own row
        key = (chain, method, stage, "released")
        if key in entries:
            raise ValueError(f"duplicate --released {' '.join(key[:3])}")
        entries[key] = {"chain": chain, "method": method, "stage": stage, "metrics": [metrics], "released": True}
    for opt, field in (("best", "metrics_best"), ("note", "note")):
        for chain, method, stage, value in getattr(args, opt) or []:
            key = (chain, method, stage)
            if key not in entries:
                raise ValueError(f"--{opt} {' '.join(key)} has no matching --entry")
            if opt == "best":  # one per seed, in the order of the row's --entry files
                entries[key].setdefault(field, []).append(value)
            else:
                entries[key][field] = value
    return list(entries.values())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entry", nargs=4, action="append", required=True,
                   metavar=("CHAIN", "METHOD", "STAGE", "METRICS_JSON"),
                   help="one table row: metrics of the last checkpoint (repeatable; the same row again"
                   " adds a seed, and the row gives the mean, the std and the count)")
    p.add_argument("--best", nargs=4, action="append", metavar=("CHAIN", "METHOD", "STAGE", "METRICS_JSON"),
                   help="metrics of the checkpoint selected on the evaluation set for a row (optional; repeated"
                   " once per seed of the row, as --entry)")
    p.add_argument("--note", nargs=4, action="append", metavar=("CHAIN", "METHOD", "STAGE", "TEXT"),
                   help="free-text note for a row (optional)")
    p.add_argument("--released", nargs=4, action="append", metavar=("CHAIN", "METHOD", "STAGE", "METRICS_JSON"),
                   help="metrics of a released checkpoint of a stage: its own row, '<stage> (released)', after"
                   " ours (optional)")
    p.add_argument("--published", help="published_results.csv (optional)")
    p.add_argument("--out-csv", required=True, help="results table to write (CSV)")
    p.add_argument("--out-md", required=True, help="results table to write (Markdown)")
    args = p.parse_args(argv)
    try:
        entries = build_entries(args)
        if args.published is not None and not Path(args.published).is_file():
            raise FileNotFoundError(f"published results file not found: {args.published}")
        df = results_table(entries, published_csv=args.published)
    except (FileNotFoundError, ValueError) as exc:
        print(f"make_table: error: {exc}", file=sys.stderr)
        return 1
    write_tables(df, args.out_csv, args.out_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The demo: wall time of the default workflow on 2 cores, per rule, from Snakemake's
``benchmark:`` files.

Every rule writes ``logs/benchmark/<rule>/...tsv`` (Snakemake's ``benchmark:`` directive: wall
seconds ``s``, ``cpu_time``, ``max_rss`` of the job); after the run this script sums them per
rule (the first folder under ``logs/benchmark/``, or the file's name for a file directly in
it; the demo-data rules share ``demo``) and names the slowest three. The whole run's wall time
comes from the last Snakemake log (``.snakemake/log``: first to last timestamp, second
resolution) or, when this script ran the workflow, from its own clock.
Baseline: the whole run's wall time (ratio = the rule's share; jobs of a rule may overlap).

small: tiny config (tests/workflow_helpers.tiny_config), demo data + conversion only, in a
temporary folder; full: the default config.yaml, whole workflow, in a temporary folder
(``--config tiny`` picks the tiny config instead); ``--from DIR``: no run, read the benchmark
files and log of a finished run in DIR (e.g. a scratch copy where
``snakemake --profile profiles/default`` ran).
"""
from __future__ import annotations

import csv
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import Table, check, parse_args  # noqa: E402

from workflow_helpers import ROOT, snakemake, tiny_config  # noqa: E402

_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")


def benchmark_times(workdir: Path) -> dict[str, list[dict]]:
    """{rule: [one dict per job: s, cpu_time, max_rss]} from ``workdir/logs/benchmark/**/*.tsv``."""
    root = workdir / "logs" / "benchmark"
    per_rule = defaultdict(list)
    for tsv in sorted(root.rglob("*.tsv")):
        rel = tsv.relative_to(root)
        rule = rel.parts[0] if len(rel.parts) > 1 else tsv.stem
        with open(tsv, newline="") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                def num(key, row=row):  # called in this iteration only; the default binds it (B023)
                    try:
                        return float(row.get(key, "nan"))
                    except ValueError:  # "NA" where Snakemake could not measure
                        return float("nan")
                per_rule[rule].append({"s": num("s"), "cpu_time": num("cpu_time"), "max_rss": num("max_rss")})
    return dict(per_rule)


def log_wall(workdir: Path) -> float | None:
    """Seconds from the first to the last timestamp of the latest Snakemake log."""
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    if not logs:
        return None
    stamps = [datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
              for line in logs[-1].read_text().splitlines() if (m := _STAMP.match(line.strip()))]
    return (stamps[-1] - stamps[0]).total_seconds() if len(stamps) > 1 else None


def _sum(values) -> float:
    vals = [v for v in values if v == v]  # drop NaN
    return sum(vals) if vals else float("nan")


def main():
    def extra(p):
        p.add_argument("--config", choices=("default", "tiny"), help="full only: which config (default: default)")
        p.add_argument("--from", dest="from_dir", help="read the benchmark files of a finished run in this folder")
    args = parse_args(__doc__.splitlines()[0], extra)
    if args.from_dir:
        work = Path(args.from_dir)
        per_rule, wall = benchmark_times(work), log_wall(work)
        check(wall is not None, f"whole-run wall time from the Snakemake log in {work}")
        title = f"demo workflow in {work} (a finished run)"
    else:
        which = "tiny" if args.size == "small" else (args.config or "default")
        targets = ["results/data/gta5/manifest.csv", "results/data/synthia/manifest.csv",
                   "results/data/cityscapes/manifest.csv"] if args.size == "small" else []
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            if which == "tiny":
                (work / "config.yaml").write_text(yaml.safe_dump(tiny_config(), sort_keys=False))
            else:
                shutil.copy(ROOT / "config.yaml", work / "config.yaml")
            t0 = time.perf_counter()
            proc = snakemake(work, *targets, timeout=7200)
            wall = time.perf_counter() - t0
            check(proc.returncode == 0, f"workflow ({which} config) finished")
            if proc.returncode != 0:
                print(proc.stderr[-4000:], file=sys.stderr)
            per_rule = benchmark_times(work)
        title = f"demo workflow, {which} config{' (data + conversion only)' if targets else ''}, --cores 2"
    check(bool(per_rule), "per-rule times read from the rules' benchmark files (logs/benchmark/)")
    wall = wall or float("nan")
    table = Table(title)
    table.add("whole run, seconds", wall, wall)
    order = sorted(per_rule, key=lambda r: -_sum(j["s"] for j in per_rule[r]))
    for rule in order:
        jobs = per_rule[rule]
        secs, cpu = _sum(j["s"] for j in jobs), _sum(j["cpu_time"] for j in jobs)
        rss = max((j["max_rss"] for j in jobs if j["max_rss"] == j["max_rss"]), default=float("nan"))
        table.add(f"rule {rule} ({len(jobs)} job{'s' if len(jobs) > 1 else ''}; "
                  f"cpu {cpu:.0f} s, max RSS {rss:.0f} MB), seconds", secs, wall)
    table.note("slowest three rules: "
               + ", ".join(f"{r} ({_sum(j['s'] for j in per_rule[r]):.0f} s)" for r in order[:3]))
    table.note("baseline = the whole run's wall time; ratio = the rule's share (jobs of one rule may overlap); "
               "on a machine shared with other jobs every time is inflated")
    table.print()


if __name__ == "__main__":
    main()

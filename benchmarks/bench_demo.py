"""The demo: wall time of the default workflow on 2 cores, per rule, in a temporary folder.

Per-job times come from Snakemake's own log (``.snakemake/log/*.snakemake.log``): the
timestamp line before each ``rule``/``localrule`` block starts a job, the one before its
``Finished jobid: N`` line ends it (second resolution). Rules/*.smk are not touched.
Baseline: the whole run's wall time (ratio = the rule's share of it).
small: tiny config (tests/workflow_helpers.tiny_config), demo data + conversion only;
full: the default config.yaml, whole workflow (``--config`` can pick the tiny config instead).
"""
from __future__ import annotations

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
_RULE = re.compile(r"^(?:local)?(?:checkpoint|rule) (\S+):$")
_JOBID = re.compile(r"^\s+jobid: (\d+)$")
_DONE = re.compile(r"^Finished job(?:id)?:? (\d+)")


def job_times(log_text: str) -> dict[str, list[float]]:
    """{rule: [seconds per job]} from a Snakemake log."""
    stamp, rule, started, per_rule = None, None, {}, defaultdict(list)
    for line in log_text.splitlines():
        m = _STAMP.match(line.strip())
        if m:
            stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
            continue
        m = _RULE.match(line.strip())
        if m:
            rule = m.group(1)
            continue
        m = _JOBID.match(line)
        if m and rule is not None:
            started[m.group(1)] = (rule, stamp)
            rule = None
            continue
        m = _DONE.match(line.strip())
        if m and m.group(1) in started:
            r, t0 = started.pop(m.group(1))
            per_rule[r].append((stamp - t0).total_seconds())
    return dict(per_rule)


def main():
    args = parse_args(__doc__.splitlines()[0], lambda p: p.add_argument("--config", choices=("default", "tiny"),
                                                                        help="full only: which config (default: default)"))
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
        logs = sorted((work / ".snakemake" / "log").glob("*.snakemake.log"))
        per_rule = job_times(logs[-1].read_text()) if logs else {}
        check(bool(per_rule), "per-rule times parsed from the Snakemake log")
    table = Table(f"demo workflow, {which} config{' (data + conversion only)' if targets else ''}, --cores 2")
    table.add("whole run, seconds", wall, wall)
    for rule, secs in sorted(per_rule.items(), key=lambda kv: -sum(kv[1])):
        table.add(f"rule {rule} ({len(secs)} job{'s' if len(secs) > 1 else ''}), seconds", sum(secs), wall)
    slow = sorted(per_rule, key=lambda r: -sum(per_rule[r]))[:3]
    table.note("slowest three rules: " + ", ".join(slow))
    table.note("baseline = the whole run's wall time; ratio = the rule's share (jobs of one rule may overlap)")
    table.print()


if __name__ == "__main__":
    main()

"""Workflow planning: ``snakemake -n`` time of the full-scale configs against manifests of
the real dataset sizes (24,966 GTA5, 9,400 SYNTHIA, 2,975 + 500 Cityscapes images).

In a temporary folder: raw roots in the real layout (a couple of tiny generated images each;
planning never reads them), the converted outputs ``results/data/{dataset}/`` written directly
with manifests of the real sizes (so no conversion job is planned and every rule sees real-size
manifests), stand-in pretrained files. Baseline: ``snakemake -n`` of a one-rule Snakefile
(Snakemake's own start-up floor), timed interleaved with the two chains. Goal: under 3 s, and
no job per image (checked: exit 1).

Faked (planning reads none of it): the converted outputs (``manifest.csv`` with the real row
counts and sizes, ``class_stats.json`` = ``{}``, a header-only ``label_counts.csv``; no label
PNG exists), one tiny generated image per raw root, and stand-in pretrained weight files.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import Table, best_times, check, parse_args  # noqa: E402

from segcore.data import demo  # noqa: E402
from workflow_helpers import ROOT, planned_jobs, write_pretrained_stand_ins  # noqa: E402

REAL = {"gta5": {"train": 24966}, "synthia": {"train": 9400}, "cityscapes": {"train": 2975, "val": 500}}
CHAINS = {"gta5_to_cityscapes": "gta5", "synthia_to_cityscapes": "synthia"}


def snakemake_n(workdir: Path, snakefile: Path, *args: str):
    import os
    import subprocess

    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--directory", str(workdir), "--cores", "2",
           "-n", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    return time.perf_counter() - t0, proc


def write_converted(work: Path, scale: int) -> None:
    for dataset, splits in REAL.items():
        out = work / "results/data" / dataset
        (out / "labels").mkdir(parents=True, exist_ok=True)
        rows = []
        for split, count in splits.items():
            for i in range(max(1, count // scale)):
                key = f"{split}/img_{i:06d}" if dataset == "cityscapes" else f"{i:07d}"
                rows.append({"key": key, "image": f"data/{dataset}/{key}.png",
                             "label": str(out / "labels" / f"{key}.png"),
                             "split": split, "width": 2048, "height": 1024})
        pd.DataFrame(rows).to_csv(out / "manifest.csv", index=False)
        (out / "class_stats.json").write_text("{}")
        (out / "label_counts.csv").write_text("key,split\n")


def main():
    args = parse_args(__doc__.splitlines()[0])
    scale, repeat = (100, 1) if args.size == "small" else (1, 3)
    table = Table("workflow planning (snakemake -n), full-scale configs, manifests of "
                  + ("the real sizes" if scale == 1 else f"1/{scale} of the real sizes"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        demo.make_gta5(work / "data/GTA5", 1, size=(32, 16))
        demo.make_synthia(work / "data/SYNTHIA_RAND_CITYSCAPES", 1, size=(32, 16))
        demo.make_cityscapes(work / "data/cityscapes", 1, 1, size=(32, 16))
        write_pretrained_stand_ins(work)
        shutil.copy(ROOT / "config.yaml", work / "config.yaml")
        time.sleep(1.0)  # converted outputs strictly newer than the raw roots
        write_converted(work, scale)
        trivial = work / "trivial"
        trivial.mkdir()
        (trivial / "Snakefile").write_text('rule all:\n    output: "x.txt"\n    shell: "touch {output}"\n')
        procs = {}

        def plan(chain):
            def run():
                t, procs[chain] = snakemake_n(work, ROOT / "Snakefile",
                                              "--configfile", str(ROOT / "configs" / f"{chain}.yaml"))
            return run

        times = best_times([lambda: snakemake_n(trivial, trivial / "Snakefile"), *(plan(c) for c in CHAINS)], repeat)
        t_floor = times[0]
        for (chain, source), t in zip(CHAINS.items(), times[1:]):
            proc = procs[chain]
            ok = check(proc.returncode == 0, f"{chain}: snakemake -n succeeds")
            if not ok:
                print(proc.stderr[-3000:], file=sys.stderr)
                continue
            jobs = planned_jobs(proc.stdout)
            total = sum(jobs.values())
            print(f"{chain}: planned jobs " + ", ".join(f"{r} {k}" for r, k in sorted(jobs.items())), flush=True)
            check("convert" not in jobs, f"{chain}: converted outputs up to date, no conversion planned")
            check(total < 100,
                  f"{chain}: no job per image ({total} jobs for {sum(REAL[source].values())} source images)")
            table.add(f"{chain}: seconds to plan ({total} jobs)", t, t_floor, ratio=t / t_floor)
            check(t < 3.0, f"{chain}: planned in under 3 s (goal; {t:.2f} s)") if scale == 1 else None
    table.note("baseline = snakemake -n of a one-rule Snakefile (interpreter + Snakemake start-up); "
               "ratio = ours / baseline (lower is better)")
    table.print()


if __name__ == "__main__":
    main()

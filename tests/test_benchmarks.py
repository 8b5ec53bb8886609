"""Every benchmark script runs once at its smallest size (so they cannot rot); no timing thresholds."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["bench_convert", "bench_eval", "bench_pseudo_store", "bench_prototypes", "bench_plan", "bench_demo",
           "train_step", "seed_spread", "bench_ddb_prototypes", "bench_sample_pipeline",
           "bench_resample_geometry"]
CHECKED = {"bench_eval": "identical", "bench_prototypes": "rectified labels identical",
           "bench_pseudo_store": "identical to the official rule", "bench_plan": "no job per image",
           "bench_demo": "benchmark files", "train_step": "bf16 step losses finite",
           "seed_spread": "equals its metrics file", "bench_ddb_prototypes": "classes found by both passes",
           "bench_sample_pipeline": "float32 LAB transfer within", "bench_resample_geometry": "literal"}


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_runs_at_small_size(name):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--size", "small"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "check: FAIL" not in out
    table = out[out.index("| what"):]
    lines = [l for l in table.splitlines() if l.startswith("| ")]
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["what", "ours", "baseline", "ratio"]
    assert len(lines) >= 2  # at least one figure
    assert out.rstrip().endswith("== end ==")  # the table is printed last
    if name in CHECKED:
        assert "check: OK   " in out and CHECKED[name] in out

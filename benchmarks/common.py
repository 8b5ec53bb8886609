"""Shared helpers of the benchmark scripts: argument parsing, timing, the result table.

Every script prints its table last, framed by ``== <title> ==`` and ``== end ==`` lines, with
the columns what / ours / baseline / ratio (ratio = ours / baseline, where "more is better"
unless the row says otherwise). ``check(ok, message)`` records a correctness failure: the
script then exits with status 1 after printing the table.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

_FAILURES: list[str] = []


def parse_args(description: str, extra=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--size", choices=("small", "full"), default="small",
                   help="small: seconds (what CI runs); full: the issue's sizes scaled to minutes on a laptop")
    if extra is not None:
        extra(p)
    return p.parse_args()


def best_time(fn, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls of ``fn()`` (seconds)."""
    best = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def best_times(fns, repeat: int = 3) -> list[float]:
    """Best wall time of each of ``fns``, timed interleaved (f1, f2, ..., f1, f2, ...): on a
    shared, noisy machine a burst of load then hits ours and its baseline alike."""
    best = [float("inf")] * len(fns)
    for _ in range(max(1, repeat)):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover
        return max(1, os.cpu_count() or 1)


def machine() -> str:
    try:
        import torch
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except Exception:  # pragma: no cover
        gpu = "no GPU"
    return (f"{platform.machine()} {platform.system()}, {cores()} usable cores, {gpu}, "
            f"Python {platform.python_version()}")


def check(ok: bool, message: str) -> bool:
    """Record a correctness check; a failed one makes ``Table.print`` exit non-zero."""
    print(f"check: {'OK  ' if ok else 'FAIL'} {message}", flush=True)
    if not ok:
        _FAILURES.append(message)
    return ok


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    v = float(value)
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:.2f}G"
    if a >= 1e6:
        return f"{v / 1e6:.2f}M"
    if a >= 1e4:
        return f"{v / 1e3:.1f}k"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


class Table:
    """Rows of (what, ours, baseline, ratio); ``print`` writes it and exits 1 on failed checks."""

    def __init__(self, title: str):
        self.title = title
        self.rows: list[tuple[str, str, str, str]] = []
        self.notes: list[str] = []

    def add(self, what: str, ours, baseline=None, ratio=None, unit: str = "") -> None:
        if ratio is None and isinstance(ours, (int, float)) and isinstance(baseline, (int, float)) and baseline:
            ratio = ours / baseline
        u = f" {unit}" if unit else ""
        self.rows.append((what, fmt(ours) + (u if ours is not None else ""),
                          fmt(baseline) + (u if baseline is not None else ""),
                          "-" if ratio is None else f"{ratio:.3g}"))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def render(self) -> str:
        head = ("what", "ours", "baseline", "ratio")
        rows = [head, *self.rows]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        line = lambda r: "| " + " | ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])  # noqa: E731
                                             for i, c in enumerate(r)) + " |"
        out = [f"== {self.title} ==", f"machine: {machine()}", line(head),
               "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in self.rows)]
        out += [f"note: {n}" for n in self.notes]
        out.append("== end ==")
        return "\n".join(out)

    def print(self) -> None:
        print(self.render(), flush=True)
        if _FAILURES:
            print(f"{len(_FAILURES)} check(s) failed: " + "; ".join(_FAILURES), file=sys.stderr)
            sys.exit(1)

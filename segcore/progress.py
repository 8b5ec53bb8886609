"""Progress lines a person can read in a job's log: done/total, rate, elapsed time, ETA, a
timestamp and, on CUDA, the peak memory. One formatter for training loops and inference jobs
alike, so every long job's log looks the same:

    [2026-12-01 16:40:00] it 50/62412 (0.1%) 7.47 it/s elapsed 0:00:07 eta 2:19:10 peak 31.2 GiB | lr 1.0e-04 src 0.41

``Meter`` only formats and decides when a line is due; the caller prints it (training loops
print on rank 0 only, after averaging their losses over the ranks).
"""
from __future__ import annotations

import datetime
import time

import torch


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def peak_memory() -> str:
    """``peak X GiB`` of this process's CUDA device, or "" off CUDA."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return ""
    return f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"


class Meter:
    """Counts ``done`` of ``total`` units (iterations, images) from ``start`` (a resumed job
    starts part-way: its rate and ETA count only this run's work).

    ``due(done)``: a line is wanted every ``every`` units, at the last unit, and at least every
    ``min_seconds`` seconds when ``min_seconds`` is set (inference jobs over thousands of images
    log by time as well, so a slow job is never silent for long)."""

    def __init__(self, total: int, start: int = 0, every: int = 0, unit: str = "it", min_seconds: float | None = None,
                 clock=time.monotonic):
        self.total, self.start, self.every, self.unit = int(total), int(start), int(every), unit
        self.min_seconds, self.clock = min_seconds, clock
        self.t0 = self.last = clock()

    def due(self, done: int) -> bool:
        if done >= self.total:
            return True
        if self.every and done % self.every == 0:
            return True
        return self.min_seconds is not None and self.clock() - self.last >= self.min_seconds

    def line(self, done: int, extra: str = "") -> str:
        """The progress line at ``done`` units, with ``extra`` (losses, lr) after a bar."""
        now = self.clock()
        self.last = now
        elapsed = now - self.t0
        work = done - self.start
        rate = work / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        pct = 100.0 * done / self.total if self.total else 100.0
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        parts = [f"[{stamp}] {self.unit} {done}/{self.total} ({pct:.1f}%)", f"{rate:.2f} {self.unit}/s",
                 f"elapsed {_clock(elapsed)}", f"eta {_clock(eta) if eta == eta else '?'}"]
        mem = peak_memory()
        if mem:
            parts.append(mem)
        text = " ".join(parts)
        return f"{text} | {extra}" if extra else text


def image_meter(total: int, batch_size: int, log_every: int) -> Meter:
    """The meter of an inference job over ``total`` images: a line every ``log_every`` images
    (rounded to whole batches), at least every 30 s, and at the end."""
    every = max(batch_size, int(log_every) // batch_size * batch_size)
    return Meter(total, every=every, unit="img", min_seconds=30.0)

"""Progress lines of long jobs (``segcore.progress.Meter``): rate, elapsed time and ETA from the
clock, and the lines every inference job over many images writes (soft / hard pseudo-labels,
initial prototypes, class distribution, evaluation): done/total, rate, elapsed, ETA and a
timestamp, every N images, by time when the images come slowly, and at the end."""
from __future__ import annotations

import functools
import re

import torch
from test_convert import make_gta5
from test_generate import C, H, Images, TinyNet, W

from segcore import progress
from segcore.data.convert import convert_dataset
from segcore.evaluate import evaluate
from segcore.progress import Meter
from segcore.pseudo.class_distribution import argmax_counts
from segcore.pseudo.generate import generate_hard, generate_soft
from segcore.pseudo.initial_prototypes import initial_prototypes
from segcore.pseudo.store import HardWriter, SoftStore, SoftWriter

# [2026-12-01 16:40:00] img 4/7 (57.1%) 3.20 img/s elapsed 0:00:01 eta 0:00:00 | what
LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] img (\d+)/(\d+) \(([\d.]+)%\) ([\d.]+) img/s "
                  r"elapsed (\d+:\d\d:\d\d) eta (\d+:\d\d:\d\d|\?)( peak [\d.]+ GiB)? \| (.+)$")


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_meter_rate_eta_and_when_lines_are_due():
    clock = FakeClock()
    m = Meter(1000, start=200, every=50, unit="it", clock=clock)  # resumed at 200
    clock.now += 40.0
    line = m.line(300, "lr 1.0e-04")  # 100 units of this run in 40 s
    assert " it 300/1000 (30.0%) 2.50 it/s elapsed 0:00:40 eta 0:04:40 " in line + " "  # 700 / 2.5 = 280 s
    assert line.endswith("| lr 1.0e-04") and re.match(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] ", line)
    assert m.due(350) and not m.due(351) and m.due(1000)  # every 50, and the last unit
    timed = Meter(1000, every=0, min_seconds=30.0, clock=clock)
    assert not timed.due(1)
    clock.now += 30.0
    assert timed.due(1)  # silent for 30 s: a line is due
    timed.line(1)
    assert not timed.due(2)  # the line restarted the 30 s
    assert "eta ?" in Meter(10, clock=clock).line(0)  # no rate yet: no ETA


def _lines(lines, total, what):
    parsed = [LINE.match(line) for line in lines]
    assert lines and all(parsed), lines
    done = [int(p.group(2)) for p in parsed]
    assert all(int(p.group(3)) == total for p in parsed) and all(what in p.group(9) for p in parsed)
    assert done == sorted(done) and done[-1] == total  # the end is always logged
    return done


def test_pseudo_label_jobs_log_progress(tmp_path):
    ds, model = Images(n=7), TinyNet()
    lines = []
    with SoftWriter(tmp_path / "soft.h5", ds.keys, C, (H // 2, W // 2)) as w:
        generate_soft(model, ds, w, batch_size=2, log=lines.append, log_every=4)
    assert _lines(lines, 7, "soft pseudo-labels") == [4, 7]  # every 4 images (whole batches), the end
    lines = []
    with HardWriter(tmp_path / "hard.h5", ds.keys, (H, W), num_classes=C) as w:
        generate_hard(model, ds, w, batch_size=3, log=lines.append, log_every=100)
    assert _lines(lines, 7, "hard pseudo-labels") == [7]
    lines = []
    with SoftStore(tmp_path / "soft.h5") as store:
        argmax_counts(store, log=lines.append, log_every=5)
    assert _lines(lines, 7, "class distribution") == [5, 7]
    lines = []
    initial_prototypes(model, ds, batch_size=2, log=lines.append, log_every=2)
    assert _lines(lines, 7, "initial prototypes") == [2, 4, 6, 7]


def test_slow_job_logs_by_time(tmp_path, monkeypatch):
    """Images that come slowly still give a line at least every 30 s (here: a fake clock that
    advances 20 s per batch), whatever the image interval."""
    clock = FakeClock()
    monkeypatch.setattr(progress, "Meter", functools.partial(Meter, clock=clock))  # what image_meter builds
    ds, model = Images(n=6), TinyNet()
    forward = model.forward

    def slow(x):
        clock.now += 20.0
        return forward(x)

    model.forward = slow
    lines = []
    with SoftWriter(tmp_path / "soft.h5", ds.keys, C, (H // 2, W // 2)) as w:
        generate_soft(model, ds, w, batch_size=1, log=lines.append, log_every=1000)
    assert _lines(lines, 6, "soft pseudo-labels") == [2, 4, 6]  # 40 s since the last line at 2, 4
    first = LINE.match(lines[0])
    assert first.group(5) == "0.05" and first.group(6) == "0:00:40" and first.group(7) == "0:01:20"


def test_evaluation_logs_progress(tmp_path):
    make_gta5(tmp_path / "raw", n=5, size=(32, 16))
    convert_dataset("gta5", tmp_path / "raw", tmp_path / "data", workers=1, progress=False)
    torch.manual_seed(0)

    class Seg(torch.nn.Module):  # a tiny stand-in segmenter: {"out": logits at half resolution}
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 19, 3, stride=2, padding=1)

        def forward(self, x):
            return {"out": self.conv(x)}

    model, lines = Seg(), []
    result = evaluate(model, tmp_path / "data" / "manifest.csv", "train", 19, batch_size=2, log=lines.append,
                      log_every=2)
    assert result["images"] == 5
    assert _lines(lines, 5, "evaluate train") == [2, 4, 5]

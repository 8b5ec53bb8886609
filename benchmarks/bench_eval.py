"""Confusion-matrix evaluation throughput over 2048x1024 prediction/label pairs.

Ours: ``segcore.metrics.confusion_matrix`` (torch, on uint8 tensors shared with NumPy) summed
over the pairs. Baseline: the plain NumPy per-image implementation (the official
``fast_hist``: mask, ``bincount(n * label + pred)``), and the floor of reading both arrays
once (a max-reduction over each). The two matrices must be identical, else exit status 1.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, best_time, check, parse_args  # noqa: E402

from segcore.metrics import confusion_matrix, summarize  # noqa: E402

C = 19


def numpy_hist(pred, label, n=C):
    k = (label >= 0) & (label < n)
    return np.bincount(n * label[k].astype(int) + pred[k], minlength=n ** 2).reshape(n, n)


def main():
    args = parse_args(__doc__.splitlines()[0])
    n, repeat = (3, 2) if args.size == "small" else (30, 3)
    h, w = 1024, 2048
    rng = np.random.default_rng(0)
    labels, preds = [], []
    for _ in range(n):
        lab = rng.integers(0, C, (h, w), dtype=np.uint8)
        lab[rng.random((h, w)) < 0.1] = 255  # ignore pixels, as Cityscapes has
        pred = np.where(rng.random((h, w)) < 0.7, lab % C, rng.integers(0, C, (h, w))).astype(np.uint8)
        labels.append(lab)
        preds.append(pred)
    tl = [torch.from_numpy(a) for a in labels]
    tp = [torch.from_numpy(a) for a in preds]
    result = {}

    def ours():
        cm = torch.zeros(C, C, dtype=torch.int64)
        for p, l in zip(tp, tl):
            cm += confusion_matrix(p, l, C)
        result["ours"] = cm.numpy()

    def baseline():
        cm = np.zeros((C, C), np.int64)
        for p, l in zip(preds, labels):
            cm += numpy_hist(p, l)
        result["numpy"] = cm

    def floor():
        s = 0
        for p, l in zip(preds, labels):
            s += int(p.max()) + int(l.max())
        return s

    t_ours = best_time(ours, repeat)
    t_np = best_time(baseline, repeat)
    t_floor = best_time(floor, repeat)
    px = n * h * w
    same = np.array_equal(result["ours"], result["numpy"])
    check(same, "confusion matrices of ours and the NumPy per-image baseline are identical")
    check(summarize(result["ours"], C)== summarize(result["numpy"], C), "summaries (IoU, mIoU19) identical")
    table = Table(f"evaluation: confusion matrix over {n} pairs of {w}x{h} (uint8, 10% ignore), {torch.get_num_threads()} torch threads")
    table.add("pixels/s vs NumPy per-image fast_hist", px / t_ours, px / t_np)
    table.add("pixels/s vs floor (read both arrays once)", px / t_ours, px / t_floor)
    table.add("s per 500-image val set (ours vs NumPy)", 500 * h * w / (px / t_ours), 500 * h * w / (px / t_np),
              ratio=t_np / t_ours)
    table.note("ratio = ours / baseline (higher is better) except the last row, where it is the speed-up")
    table.print()


if __name__ == "__main__":
    main()

"""Confusion-matrix evaluation throughput over 2048x1024 prediction/label pairs.

Ours: ``segcore.metrics.confusion_matrix`` (on uint8 CPU tensors shared with NumPy: its CPU
path forms ``label * C + pred`` in uint16 and counts it with ``np.bincount``) summed over the
pairs. Baseline: the plain NumPy per-image implementation (the official
``fast_hist``: mask, ``bincount(n * label + pred)``), and the floor of reading both arrays
once (a max-reduction over each). The two matrices must be identical, else exit status 1.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, best_times, check, parse_args  # noqa: E402

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

    t_ours, t_np, t_floor = best_times([ours, baseline, floor], repeat)  # interleaved
    px = n * h * w
    same = np.array_equal(result["ours"], result["numpy"])
    check(same, "confusion matrices of ours and the NumPy per-image baseline are identical")
    check(summarize(result["ours"], C)== summarize(result["numpy"], C), "summaries (IoU, mIoU19) identical")
    table = Table(f"evaluation: confusion matrix over {n} pairs of {w}x{h} (uint8, 10% ignore), "
                  f"{torch.get_num_threads()} torch threads")
    table.add("pixels/s vs NumPy per-image fast_hist", px / t_ours, px / t_np)
    table.add("pixels/s vs floor (read both arrays once)", px / t_ours, px / t_floor)
    table.add("s per 500-image val set (ours vs NumPy)", 500 * h * w / (px / t_ours), 500 * h * w / (px / t_np),
              ratio=t_np / t_ours)
    # int64 predictions and labels, as evaluate() passes them (argmax output, collated labels)
    k = min(n, 5)
    l64 = [a.astype(np.int64) for a in labels[:k]]
    p64 = [a.astype(np.int64) for a in preds[:k]]
    tl64, tp64 = [torch.from_numpy(a) for a in l64], [torch.from_numpy(a) for a in p64]

    def ours64():
        result["ours64"] = sum(confusion_matrix(p, l, C) for p, l in zip(tp64, tl64)).numpy()

    def numpy64():
        result["numpy64"] = sum(numpy_hist(p, l) for p, l in zip(p64, l64))

    t_o64, t_n64 = best_times([ours64, numpy64], repeat)
    check(np.array_equal(result["ours64"], result["numpy64"]), "int64 inputs: matrices identical to NumPy's")
    table.add(f"pixels/s, int64 pred + label ({k} pairs) vs NumPy", k * h * w / t_o64, k * h * w / t_n64)
    table.note("ratio = ours / baseline (higher is better) except the s-per-val-set row, where it is the speed-up")
    table.print()


if __name__ == "__main__":
    main()

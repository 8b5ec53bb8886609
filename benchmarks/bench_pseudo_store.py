"""Pseudo-label storage: bytes per image and random-access read throughput of our stores
against the official per-image formats, written by this script in the same run.

Official: a float32 ``.npy`` of the 19-class softmax at output stride 8 (19x129x257) per image
(soft), and a uint8 label PNG + float16 full-resolution (1024x2048) confidence ``.npy`` per image
(hard). Ours: ``SoftWriter`` (float16, topk) and ``HardWriter`` (conf grid, float16).
Synthetic predictions: logits = 5 x bilinearly upsampled noise (``segcore.pseudo.store``).
Checks (exit status 1 on failure): float16 soft argmax equal to the float32 argmax except
at float16 ties, topk argmax identical; thresholded hard labels at 0.9/0.95/0.99 identical to
the official NumPy rule ``lp[conf <= t] = 255`` on the float16 array.
Reads: a DataLoader with 4 workers, shuffled, batch 2, over each format.
"""
from __future__ import annotations

import sys
import warnings
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, check, parse_args  # noqa: E402

from segcore.pseudo.store import HardStore, HardWriter, SoftStore, SoftWriter, _smooth_logits  # noqa: E402

C, SOFT_HW, FULL_HW, TRAIN = 19, (129, 257), (1024, 2048), 2975


class Reader(torch.utils.data.Dataset):
    def __init__(self, n, fn):
        self.n, self.fn = n, fn

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.fn(i)


def read_rate(n, fn, workers=4, passes=1):
    loader = torch.utils.data.DataLoader(Reader(n, fn), batch_size=2, shuffle=True, num_workers=workers,
                                         persistent_workers=False)
    t0 = time.perf_counter()
    count = 0
    for _ in range(passes):
        for batch in loader:
            count += len(batch[0]) if isinstance(batch, (list, tuple)) else len(batch)
    return count / (time.perf_counter() - t0)


def main():
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    args = parse_args(__doc__.splitlines()[0])
    n, workers = (2, 0) if args.size == "small" else (48, 4)  # small: in-process reads (worker start-up dominates)
    keys = [f"img{i:04d}" for i in range(n)]
    table = Table(f"pseudo-label storage: {n} generated Cityscapes-size images, sizes scaled to {TRAIN}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        off_soft, off_hard = tmp / "official_soft", tmp / "official_hard"
        off_soft.mkdir(), off_hard.mkdir()
        soft_paths = {enc: tmp / f"soft_{enc}.h5" for enc in ("float16", "topk")}
        hard_paths = {enc: tmp / f"hard_{enc}.h5" for enc in ("grid", "float16")}
        soft_w = {enc: SoftWriter(p, keys, C, SOFT_HW, encoding=enc).__enter__() for enc, p in soft_paths.items()}
        hard_w = {enc: HardWriter(p, keys, FULL_HW, C, conf_encoding=enc).__enter__() for enc, p in hard_paths.items()}
        hard_ok = {"grid": True, "float16": True}
        ties = 0
        up = lambda t: F.interpolate(t, size=FULL_HW, mode="bilinear", align_corners=True)  # noqa: E731
        for i in range(n):
            logits = _smooth_logits(C, SOFT_HW, i)
            p = logits.softmax(1)
            np.save(off_soft / f"{keys[i]}.npy", p[0].numpy().astype(np.float32))
            for w in soft_w.values():
                w.write(i, p[0])
            flipped = logits + 0.1 * _smooth_logits(C, SOFT_HW, 1000 + i)
            conf, lab = ((up(p) + up(flipped.softmax(1))) / 2)[0].max(0)
            lab, conf = lab.numpy().astype(np.uint8), conf.numpy()
            Image.fromarray(lab).save(off_hard / f"{keys[i]}.png")
            np.save(off_hard / f"{keys[i]}_conf.npy", conf.astype(np.float16))
            for w in hard_w.values():
                w.write(i, lab, conf)
            # ties at float16 resolution: top two probabilities equal after rounding
            top2 = p[0].to(torch.float16).float().topk(2, dim=0).values
            ties += int((top2[0] == top2[1]).sum())
        for w in [*soft_w.values(), *hard_w.values()]:
            w.__exit__(None, None, None)

        stores = {enc: SoftStore(p, keys, C) for enc, p in soft_paths.items()}
        hstores = {enc: HardStore(p, keys, C) for enc, p in hard_paths.items()}
        mism = {"float16": 0, "topk": 0}
        for i in range(n):
            ref = np.load(off_soft / f"{keys[i]}.npy")
            ref_arg = torch.from_numpy(ref).argmax(0)
            for enc, s in stores.items():
                mism[enc] += int((s[i].argmax(0) != ref_arg).sum())
            lab = np.asarray(Image.open(off_hard / f"{keys[i]}.png")).astype(np.int64)
            conf16 = np.load(off_hard / f"{keys[i]}_conf.npy")
            for t in (0.9, 0.95, 0.99):
                ref = lab.copy()
                ref[conf16 <= t] = 255  # the official NumPy rule (float16 comparison)
                for enc, s in hstores.items():
                    hard_ok[enc] &= bool(np.array_equal(s.thresholded(i, t).numpy(), ref))
            for enc, s in hstores.items():
                hard_ok[enc] &= bool(np.array_equal(s.get(i)[0].numpy(), lab))
        check(mism["topk"] == 0, "soft topk: argmax identical to the float32 argmax on every pixel")
        check(mism["float16"] <= ties, f"soft float16: argmax differs only at float16 ties "
              f"({mism['float16']} differing pixels, {ties} tied pixels of {n * SOFT_HW[0] * SOFT_HW[1]})")
        for enc, ok in hard_ok.items():
            check(ok, f"hard conf={enc}: labels and thresholded labels at 0.9/0.95/0.99 identical to the official rule")

        soft_off_b = sum(f.stat().st_size for f in off_soft.iterdir()) / n
        hard_off_b = sum(f.stat().st_size for f in off_hard.iterdir()) / n
        for enc, p in soft_paths.items():
            b = p.stat().st_size / n
            table.add(f"soft {enc}: MB per image (total for {TRAIN}: {b * TRAIN / 1e9:.2f} GB)", b / 1e6, soft_off_b / 1e6,
                      unit="MB")
        for enc, p in hard_paths.items():
            b = p.stat().st_size / n
            table.add(f"hard conf={enc}: MB per image (total: {b * TRAIN / 1e9:.2f} GB)", b / 1e6, hard_off_b / 1e6,
                      unit="MB")

        def off_soft_read(i):
            return torch.from_numpy(np.load(off_soft / f"{keys[i]}.npy"))

        def off_hard_read(i):
            lab = torch.from_numpy(np.asarray(Image.open(off_hard / f"{keys[i]}.png")).astype(np.int64))
            conf = torch.from_numpy(np.load(off_hard / f"{keys[i]}_conf.npy").astype(np.float32))
            return lab, conf

        base_soft = read_rate(n, off_soft_read, workers)
        base_hard = read_rate(n, off_hard_read, workers)
        for enc in soft_paths:
            s = SoftStore(soft_paths[enc], keys, C)
            table.add(f"soft {enc}: images/s read, {workers} workers, random", read_rate(n, s.__getitem__, workers), base_soft)
        for enc in hard_paths:
            s = HardStore(hard_paths[enc], keys, C)
            table.add(f"hard conf={enc}: images/s read (label+conf)", read_rate(n, s.get, workers), base_hard)
            table.add(f"hard conf={enc}: images/s read (thresholded 0.95)",
                      read_rate(n, lambda i, s=s: s.thresholded(i, 0.95), workers), base_hard)
    table.note("baseline = the official per-image files written here (soft: float32 .npy; hard: label PNG + "
               "float16 conf .npy), read with the same DataLoader; ratio = ours / official (bytes: lower is better)")
    table.print()


if __name__ == "__main__":
    main()

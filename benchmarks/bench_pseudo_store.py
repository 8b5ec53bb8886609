"""Pseudo-label storage: bytes per image and random-access read throughput of our stores
against the official per-image formats, written by this script in the same run.

Official: a float32 ``.npy`` of the 19-class softmax at output stride 8 (19x129x257) per image
(soft), and a uint8 label PNG + float16 full-resolution (1024x2048) confidence ``.npy`` per image
(hard). Ours: ``SoftWriter`` (float16, topk) and ``HardWriter`` (conf float16, grid, and
thresholds = the listed thresholds 0.9/0.95/0.99; the workflow writes its hard labels with the
next stage's threshold alone, rules/pseudo.smk). Synthetic predictions: logits = 5 x bilinearly
upsampled noise (``segcore.pseudo.store``).
Checks (exit status 1 on failure): float16 soft argmax equal to the float32 argmax except
at float16 ties, topk argmax identical; every hard label and the thresholded labels at
0.9/0.95/0.99 identical, pixel for pixel, to the official NumPy rule ``lp[conf <= t] = 255``
applied to the official float16 ``_conf.npy`` this script wrote.
Reads: each format through a DataLoader (batch 4, shuffled = random access, persistent workers:
4, and in-process = one core, at full size; in-process only at small size), one warm-up epoch,
then epochs of ours and of the official files timed interleaved. Each sample is what a loader
worker hands to training: the soft label, or the hard label thresholded at 0.95, cut to an
896x512 crop at 1/4 resolution (``TargetViews`` works at ``label_stride`` 4), so the batch
transfer is as small as in training. The needed rate is an ESTIMATE for an H200 (see NEEDED).
"""
from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, best_times, check, parse_args  # noqa: E402

from segcore.pseudo.store import HardStore, HardWriter, SoftStore, SoftWriter, _smooth_logits  # noqa: E402

C, SOFT_HW, FULL_HW, TRAIN = 19, (129, 257), (1024, 2048), 2975
THRESHOLDS = (0.9, 0.95, 0.99)
# Target images/s a training job consumes on an H200: an ESTIMATE until benchmarks/train_step.py
# runs on a GPU. DeepLabV2-R101 (output stride 8) at 896x512, batch 4 source + 4 target, AMP:
# ~1.8 TFLOP forward+backward per image, ~17 TFLOP per distillation step with the teacher's
# forward; at ~120 TFLOP/s sustained that is ~7 steps/s, i.e. ~28 target images/s; we ask 32.
NEEDED = 32.0


class Reader(torch.utils.data.Dataset):
    def __init__(self, n, fn):
        self.n, self.fn = n, fn

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        x = self.fn(i)
        if x.dim() == 2:  # a hard label: the 896x512 crop at label stride 4, as TargetViews hands on
            x = x[:512:4, :896:4].clone()
        return x


def epoch_fn(n, fn, workers):
    """A function running one shuffled epoch of ``fn`` through a DataLoader with persistent
    workers (started, and warmed by one epoch, here: outside the timing)."""
    loader = torch.utils.data.DataLoader(Reader(n, fn), batch_size=4, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0)

    def epoch():
        for _ in loader:
            pass

    epoch()
    return epoch


def read_rates(n, pairs, workers, repeat):
    """images/s of each (ours, official) reader pair, the two epochs timed interleaved."""
    out = []
    for ours, official in pairs:
        t_ours, t_off = best_times([epoch_fn(n, ours, workers), epoch_fn(n, official, workers)], repeat)
        out.append((n / t_ours, n / t_off))
    return out


def main():
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    args = parse_args(__doc__.splitlines()[0])
    # as in a loader worker; and on a shared machine a second intra-op thread that is not
    # scheduled stalls every parallel op for a time slice
    torch.set_num_threads(1)
    n, workers, repeat = (2, 0, 1) if args.size == "small" else (48, 4, 3)  # small: in-process reads
    keys = [f"img{i:04d}" for i in range(n)]
    table = Table(f"pseudo-label storage: {n} generated Cityscapes-size images, sizes scaled to {TRAIN}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        off_soft, off_hard = tmp / "official_soft", tmp / "official_hard"
        off_soft.mkdir(), off_hard.mkdir()
        soft_paths = {enc: tmp / f"soft_{enc}.h5" for enc in ("float16", "topk")}
        hard_paths = {enc: tmp / f"hard_{enc}.h5" for enc in ("float16", "grid", "thresholds")}
        soft_w = {enc: SoftWriter(p, keys, C, SOFT_HW, encoding=enc).__enter__() for enc, p in soft_paths.items()}
        hard_w = {enc: HardWriter(p, keys, FULL_HW, C, conf_encoding=enc,
                                  conf_thresholds=THRESHOLDS if enc == "thresholds" else None).__enter__()
                  for enc, p in hard_paths.items()}
        hard_ok = {enc: True for enc in hard_paths}
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
            for t in THRESHOLDS:
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
            check(ok, f"hard conf={enc}: labels and thresholded labels at 0.9/0.95/0.99 identical to the official rule "
                      f"(every pixel of {n} images)")

        soft_off_b = sum(f.stat().st_size for f in off_soft.iterdir()) / n
        hard_off_b = sum(f.stat().st_size for f in off_hard.iterdir()) / n
        for enc, p in soft_paths.items():
            b = p.stat().st_size / n
            table.add(f"soft {enc}: MB per image (total for {TRAIN}: {b * TRAIN / 1e9:.2f} GB)",
                      b / 1e6, soft_off_b / 1e6, unit="MB")
        for enc, p in hard_paths.items():
            b = p.stat().st_size / n
            table.add(f"hard conf={enc}: MB per image (total: {b * TRAIN / 1e9:.2f} GB)", b / 1e6, hard_off_b / 1e6,
                      unit="MB")

        def off_soft_read(i):
            return torch.from_numpy(np.load(off_soft / f"{keys[i]}.npy"))

        def off_hard_read(i):  # what the official loader does: label PNG + conf .npy, threshold applied
            lab = np.asarray(Image.open(off_hard / f"{keys[i]}.png")).astype(np.int64)
            lab[np.load(off_hard / f"{keys[i]}_conf.npy") <= 0.95] = 255
            return torch.from_numpy(lab)

        soft_stores = {enc: SoftStore(p, keys, C) for enc, p in soft_paths.items()}
        hard_stores = {enc: HardStore(p, keys, C) for enc, p in hard_paths.items()}
        pairs = [(s.__getitem__, off_soft_read) for s in soft_stores.values()]
        pairs += [(lambda i, s=s: s.thresholded(i, 0.95), off_hard_read) for s in hard_stores.values()]
        for nw in ([0, workers] if workers else [0]):
            rates = read_rates(n, pairs, nw, repeat)
            where = f"{nw} workers" if nw else "in-process (1 core)"
            for enc, (ours, off) in zip(soft_paths, rates):
                table.add(f"soft {enc}: images/s read, {where}, random", ours, off)
            for enc, (ours, off) in zip(hard_paths, rates[len(soft_paths):]):
                table.add(f"hard conf={enc}: images/s read (thresholded 0.95), {where}", ours, off)
            if nw == 0:
                one_core = {"soft float16": rates[0][0], "hard conf=thresholds": rates[-1][0]}
        for what, rate in one_core.items():
            table.add(f"{what}: images/s of 4 workers on 4 cores (4 x 1 core) vs needed on an H200 (estimate)",
                      4 * rate, NEEDED)
    table.note("baseline = the official per-image files written here (soft: float32 .npy; hard: label PNG + "
               "float16 conf .npy), read with the same DataLoader; ratio = ours / official (bytes: lower is better)")
    table.note(f"needed = {NEEDED:g} target images/s: an estimate for DeepLabV2-R101 at 896x512, batch 4, AMP on an "
               "H200 (~7 steps/s), pending the GPU run of benchmarks/train_step.py")
    table.print()


if __name__ == "__main__":
    main()

"""Prototype and rectification kernels: vectorised against per-class loops of the same maths.

``class_means`` (one scatter-add) against a loop over classes (mask, count, sum), and
``prototype_distances`` + ``prototype_weights`` + ``rectify`` against the official
``feat_prototype_distance`` loop (one (N, D, h, w) difference and norm per class). Outputs must
agree (valid masks and rectified labels identical, means and distances to float32 rounding),
else exit status 1. CPU always; CUDA too when a GPU is present.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, best_time, check, parse_args  # noqa: E402

from segcore.methods.rectify import prototype_distances, prototype_weights, rectify  # noqa: E402
from segcore.pseudo.prototypes import class_means  # noqa: E402

C = 19


def loop_class_means(feat, labels, num_classes, min_pixels=10):
    n, d = feat.shape[:2]
    means = feat.new_zeros(n, num_classes, d, dtype=torch.float32)
    valid = torch.zeros(n, num_classes, dtype=torch.bool, device=feat.device)
    for i in range(n):
        f = feat[i].reshape(d, -1).float()
        lab = labels[i].reshape(-1)
        for c in range(num_classes):
            m = lab == c
            k = int(m.sum())
            if k >= min_pixels:
                means[i, c] = f[:, m].sum(1) / k
                valid[i, c] = True
    return means, valid


def loop_distances(feat, protos):
    """The official feat_prototype_distance: one difference and norm per class."""
    n, _, h, w = feat.shape
    out = feat.new_zeros(n, protos.shape[0], h, w)
    for c in range(protos.shape[0]):
        out[:, c] = torch.norm(protos[c].reshape(-1, 1, 1).expand(-1, h, w) - feat, 2, dim=1)
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(device, n, d, h, w, repeat, table):
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(n, d, h, w, generator=g).to(device)
    labels = torch.randint(0, C, (n, h, w), generator=g)
    labels[torch.rand(n, h, w, generator=g) < 0.1] = 255
    labels = labels.to(device)
    protos = torch.randn(C, d, generator=g).to(device)
    soft = F.softmax(torch.randn(n, C, h, w, generator=g) * 3, dim=1).to(device)
    res = {}

    def ours_means():
        res["ours_means"] = class_means(feat, labels, C)
        sync(device)

    def loop_means():
        res["loop_means"] = loop_class_means(feat, labels, C)
        sync(device)

    def ours_rect():
        res["ours_d"] = prototype_distances(feat, protos)
        res["ours_l"] = rectify(soft, prototype_weights(res["ours_d"]), threshold=0.0)
        sync(device)

    def loop_rect():
        res["loop_d"] = loop_distances(feat, protos)
        res["loop_l"] = (F.softmax(-res["loop_d"], dim=1) * soft).argmax(1)
        sync(device)

    tag = f"{device.type} N={n} D={d} {h}x{w}"
    t_om, t_lm = best_time(ours_means, repeat), best_time(loop_means, repeat)
    t_or, t_lr = best_time(ours_rect, repeat), best_time(loop_rect, repeat)
    (m1, v1), (m2, v2) = res["ours_means"], res["loop_means"]
    check(torch.equal(v1, v2), f"{tag}: class_means valid masks identical")
    check(torch.allclose(m1, m2, rtol=1e-4, atol=1e-5), f"{tag}: class_means equal to float32 rounding "
          f"(max |diff| {float((m1 - m2).abs().max()):.2e})")
    dd = float((res["ours_d"] - res["loop_d"]).abs().max())
    check(torch.allclose(res["ours_d"], res["loop_d"], rtol=1e-4, atol=1e-3),
          f"{tag}: distances equal to float32 rounding (max |diff| {dd:.2e})")
    same = float((res["ours_l"] == res["loop_l"]).float().mean())
    check(same == 1.0, f"{tag}: rectified labels identical ({same:.6%} of pixels)")
    table.add(f"{tag}: class_means, images/s", n / t_om, n / t_lm)
    table.add(f"{tag}: distances + rectify, images/s", n / t_or, n / t_lr)


def main():
    args = parse_args(__doc__.splitlines()[0])
    # full: ProDA's stride-8 features of a 896x512 crop (64x112) at batch 2 and D=256 (ASPP output)
    cpu_shape, repeat = ((1, 64, 33, 65), 2) if args.size == "small" else ((2, 256, 64, 112), 3)
    table = Table("prototype and rectification kernels: vectorised vs per-class loop")
    run(torch.device("cpu"), *cpu_shape, repeat, table)
    if torch.cuda.is_available():
        n, d, h, w = (4, 256, 128, 256) if args.size == "full" else cpu_shape
        run(torch.device("cuda"), n, d, h, w, repeat + 2, table)
    else:
        table.note("no GPU in this run: CUDA rows skipped")
    table.note(f"{torch.get_num_threads()} torch CPU threads; ratio = ours / loop (speed-up)")
    table.print()


if __name__ == "__main__":
    main()

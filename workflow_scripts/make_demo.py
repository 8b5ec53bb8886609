"""Write a synthetic demo dataset in the real on-disk format of GTA5, SYNTHIA or Cityscapes.

    python workflow_scripts/make_demo.py --dataset gta5 --root results/demo/GTA5 \
        --count 100 [--val-count 50] [--size 160 88] [--seed 0] [--shift 1.0]

--count is the number of images (the train split for Cityscapes); --val-count is the
Cityscapes val split (must be 0 for the other datasets). Without --size each dataset
takes its default size. {root}/.demo_complete is written last.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from segcore.data import demo
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from segcore.data import demo


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=("gta5", "synthia", "cityscapes"),
                   help="which demo dataset to render, in its released layout")
    p.add_argument("--root", required=True, help="dataset root to create")
    p.add_argument("--count", required=True, type=int, help="images (Cityscapes: train images)")
    p.add_argument("--val-count", type=int, default=0, help="Cityscapes val images")
    p.add_argument("--size", nargs=2, type=int, metavar=("W", "H"), default=None,
                   help="image size in pixels (default: the dataset's demo size)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the scenes")
    p.add_argument("--shift", type=float, default=1.0, help="domain-shift strength (0 = no appearance shift)")
    args = p.parse_args(argv)
    if args.dataset != "cityscapes" and args.val_count:
        p.error("--val-count is only for --dataset cityscapes")
    kw = dict(seed=args.seed, shift=args.shift)
    if args.size:
        kw["size"] = tuple(args.size)
    if args.dataset == "gta5":
        demo.make_gta5(args.root, args.count, **kw)
    elif args.dataset == "synthia":
        demo.make_synthia(args.root, args.count, **kw)
    else:
        demo.make_cityscapes(args.root, args.count, args.val_count, **kw)
    return 0


if __name__ == "__main__":
    sys.exit(main())

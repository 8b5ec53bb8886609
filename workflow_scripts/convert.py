"""Convert a raw GTA5 / SYNTHIA / Cityscapes tree to trainId labels + manifest.csv + class_stats.json.

    python workflow_scripts/convert.py --dataset gta5 --root /data/gta5 --out results/data/gta5 \
        [--workers 8] [--size-mismatch error|resize_label] [--no-progress]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from segcore.data.convert import SIZE_MISMATCH_MODES, convert_dataset, default_workers
    from segcore.data.io import BadInputError
    from segcore.data.layouts import DATASETS
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from segcore.data.convert import SIZE_MISMATCH_MODES, convert_dataset, default_workers
    from segcore.data.io import BadInputError
    from segcore.data.layouts import DATASETS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=DATASETS, help="which released layout ROOT holds")
    p.add_argument("--root", required=True, help="raw dataset root (only read)")
    p.add_argument("--out", required=True, help="output folder (labels/, manifest.csv, class_stats.json)")
    p.add_argument("--workers", type=int, default=None, help="conversion processes (default: usable CPUs)")
    p.add_argument("--size-mismatch", default="error", choices=SIZE_MISMATCH_MODES,
                   help="label size differs from image size: fail, or resize the label (nearest)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        convert_dataset(args.dataset, args.root, args.out, workers=args.workers or default_workers(),
                        size_mismatch=args.size_mismatch, progress=not args.no_progress)
    except (BadInputError, OSError) as exc:  # OSError: e.g. disk full while writing
        print(f"convert.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

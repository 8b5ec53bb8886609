"""Arguments and pre-flight checks shared by DDB's training scripts (``workflow_scripts/train_ddb_*.py``)."""
from __future__ import annotations

import json
from pathlib import Path

from ... import preflight


def add_data_arguments(p) -> None:
    p.add_argument("--source", required=True,
                   help="JSON: manifest, split, resize of the labelled source set, or a list of them (multi-source)")
    p.add_argument("--target", required=True, help="JSON: manifest, split, resize of the target train set")
    p.add_argument("--num-classes", type=int, required=True, help="classes of the chain (19, or 16 for SYNTHIA)")
    p.add_argument("--options", required=True, help="JSON of the stage's options (config ddb.st / ddb.ckd)")
    p.add_argument("--seed", type=int, required=True, help="seed of the data order, views and draws")
    p.add_argument("--arch", required=True, help="DDB network preset (resnet101_v1c, small_v1c)")
    p.add_argument("--round", type=int, default=1, help="DDB round (1 starts from ImageNet)")
    p.add_argument("--imagenet", default=None, help="resnet_v1c ImageNet weights (omit: random init)")


def check_data_arguments(a) -> dict:
    """Options and data checked before any work (one-line errors)."""
    opts = json.loads(a.options)
    preflight.check_options(opts, "--options")
    preflight.check_data(json.loads(a.source), "--source", batch_size=opts.get("batch_size"))
    preflight.check_data(json.loads(a.target), "--target", batch_size=opts.get("batch_size"), labels=False)
    from ...models.ddb_net import DDB_ARCHS
    if a.arch not in DDB_ARCHS:
        raise ValueError(f"--arch: unknown DDB arch {a.arch!r} (known: {', '.join(sorted(DDB_ARCHS))})")
    if a.round < 1:
        raise ValueError(f"--round: must be >= 1, got {a.round}")
    if a.imagenet and not Path(a.imagenet).is_file():
        raise ValueError(f"{a.imagenet}: ImageNet weights not found")
    return opts


__all__ = ["add_data_arguments", "check_data_arguments"]

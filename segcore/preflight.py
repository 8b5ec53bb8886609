"""Checks a workflow script runs before any training or inference starts, and the guard
that turns a bad input into one line on stderr.

Every check raises a one-line :class:`~segcore.data.io.BadInputError` (a ``ValueError``)
or ``ValueError`` naming the file or option and what is wrong:

- ``check_data``: the manifest exists, has the columns, the split is not empty, every
  image (and label) it lists exists, and the split holds at least ``batch_size`` images;
- ``check_options``: positive learning rate, iterations and batch size;
- ``check_checkpoint``: the file is a segcore checkpoint of the expected class count
  (and architecture), read from its ``meta`` without building the model;
- ``check_store``: a pseudo-label store is complete and belongs to the image list and
  class count of the run.

``run_script(main, name)`` calls a script's ``main()`` and reports a ``ValueError`` or
``OSError`` (bad input, disk full, ...) as ``<name>: error: <message>`` on one line, exit
status 2. ``SEGCORE_TRACEBACK=1`` prints the traceback first.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from .data.io import BadInputError


def one_line(exc: BaseException) -> str:
    """The exception's message as a single line (its first line, else its type)."""
    text = str(exc).strip()
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = f"missing key {exc.args[0]!r}"
    return text.splitlines()[0] if text else type(exc).__name__


def run_script(main, name: str | None = None, argv=None) -> int:
    """Run ``main`` (taking ``argv`` when given); a ValueError / OSError becomes one line, exit 2."""
    name = name or Path(sys.argv[0]).name
    try:
        rc = main() if argv is None else main(argv)
    except (ValueError, OSError) as exc:
        if os.environ.get("SEGCORE_TRACEBACK"):
            traceback.print_exc()
        print(f"{name}: error: {one_line(exc)}", file=sys.stderr, flush=True)
        return 2
    return int(rc or 0)


def check_options(opts: dict, where: str = "options") -> None:
    """lr > 0, iterations >= 1, batch_size >= 1 where present."""
    for key, lowest, strict in (("lr", 0, True), ("iterations", 1, False), ("batch_size", 1, False)):
        if key not in opts or opts[key] is None:
            continue
        v = opts[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{where} key '{key}': expected a number, got {v!r}")
        if (strict and v <= lowest) or (not strict and v < lowest):
            raise ValueError(f"{where} key '{key}': must be {'>' if strict else '>='} {lowest}, got {v!r}")


def check_data(spec, what: str = "data", batch_size: int | None = None, labels: bool = True) -> list[str]:
    """Validate one data spec ({"manifest", "split", ...}), or a list of them (a multi-source
    union, whose images together must fill a batch); returns the split's keys."""
    from .data.datasets import read_manifest

    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"{what}: empty list of data specs")
        keys = [k for i, s in enumerate(spec) for k in check_data(s, f"{what}[{i}]", labels=labels)]
        if batch_size is not None and len(keys) < int(batch_size):
            raise BadInputError(f"{what}: {len(keys)} image(s) in all, fewer than the batch size {int(batch_size)}")
        return keys
    if not isinstance(spec, dict) or "manifest" not in spec:
        raise ValueError(f"{what}: data spec lacks 'manifest' (got {spec!r})")
    manifest, split = Path(spec["manifest"]), spec.get("split")
    df = read_manifest(manifest, split)
    columns = ("image", "label") if labels else ("image",)
    for column in columns:
        for path in df[column]:
            if not path or not os.path.isfile(path):
                kind = "image" if column == "image" else "label"
                raise BadInputError(f"{path}: {kind} listed in {manifest} not found")
    if batch_size is not None and len(df) < int(batch_size):
        raise BadInputError(f"{manifest}: split {split!r} has {len(df)} image(s), fewer than the batch size "
                            f"{int(batch_size)} of {what}")
    return list(df["key"])


def checkpoint_meta(path) -> dict:
    """The ``meta`` of a segcore checkpoint, without building the model (one-line errors)."""
    import torch

    from .models.checkpoint import REQUIRED_META
    from .models.weights import _first_line

    if not Path(path).is_file():
        raise ValueError(f"{path}: checkpoint not found")
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a segcore checkpoint (not a torch.save archive)")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # not a zip-format file: mmap is refused, read it whole
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is "not a checkpoint"
        raise ValueError(f"{path}: not a segcore checkpoint ({_first_line(e)})") from None
    if not (isinstance(obj, dict) and isinstance(obj.get("model"), dict) and isinstance(obj.get("meta"), dict)):
        raise ValueError(f"{path}: not a segcore checkpoint (expected a dict with 'model' and 'meta')")
    lacking = [k for k in REQUIRED_META if k not in obj["meta"]]
    if lacking:
        raise ValueError(f"{path}: not a segcore checkpoint (meta lacks {', '.join(lacking)})")
    return obj["meta"]


def check_checkpoint(path, num_classes: int | None = None, arch: str | None = None) -> dict:
    """The checkpoint's meta, after checking its class count and architecture."""
    meta = checkpoint_meta(path)
    if num_classes is not None and meta["num_classes"] != num_classes:
        raise ValueError(f"{path}: checkpoint has {meta['num_classes']} classes, the chain has {num_classes}")
    if arch is not None and meta["arch"] != arch:
        raise ValueError(f"{path}: architecture mismatch: checkpoint is arch {meta['arch']!r}, expected {arch!r}")
    return meta


def check_store(path, kind: str, keys, num_classes: int) -> None:
    """A complete ``kind`` ("soft" / "hard") pseudo-label store of ``keys`` and ``num_classes``."""
    from .pseudo.store import HardStore, SoftStore

    cls = {"soft": SoftStore, "hard": HardStore}[kind]
    cls(path, expect_keys=keys, expect_classes=num_classes).close()


__all__ = ["BadInputError", "run_script", "one_line", "check_options", "check_data", "checkpoint_meta",
           "check_checkpoint", "check_store"]


def add_source_target_arguments(parser) -> None:
    """The arguments of a self-training stage's script: both sets, class count, options, seed."""
    parser.add_argument("--source", required=True,
                        help="JSON: manifest, split, resize of the labelled source set, or a list (multi-source)")
    parser.add_argument("--target", required=True, help="JSON: manifest, split, resize of the target train set")
    parser.add_argument("--num-classes", type=int, required=True, help="classes of the chain (19, or 16 for SYNTHIA)")
    parser.add_argument("--options", required=True, help="JSON of the stage's options")
    parser.add_argument("--seed", type=int, required=True, help="random seed of the stage (data order, views, init)")
    parser.add_argument("--lab-stats", default=None,
                        help="LAB statistics of the target train set (rule lab_stats), read when the options"
                        " set lab_transfer")


def check_source_target(args) -> tuple[dict, list]:
    """Check the arguments of ``add_source_target_arguments``; return the options and the
    target image keys (which the stage's pseudo-label store must match)."""
    opts = json.loads(args.options)
    check_options(opts, "--options")
    if opts.get("lab_transfer") and not args.lab_stats:
        raise ValueError("--options: lab_transfer is on but no --lab-stats file was given (rule lab_stats)")
    check_data(json.loads(args.source), "--source", batch_size=opts.get("batch_size"))
    keys = check_data(json.loads(args.target), "--target", batch_size=opts.get("batch_size"), labels=False)
    if opts.get("lab_transfer"):
        from .data.lab_transfer import read_lab_stats

        read_lab_stats(args.lab_stats, keys)
    return opts, keys

"""Convert a raw GTA5 / SYNTHIA / Cityscapes tree to 19-class trainId labels plus a manifest.

``convert_dataset`` first validates the folder structure (``layouts.scan``: missing root or
subfolder, empty split, image without label) and only then converts, in a ``multiprocessing``
pool, every label to an 8-bit grey PNG of the 19 Cityscapes trainIds (255 = ignore), checking
each file on the way (it decodes; a SYNTHIA label is 16-bit; every id is known; the label has
the image's size, read from the image header without decoding the image).

Outputs under ``out_dir`` (the raw tree is only read):

- ``labels/<key>.png``: converted labels; ``key`` is the label path relative to the label
  folder without the raw suffix (``00001``, ``train/aachen/aachen_000000_000019``);
- ``label_counts.csv``: per label, its pixel count of each of the 19 classes and of ignore
  (for class-balanced sampling or checks), one row per manifest row, same order;
- ``class_stats.json``: ``{"dataset", "classes", "splits": {split: {"images", "pixels", "ignored"}}}``;
- ``manifest.csv``: ``key,image,label,split,width,height``; written last, so its presence
  means the conversion is complete.

The 16-class SYNTHIA-protocol view is not written: loaders apply ``classes.remap_lut(16)``.
"""
from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_path, write_json
from . import classes
from .io import BadInputError, read_label8, read_synthia_label, write_png
from .layouts import DATASETS, RawPair, scan

MANIFEST = "manifest.csv"
CLASS_STATS = "class_stats.json"
LABEL_COUNTS = "label_counts.csv"
MANIFEST_COLUMNS = ("key", "image", "label", "split", "width", "height")
SIZE_MISMATCH_MODES = ("error", "resize_label")


def _known_mask(known: frozenset[int], size: int) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[sorted(known)] = True
    return mask


# dataset -> (label reader, raw id -> trainId LUT, mask of known raw ids)
_LABEL_SPECS = {
    "gta5": (read_label8, classes.CITYSCAPES_LUT, _known_mask(classes.CITYSCAPES_KNOWN_LABELIDS, 256)),
    "cityscapes": (read_label8, classes.CITYSCAPES_LUT, _known_mask(classes.CITYSCAPES_KNOWN_LABELIDS, 256)),
    "synthia": (read_synthia_label, classes.SYNTHIA_LUT19, _known_mask(classes.SYNTHIA_KNOWN_IDS, 65536)),
}


def image_size(path) -> tuple[int, int]:
    """(width, height) of an image from its header; the pixel data is not decoded."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: file not found")
    try:
        with Image.open(path) as img:  # lazy: reads the header only
            return img.size
    except Exception as exc:
        raise BadInputError(f"{path}: cannot read image header ({exc})") from None


_PIL_LUTS: dict[int, list] = {}


def _pil_lut(lut: np.ndarray) -> list:
    """The 256-entry LUT as the list Image.point takes (built once per LUT)."""
    key = id(lut)
    if key not in _PIL_LUTS:
        _PIL_LUTS[key] = lut[:256].tolist()
    return _PIL_LUTS[key]


def histogram_u8(array: np.ndarray) -> np.ndarray:
    """Exact 256-bin int64 histogram of a C-contiguous uint8 array.

    Pillow's C histogram of the bytes viewed as 4-band RGBA pixels (no copy), the four band
    histograms summed: each step then counts four neighbouring pixels into four separate
    tables, so the long runs of one id in a label do not serialise on one counter. About 3x
    ``Image.histogram`` of the grey image and 5x ``np.bincount`` on 2 Mpixel labels.
    """
    flat = array.reshape(-1)
    quads = flat.size // 4
    hist = np.zeros(256, np.int64)
    if quads:
        rgba = Image.frombuffer("RGBA", (quads, 1), flat[: 4 * quads], "raw", "RGBA", 0, 1)
        hist += np.asarray(rgba.histogram(), dtype=np.int64).reshape(4, 256).sum(0)
    if flat.size > 4 * quads:
        hist += np.bincount(flat[4 * quads:], minlength=256)
    return hist


def _unknown_ids(dataset: str, label_path, hist: np.ndarray, known: np.ndarray) -> None:
    bad = np.flatnonzero((hist > 0) & ~known[: hist.size])
    if bad.size:
        shown = ", ".join(str(int(i)) for i in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise BadInputError(f"{label_path}: unknown {dataset} label id(s) {shown}")


def convert_label(dataset: str, image_path, label_path, out_path,
                  size_mismatch: str = "error") -> tuple[np.ndarray, int, int, int]:
    """Convert one label file; returns (pixel counts of the 19 classes, ignored pixels, width, height).

    One histogram of the raw ids (the unknown-id check and, through the LUT, the trainId
    counts) and one Pillow LUT pass, both in C; SYNTHIA's 16-bit ids go the same way once
    their maximum shows they fit a byte (every known SYNTHIA id does).
    """
    reader, lut, known = _LABEL_SPECS[dataset]
    raw = reader(label_path)  # BadInputError naming the file if it does not decode / is not 16-bit
    if raw.dtype == np.uint16:
        raw = np.ascontiguousarray(raw)  # channel 0 of the decoded HxWx3: one strided gather
        if raw.size and int(raw.max()) < 256:
            raw = raw.astype(np.uint8)  # values unchanged
    if raw.dtype == np.uint8:
        raw = np.ascontiguousarray(raw)
        hist = histogram_u8(raw)
        _unknown_ids(dataset, label_path, hist, known)
        train = Image.fromarray(raw).point(_pil_lut(lut))  # a Pillow image, written as it is
    else:  # 16-bit ids above 255: the numpy path (only unknown ids get here with the current tables)
        hist = np.bincount(raw.ravel(), minlength=known.size)  # uint16: hist.size == known.size
        _unknown_ids(dataset, label_path, hist, known)
        train = Image.fromarray(lut[raw])
    width, height = image_size(image_path)
    if train.size != (width, height):
        lw, lh = train.size
        if size_mismatch != "resize_label":
            raise BadInputError(
                f"{label_path}: label size {lw}x{lh} differs from image size {width}x{height} ({image_path});"
                " pass size_mismatch='resize_label' to resize such labels (nearest neighbour)")
        train = train.resize((width, height), Image.NEAREST)
        counts = histogram_u8(np.asarray(train))
    else:  # counts of the trainIds straight from the raw-id histogram (no second pass over pixels)
        counts = np.bincount(lut[: hist.size], weights=hist, minlength=256).astype(np.int64)
    write_png(out_path, train)
    return counts[: len(classes.CLASSES19)].astype(np.int64), int(counts[classes.IGNORE_INDEX]), width, height


def _convert_task(task):
    dataset, image_path, label_path, out_path, size_mismatch = task
    return convert_label(dataset, image_path, label_path, out_path, size_mismatch)


def _write_csv(path, header, rows) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def convert_dataset(dataset: str, root, out_dir, workers: int = 1, size_mismatch: str = "error",
                    progress: bool = True) -> None:
    """Validate a raw dataset tree, then convert all its labels (see the module docstring)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if size_mismatch not in SIZE_MISMATCH_MODES:
        raise ValueError(f"size_mismatch must be one of {', '.join(SIZE_MISMATCH_MODES)}, got {size_mismatch!r}")
    root, out_dir = Path(root), Path(out_dir)
    pairs: list[RawPair] = scan(dataset, root)  # all structural checks before any conversion
    if _is_within(out_dir, root):
        raise BadInputError(f"{out_dir}: output folder lies inside the raw dataset root {root}; "
                            "the raw tree is read-only")

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (MANIFEST, CLASS_STATS, LABEL_COUNTS):  # a stale manifest must not claim completeness
        (out_dir / name).unlink(missing_ok=True)

    label_paths = [out_dir / "labels" / f"{p.key}.png" for p in pairs]
    tasks = [(dataset, str(root / p.image), str(root / p.label), str(out), size_mismatch)
             for p, out in zip(pairs, label_paths)]
    workers = max(1, min(int(workers), len(tasks)))

    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc=f"convert {dataset}", unit="label", file=sys.stderr, disable=not progress,
               mininterval=0.1 if sys.stderr.isatty() else 30.0)  # a log file gets a line every 30 s
    results = []
    try:
        if workers == 1:
            for task in tasks:
                results.append(_convert_task(task))
                bar.update()
        else:
            import multiprocessing

            if dataset == "synthia":  # forked workers then inherit torchvision instead of importing it each
                import torchvision.io  # noqa: F401

            chunk = max(1, min(32, len(tasks) // (workers * 8)))
            with multiprocessing.get_context().Pool(workers) as pool:
                for res in pool.imap(_convert_task, tasks, chunksize=chunk):
                    results.append(res)
                    bar.update()
    finally:
        bar.close()

    names = classes.CLASSES19
    splits: dict[str, dict] = {}
    manifest_rows, count_rows = [], []
    for pair, label_path, (counts, ignored, width, height) in zip(pairs, label_paths, results):
        s = splits.setdefault(pair.split, {"images": 0, "pixels": np.zeros(len(names), np.int64), "ignored": 0})
        s["images"] += 1
        s["pixels"] += counts
        s["ignored"] += ignored
        manifest_rows.append((pair.key, str(root / pair.image), str(label_path), pair.split, width, height))
        count_rows.append((pair.key, pair.split, *(int(c) for c in counts), ignored))
    stats = {
        "dataset": dataset,
        "classes": list(names),
        "splits": {k: {"images": v["images"], "pixels": [int(c) for c in v["pixels"]], "ignored": int(v["ignored"])}
                   for k, v in splits.items()},
    }
    _write_csv(out_dir / LABEL_COUNTS, ("key", "split", *names, "ignored"), count_rows)
    write_json(out_dir / CLASS_STATS, stats)
    _write_csv(out_dir / MANIFEST, MANIFEST_COLUMNS, manifest_rows)  # last: its presence means complete


def default_workers() -> int:
    """Usable CPU count (respects the affinity mask, e.g. a Slurm allocation)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)

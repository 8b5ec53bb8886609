"""Datasets over a converted manifest, and an endless, reproducible batch iterator.

``SegmentationDataset`` reads the ``manifest.csv`` that ``convert.convert_dataset`` writes.
Images come back as float32 [3,H,W] in [0, 1] (the official normalisation: /255, no
mean/std); labels as int64 [H,W] in the chain's trainIds (19, or 16 through
``classes.remap_lut(16)``; 255 = ignore).

Reproducibility: ``infinite_loader`` hands the dataset ``(index, view_seed)`` pairs; the
view of a sample is drawn from a generator seeded with ``view_seed``, itself drawn from the
epoch's generator (``seed + epoch``). A run's views therefore depend on the seed only, not
on the number of loader workers. A plain integer index draws from torch's global RNG (in a
DataLoader worker, seeded per worker by the DataLoader).
"""
from __future__ import annotations

import bisect
import itertools
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import classes
from .io import BadInputError, read_label8, read_rgb
from .transforms import WeakView

MANIFEST_COLUMNS = ("key", "image", "label", "split", "width", "height")


def read_manifest(manifest, split: str | None = None, need_labels: bool = True):
    """The manifest's rows (pandas DataFrame) of ``split`` (all rows when None), validated."""
    import pandas as pd

    manifest = Path(manifest)
    if not manifest.is_file():
        raise BadInputError(f"{manifest}: manifest not found (run the conversion first)")
    try:
        df = pd.read_csv(manifest, dtype={"key": str, "image": str, "label": str, "split": str}, keep_default_na=False)
    except Exception as exc:
        raise BadInputError(f"{manifest}: cannot read manifest ({exc})") from None
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise BadInputError(f"{manifest}: manifest lacks column(s) {', '.join(missing)}")
    if split is not None:
        df = df[df["split"] == split]
    if df.empty:
        have = ", ".join(sorted(set(pd.read_csv(manifest, usecols=["split"], dtype=str)["split"]))) or "none"
        raise BadInputError(f"{manifest}: no rows for split {split!r} (splits present: {have})")
    return df.reset_index(drop=True)


def _writable(a: np.ndarray) -> np.ndarray:
    """Pillow's arrays are read-only; torch.from_numpy wants a writable one."""
    return a if a.flags.writeable and a.flags.c_contiguous else np.array(a, order="C")


class SegmentationDataset(torch.utils.data.Dataset):
    """Images (and labels) of one split of a converted dataset.

    ``resize`` (W, H): images are always resized to it (bilinear), labels too (nearest)
    unless ``resize_label`` is False (evaluation at the label's native size). ``transform``
    (a ``WeakView``) is applied after the resize; its parameters come back as ``"view"``.
    """

    def __init__(self, manifest, split: str | None, num_classes: int, resize: tuple[int, int] | None = None,
                 resize_label: bool = True, transform: WeakView | None = None, with_labels: bool = True,
                 limit: int | None = None):
        classes.class_names(num_classes)  # validates num_classes
        self.manifest = Path(manifest)
        self.split = split
        self.num_classes = num_classes
        self.resize = None if resize is None else (int(resize[0]), int(resize[1]))
        self.resize_label = resize_label
        self.transform = transform
        self.with_labels = with_labels
        df = read_manifest(manifest, split)
        if limit is not None:
            df = df.iloc[: int(limit)]
        self.keys = list(df["key"])
        self.images = list(df["image"])
        self.labels = list(df["label"])
        self.sizes = list(zip(df["width"].astype(int), df["height"].astype(int)))
        self._lut = None if num_classes == 19 else classes.remap_lut(num_classes)

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return (f"SegmentationDataset({str(self.manifest)!r}, split={self.split!r}, n={len(self)}, "
                f"num_classes={self.num_classes}, resize={self.resize}, transform={self.transform!r})")

    def load_image(self, index: int) -> torch.Tensor:
        img = read_rgb(self.images[index])
        if self.resize is not None and (img.shape[1], img.shape[0]) != self.resize:
            img = np.asarray(Image.fromarray(img).resize(self.resize, Image.BILINEAR))
        return torch.from_numpy(_writable(img)).permute(2, 0, 1).float().div_(255.0)

    def load_label(self, index: int) -> torch.Tensor:
        lab = read_label8(self.labels[index])
        if self.resize is not None and self.resize_label and (lab.shape[1], lab.shape[0]) != self.resize:
            lab = np.asarray(Image.fromarray(lab).resize(self.resize, Image.NEAREST))
        if self._lut is not None:
            lab = self._lut[lab]
        return torch.from_numpy(_writable(lab)).long()

    def __getitem__(self, item):
        if isinstance(item, (tuple, list)):
            index, view_seed = int(item[0]), int(item[1])
        else:
            index, view_seed = int(item), None
        if index < 0:
            index += len(self)
        sample = {"image": self.load_image(index), "index": index}
        label = self.load_label(index) if self.with_labels else None
        if self.transform is not None:
            gen = None if view_seed is None else torch.Generator().manual_seed(view_seed)
            sample["image"], label, sample["view"] = self.transform(sample["image"], label, generator=gen)
        if label is not None:
            sample["label"] = label
        return sample


class UnionSet(torch.utils.data.Dataset):
    """Several datasets drawn as one, the source of a multi-source chain: item i of the union is
    item i of their concatenation (the official multi-source ``ConcatDataset``), so the
    loader's shuffle draws uniformly over the union of the images. Takes the same
    ``index`` or ``(index, view_seed)`` items as its parts."""

    def __init__(self, parts):
        self.parts = list(parts)
        if not self.parts:
            raise ValueError("UnionSet needs at least one dataset")
        self.offsets = list(itertools.accumulate(len(p) for p in self.parts))
        self.keys = [k for p in self.parts for k in getattr(p, "keys", [])]

    def __len__(self) -> int:
        return self.offsets[-1]

    def __repr__(self) -> str:
        return f"UnionSet({', '.join(repr(p) for p in self.parts)})"

    def __getitem__(self, item):
        index, seed = (item if isinstance(item, (tuple, list)) else (item, None))
        index = int(index) % len(self)
        part = bisect.bisect_right(self.offsets, index)
        local = index - (self.offsets[part - 1] if part else 0)
        sample = self.parts[part][(local, seed) if seed is not None else local]
        sample["index"] = index
        return sample


def open_sets(specs, num_classes: int, **kwargs):
    """The dataset of one data spec ({"manifest", "split", "resize"}), or of a list of them (a
    multi-source chain's source: their ``UnionSet``, each part at its own resize).
    ``kwargs`` go to every ``SegmentationDataset`` (transform, with_labels, ...)."""
    parts = [SegmentationDataset(s["manifest"], s.get("split"), num_classes, resize=s.get("resize"), **kwargs)
             for s in ([specs] if isinstance(specs, dict) else specs)]
    return parts[0] if len(parts) == 1 else UnionSet(parts)


class _EndlessBatches:
    """Batch sampler yielding lists of (index, view_seed) forever, reshuffled each epoch."""

    def __init__(self, n: int, batch_size: int, seed: int, drop_last: bool, sampler=None, start: int = 0,
                 shard: slice | None = None):
        self.n, self.batch_size, self.seed, self.drop_last, self.sampler = n, batch_size, seed, drop_last, sampler
        self.start, self.shard = start, shard

    def __iter__(self):
        skip = self.start
        for epoch in itertools.count():
            gen = torch.Generator().manual_seed(self.seed + epoch)
            if self.sampler is None:
                order = torch.randperm(self.n, generator=gen).tolist()
            else:
                if hasattr(self.sampler, "set_epoch"):
                    self.sampler.set_epoch(epoch)
                order = [int(i) for i in self.sampler]
            seeds = torch.randint(0, 2**62, (len(order),), generator=gen).tolist()
            pairs = list(zip(order, seeds))
            stop = len(pairs) - len(pairs) % self.batch_size if self.drop_last else len(pairs)
            if stop == 0:
                raise ValueError(f"infinite_loader: an epoch holds {len(pairs)} sample(s), "
                                 f"fewer than batch_size={self.batch_size} with drop_last")
            for begin in range(0, stop, self.batch_size):
                if skip:  # resume: skip already consumed batches without loading them
                    skip -= 1
                    continue
                batch = pairs[begin:begin + self.batch_size]
                yield batch if self.shard is None else batch[self.shard]


def infinite_loader(dataset, batch_size: int, seed: int, num_workers: int = 0, drop_last: bool = True, sampler=None,
                    pin_memory: bool = False, start: int = 0, rank: int = 0, world_size: int = 1):
    """Yield batches (default_collate dicts) forever; epoch ``e`` is shuffled with ``seed + e``.

    ``sampler`` (e.g. a ``DistributedSampler``) replaces the shuffle; its ``set_epoch`` is
    called each epoch. Views are seeded per sample (see the module docstring). ``start``
    skips that many batches without loading them (resume at iteration ``start``: the
    batches that follow are the ones an uninterrupted run would have seen).

    Data parallelism: ``batch_size`` is the GLOBAL batch; with ``world_size`` > 1 this
    process gets the contiguous slice ``rank`` (``batch_size / world_size`` samples) of each
    global batch, which is built exactly as with one process. Only that slice is loaded.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} / world_size {world_size} out of range")
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} is not divisible by the number of processes {world_size} "
                         f"(the batch size is global: choose a process count that divides it)")
    local = batch_size // world_size
    shard = None if world_size == 1 else slice(rank * local, (rank + 1) * local)
    batches = _EndlessBatches(len(dataset), batch_size, int(seed), drop_last, sampler, int(start), shard)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=pin_memory,
        persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(int(seed)),
    )
    return iter(loader)


def inference_loader(dataset, batch_size: int, num_workers: int = 0, device="cpu"):
    """The images of ``dataset`` in order, every one once, in batches (evaluation, pseudo-labels,
    prototypes): ``num_workers`` loader workers decode ahead of the model; pinned memory when
    the batches go to a GPU."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False,
                                       num_workers=num_workers, pin_memory=torch.device(device).type == "cuda")

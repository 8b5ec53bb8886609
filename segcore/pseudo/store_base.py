"""Shared machinery of the pseudo-label stores: one chunked, compressed HDF5 file per set.

The official code writes one file per image (docs/protocol.md, Pseudo-label files): a float32 softmax
``.npy`` at output stride 8 (2.4 MiB per Cityscapes image, 7 GiB in all) for the soft labels,
and a label PNG plus a float16 full-resolution confidence ``.npy`` (4 MiB per image, 11.6 GiB
per stage) for the hard ones. Here each set is one HDF5 file, one chunk per image; the soft
store lives in ``segcore.pseudo.soft_store``, the hard one in ``segcore.pseudo.hard_store``.

Files are written to a temporary name next to the target and renamed when complete
(``segcore.atomic.atomic_path``); a store is accepted only if it carries ``complete=True``,
the expected class count and the SHA-256 of the expected, ordered key list. Stores open the
HDF5 file lazily in each process (safe in DataLoader workers, forked or spawned).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import torch

from ..atomic import atomic_path

IGNORE = 255
FORMAT_VERSION = 1
_GZIP = {"compression": "gzip", "compression_opts": 4}
_LABEL_GZIP = {"compression": "gzip", "compression_opts": 6}  # labels: level 6 is ~30% smaller, still fast


def codec(shuffle: bool) -> dict:
    """The chunk codec of the soft and hard stores: zstd level 9 inside Blosc (``hdf5plugin``),
    with Blosc's byte shuffle for multi-byte values (float16 probabilities, uint16 confidence
    codes), none for bytes (labels). Zstd decodes at the same speed whatever the level, so the
    highest cheap level costs only write time. Against gzip (level 4, with HDF5's Fletcher-32
    checksum, the codec of format 1 stores, still read): bytes at or below gzip's, reads several
    times faster (benchmarks/README.md, Pseudo-label stores). No Fletcher-32: HDF5 checks it
    byte by byte, about 4 ms per Cityscapes soft label, more than the decompression; a store is
    still accepted only when written completely (``complete`` and the key hash, below).
    Reading needs the filter registered: importing this module (``hdf5plugin``) does it."""
    return dict(hdf5plugin.Blosc(cname="zstd", clevel=9,
                                 shuffle=hdf5plugin.Blosc.SHUFFLE if shuffle else hdf5plugin.Blosc.NOSHUFFLE))


def keys_digest(keys) -> str:
    """SHA-256 of the ordered key list (what a store records to identify its image list)."""
    return hashlib.sha256(json.dumps([str(k) for k in keys], ensure_ascii=False).encode("utf-8")).hexdigest()


def _as_numpy(x, dtype=None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return x if dtype is None else x.astype(dtype, copy=False)


def _indices(index_or_batch, n_images: int, path) -> tuple[np.ndarray, bool]:
    """(indices, batched) from an int or a sequence / 1-D tensor of ints."""
    if isinstance(index_or_batch, torch.Tensor):
        index_or_batch = index_or_batch.tolist()
    batched = not np.isscalar(index_or_batch) and np.ndim(index_or_batch) > 0
    idx = np.atleast_1d(np.asarray(index_or_batch))
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{path}: write() wants an int index or a 1-D sequence of ints, got {index_or_batch!r}")
    idx = np.where(idx < 0, idx + n_images, idx)
    if idx.size and (idx.min() < 0 or idx.max() >= n_images):
        raise ValueError(f"{path}: index out of range for {n_images} images: {index_or_batch!r}")
    return idx.astype(np.int64), batched


def _check_keys(keys) -> list[str]:
    keys = [str(k) for k in keys]
    if not keys:
        raise ValueError("a pseudo-label store needs at least one key")
    if len(set(keys)) != len(keys):
        raise ValueError("pseudo-label store keys must be unique")
    return keys


# --------------------------------------------------------------------------------------------
# writing

class _Writer:
    """Temporary HDF5 file next to ``path``; attributes and rename on successful exit."""

    kind = ""

    def __init__(self, path, keys):
        self.path = Path(path)
        self.keys = _check_keys(keys)
        self._written = np.zeros(len(self.keys), dtype=bool)
        self._h5 = None
        self._atomic = None

    def __len__(self) -> int:
        return len(self.keys)

    def __enter__(self):
        if self._atomic is not None:
            raise RuntimeError(f"{self.path}: writer already entered")
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        try:
            self._h5 = h5py.File(tmp, "w")
            self._h5.create_dataset("keys", data=np.array(self.keys, dtype=object), dtype=h5py.string_dtype())
            self._create(self._h5)
        except BaseException as exc:
            self._abort(exc)
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            try:
                missing = int((~self._written).sum())
                if missing:
                    raise ValueError(f"{self.path}: {missing} of {len(self.keys)} images were never written "
                                     f"(first missing: {self.keys[int(np.argmin(self._written))]!r})")
                attrs = self._h5.attrs
                attrs.update(self._attrs())
                attrs["format"] = f"segcore-{self.kind}-pseudo-labels"
                attrs["format_version"] = FORMAT_VERSION
                attrs["count"] = len(self.keys)
                attrs["keys_sha256"] = keys_digest(self.keys)
                attrs["complete"] = True
                self._h5.close()
                self._h5 = None
                self._atomic.__exit__(None, None, None)  # rename to the final name
                self._atomic = None
            except BaseException as err:
                self._abort(err)
                raise
            return False
        self._abort(exc)
        return False

    def _abort(self, exc):
        if self._h5 is not None:
            try:
                self._h5.close()
            except Exception:
                pass
            self._h5 = None
        if self._atomic is not None:
            atomic, self._atomic = self._atomic, None
            atomic.__exit__(type(exc), exc, exc.__traceback__)  # deletes the temporary file

    def _require_open(self):
        if self._h5 is None:
            raise RuntimeError(f"{self.path}: write() outside the writer's `with` block")

    def _create(self, h5):  # pragma: no cover - abstract
        raise NotImplementedError

    def _attrs(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError



# --------------------------------------------------------------------------------------------
# reading

class _Store:
    """Validated, lazily opened, read-only view of a finished store."""

    kind = ""

    def __init__(self, path, expect_keys=None, expect_classes=None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: pseudo-label store not found")
        try:
            with h5py.File(self.path, "r") as h5:
                attrs = dict(h5.attrs)
                keys = [str(k) for k in h5["keys"].asstr()[()]] if "keys" in h5 else None
        except (OSError, KeyError) as exc:
            raise ValueError(f"{self.path}: not a readable pseudo-label store ({str(exc).splitlines()[0]})") from None
        fmt = f"segcore-{self.kind}-pseudo-labels"
        if not attrs.get("complete", False) or keys is None:
            raise ValueError(f"{self.path}: incomplete pseudo-label store (unfinished or interrupted write); "
                             "delete it and regenerate")
        if attrs.get("format") != fmt:
            raise ValueError(f"{self.path}: not a {self.kind} pseudo-label store (format {attrs.get('format')!r})")
        if int(attrs.get("format_version", -1)) != FORMAT_VERSION:
            raise ValueError(f"{self.path}: store format version {attrs.get('format_version')}, "
                             f"this code reads {FORMAT_VERSION}")
        if int(attrs["count"]) != len(keys) or attrs["keys_sha256"] != keys_digest(keys):
            raise ValueError(f"{self.path}: corrupt pseudo-label store (key list does not match its recorded hash)")
        self.keys = keys
        self.attrs = attrs
        self.num_classes = int(attrs["num_classes"]) if int(attrs["num_classes"]) >= 0 else None
        self.size_hw = tuple(int(v) for v in attrs["size_hw"])
        if expect_classes is not None and self.num_classes != int(expect_classes):
            raise ValueError(f"{self.path}: pseudo-labels for {self.num_classes} classes, "
                             f"expected {int(expect_classes)}")
        if expect_keys is not None:
            expect_keys = [str(k) for k in expect_keys]
            if keys_digest(expect_keys) != attrs["keys_sha256"]:
                raise ValueError(f"{self.path}: pseudo-label store for another image list "
                                 f"({len(keys)} images, expected {len(expect_keys)}; ordered key lists differ)")
        self._h5 = None
        self._pid = None

    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            # after a fork the parent's handle must not be used: open our own
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def _index(self, i) -> int:
        i = int(i)
        if i < 0:
            i += len(self.keys)
        if not 0 <= i < len(self.keys):
            raise IndexError(f"{self.path}: index {i} out of range for {len(self.keys)} images")
        return i

    def __len__(self) -> int:
        return len(self.keys)

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_pid"] = None
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, n={len(self)})"

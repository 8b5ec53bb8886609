"""Pseudo-label stores: one chunked, compressed HDF5 file per set of pseudo-labels.

The official code writes one file per image (reference/proda_cpsl.md 1.7): a float32 softmax
``.npy`` at output stride 8 (2.4 MiB per Cityscapes image, 7 GiB in all) for the soft labels,
and a label PNG plus a float16 full-resolution confidence ``.npy`` (4 MiB per image, 11.6 GiB
per stage) for the hard ones. Here each set is one HDF5 file, one chunk per image.

Soft store (``SoftWriter`` / ``SoftStore``): the softmax at the network's output resolution,
``[C, h, w]`` per image, in one of two encodings:

* ``"float16"``: dataset ``probs`` float16 ``[N, C, h, w]``, byte shuffle + gzip. Relative
  precision 2^-11; argmax equals the float32 argmax except where the top two probabilities
  are closer than float16 resolution.
* ``"topk"``: datasets ``topk_prob`` and ``topk_class``, uint8 ``[N, k, h, w]`` (gzip): the
  k largest probabilities, rank ordered, quantised to ``round(p * 255)``, and their class ids.
  Decoding puts ``q / 255`` on the stored classes and spreads the rest of the mass,
  ``max(0, 1 - sum(q) / 255)``, uniformly over the other ``C - k`` classes (capped at the k-th
  stored value: in truth no other class exceeds it); a tiny rank term (1e-6 per rank) keeps
  the stored order when quantisation made two values equal, so the decoded argmax is always
  the stored top-1 class; the result is renormalised to sum to 1. Classes outside the top k
  are no longer told apart, which matters where a method re-weights the soft label per
  class (ProDA's ``argmax(w * p0)``): use ``"float16"`` for faithful runs.

Hard store (``HardWriter`` / ``HardStore``): per image the label (uint8, 255 = ignore) and the
confidence (max of the flip-averaged softmax) at full label resolution. Labels: gzip.
The confidence comes in one of two encodings, both exact for the official threshold rule:

* ``"grid"`` (default): a uint8 code ``c = #{edges e_k : f16(e_k) < f16(conf)}`` over the
  grid ``e_k = k / conf_levels`` (k = 0..conf_levels, default 200, i.e. steps of 0.005).
  Then ``f16(conf) <= f16(e_k)`` exactly when ``c <= k``: thresholding at any grid value
  (0.95, 0.9, 0.99, ...) gives exactly the official labels. ``get`` returns the upper grid
  edge ``e_c`` as the confidence (at most one step above the truth), so a plain
  ``conf <= t`` on it is exact for grid values t as well. Other thresholds are refused.
* ``"float16"``: the float16 confidence itself, as the official ``_conf.npy`` holds it
  (about twice the size of ``"grid"``); any threshold.

Both confidence codes are stored as a 2-D difference (wrap-around integer arithmetic along
rows, then columns), which turns the smooth, upsampled confidence map into mostly small
numbers that gzip packs far better; decoding is two cumulative sums.

The official threshold rule is ``lp[conf <= threshold] = 250`` on the float16 array loaded
from ``_conf.npy``; NumPy compares a float16 array with a Python float in float16, so the
rule is ``f16(conf) <= f16(threshold)``. ``HardStore.thresholded`` applies exactly that
(with 255 as the ignore label).

Files are written to a temporary name next to the target and renamed when complete
(``segcore.atomic.atomic_path``); a store is accepted only if it carries ``complete=True``,
the expected class count and the SHA-256 of the expected, ordered key list. Stores open the
HDF5 file lazily in each process (safe in DataLoader workers, forked or spawned).

``python -m segcore.pseudo.store [scale]`` measures sizes and agreements on a Cityscapes-size
case (19 classes, soft 129x257, hard 1024x2048; logits = scale x bilinearly upsampled noise).
At scale 5, per image: soft float16 962 kB (38% of the official float32 .npy), soft topk
(k=3) 125 kB (4.9%); hard grid 637 kB (14.9% of the official label PNG + float16 .npy),
hard float16 1.36 MB (31.7%). Of the hard store's bytes about 95 kB are the label.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from ..atomic import atomic_path

IGNORE = 255
FORMAT_VERSION = 1
SOFT_ENCODINGS = ("float16", "topk")
CONF_ENCODINGS = ("grid", "float16")
_GZIP = {"compression": "gzip", "compression_opts": 4}
_LABEL_GZIP = {"compression": "gzip", "compression_opts": 6}  # labels: level 6 is ~30% smaller, still fast
_RANK_EPS = 1e-6


def keys_digest(keys) -> str:
    """SHA-256 of the ordered key list (what a store records to identify its image list)."""
    return hashlib.sha256(json.dumps([str(k) for k in keys], ensure_ascii=False).encode("utf-8")).hexdigest()


def _delta2d(x: np.ndarray) -> np.ndarray:
    """Wrap-around 2-D difference over the last two axes of an unsigned integer array."""
    d = x.copy()
    d[..., 1:] -= x[..., :-1]
    e = d.copy()
    e[..., 1:, :] -= d[..., :-1, :]
    return e


def _undelta2d(e: np.ndarray) -> np.ndarray:
    out = np.cumsum(e, axis=-1, dtype=e.dtype)
    for r in range(1, out.shape[-2]):  # row by row: far faster than np.cumsum along axis -2
        np.add(out[..., r - 1, :], out[..., r, :], out=out[..., r, :])
    return out


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


class SoftWriter(_Writer):
    """Write soft pseudo-labels (softmax at output stride) for ``keys``, in that order.

    ``with SoftWriter(path, keys, 19, (129, 257)) as w: w.write(indices, probs)`` where
    ``probs`` is ``[C, h, w]`` for an int index or ``[B, C, h, w]`` for B indices.
    """

    kind = "soft"

    def __init__(self, path, keys, num_classes: int, size_hw, encoding: str = "float16", k: int = 3):
        super().__init__(path, keys)
        if encoding not in SOFT_ENCODINGS:
            raise ValueError(f"{self.path}: unknown soft encoding {encoding!r} (choose from {', '.join(SOFT_ENCODINGS)})")
        self.num_classes = int(num_classes)
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))
        self.encoding = encoding
        self.k = int(k)
        if encoding == "topk" and not (1 <= self.k <= self.num_classes and self.num_classes <= 256):
            raise ValueError(f"{self.path}: topk needs 1 <= k <= num_classes <= 256 (k={self.k}, C={self.num_classes})")

    def _create(self, h5):
        n, (h, w), c = len(self.keys), self.size_hw, self.num_classes
        if self.encoding == "float16":
            h5.create_dataset("probs", (n, c, h, w), dtype=np.float16, chunks=(1, c, h, w), shuffle=True,
                              fletcher32=True, **_GZIP)
        else:
            for name in ("topk_prob", "topk_class"):
                h5.create_dataset(name, (n, self.k, h, w), dtype=np.uint8, chunks=(1, self.k, h, w),
                                  fletcher32=True, **_GZIP)

    def _attrs(self):
        return {"num_classes": self.num_classes, "encoding": self.encoding, "size_hw": self.size_hw,
                "k": self.k if self.encoding == "topk" else 0}

    def write(self, index_or_batch, probs) -> None:
        self._require_open()
        idx, batched = _indices(index_or_batch, len(self.keys), self.path)
        p = probs.detach().float().cpu() if isinstance(probs, torch.Tensor) else torch.from_numpy(np.asarray(probs, np.float32))
        if not batched:
            p = p.unsqueeze(0)
        want = (len(idx), self.num_classes, *self.size_hw)
        if tuple(p.shape) != want:
            raise ValueError(f"{self.path}: probs of shape {tuple(p.shape)}, expected {want}")
        if not torch.isfinite(p).all():
            raise ValueError(f"{self.path}: non-finite probabilities for image(s) {idx.tolist()}")
        if self.encoding == "float16":
            data = {"probs": p.to(torch.float16).numpy()}
        else:
            v, cls = p.topk(self.k, dim=1)
            data = {"topk_prob": v.mul(255).round_().clamp_(0, 255).to(torch.uint8).numpy(),
                    "topk_class": cls.to(torch.uint8).numpy()}
        for j, i in enumerate(idx):
            for name, arr in data.items():
                self._h5[name][i] = arr[j]
        self._written[idx] = True


def _grid_edges(levels: int) -> np.ndarray:
    return np.arange(levels + 1, dtype=np.float64) / levels


def _grid_lut(levels: int) -> np.ndarray:
    """Grid code of every float16 bit pattern: ``#{k : f16(e_k) < value}`` (a table, not a search)."""
    values = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    with np.errstate(invalid="ignore"):
        return np.searchsorted(_grid_edges(levels).astype(np.float16), values, side="left").astype(np.uint8)


class HardWriter(_Writer):
    """Write hard pseudo-labels: label (uint8, 255 ignore) and confidence at full resolution.

    ``write(index_or_batch, label, conf)`` with ``[H, W]`` arrays (or ``[B, H, W]`` for B
    indices). ``conf_encoding`` ``"grid"`` (uint8 codes, exact for thresholds that are
    multiples of ``1 / conf_levels``) or ``"float16"`` (the official float16 values).
    """

    kind = "hard"

    def __init__(self, path, keys, size_hw, num_classes: int | None = None, conf_encoding: str = "grid",
                 conf_levels: int = 200):
        super().__init__(path, keys)
        if conf_encoding not in CONF_ENCODINGS:
            raise ValueError(f"{self.path}: unknown confidence encoding {conf_encoding!r} (choose from {', '.join(CONF_ENCODINGS)})")
        if not 1 <= int(conf_levels) <= 254:
            raise ValueError(f"{self.path}: conf_levels must be in 1..254, got {conf_levels}")
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))
        self.num_classes = None if num_classes is None else int(num_classes)
        self.conf_encoding = conf_encoding
        self.conf_levels = int(conf_levels)
        self._lut = _grid_lut(self.conf_levels) if conf_encoding == "grid" else None

    def _create(self, h5):
        n, (h, w) = len(self.keys), self.size_hw
        h5.create_dataset("label", (n, h, w), dtype=np.uint8, chunks=(1, h, w), fletcher32=True, **_LABEL_GZIP)
        dtype = np.uint8 if self.conf_encoding == "grid" else np.uint16
        h5.create_dataset("conf", (n, h, w), dtype=dtype, chunks=(1, h, w), fletcher32=True,
                          shuffle=dtype == np.uint16, **_GZIP)

    def _attrs(self):
        return {"num_classes": -1 if self.num_classes is None else self.num_classes, "size_hw": self.size_hw,
                "conf_encoding": self.conf_encoding, "conf_levels": self.conf_levels, "conf_coding": "delta2d"}

    def write(self, index_or_batch, label, conf) -> None:
        self._require_open()
        idx, batched = _indices(index_or_batch, len(self.keys), self.path)
        lab = _as_numpy(label)
        cf = _as_numpy(conf, np.float32)
        if not batched:
            lab, cf = lab[None], cf[None]
        want = (len(idx), *self.size_hw)
        if lab.shape != want or cf.shape != want:
            raise ValueError(f"{self.path}: label {lab.shape} / conf {cf.shape}, expected {want}")
        top = 256 if self.num_classes is None else self.num_classes
        if lab.size and ((lab < 0) | ((lab >= top) & (lab != IGNORE))).any():
            raise ValueError(f"{self.path}: labels outside 0..{top - 1} and {IGNORE} for image(s) {idx.tolist()}")
        if not np.isfinite(cf).all():
            raise ValueError(f"{self.path}: non-finite confidence for image(s) {idx.tolist()}")
        c16 = np.clip(cf, 0.0, 1.0).astype(np.float16)
        if self.conf_encoding == "grid":
            code = self._lut[c16.view(np.uint16)]
        else:
            code = c16.view(np.uint16)
        code = _delta2d(code)
        lab = lab.astype(np.uint8)
        for j, i in enumerate(idx):
            self._h5["label"][i] = lab[j]
            self._h5["conf"][i] = code[j]
        self._written[idx] = True


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
            raise ValueError(f"{self.path}: incomplete pseudo-label store (unfinished or interrupted write); delete it and regenerate")
        if attrs.get("format") != fmt:
            raise ValueError(f"{self.path}: not a {self.kind} pseudo-label store (format {attrs.get('format')!r})")
        if int(attrs.get("format_version", -1)) != FORMAT_VERSION:
            raise ValueError(f"{self.path}: store format version {attrs.get('format_version')}, this code reads {FORMAT_VERSION}")
        if int(attrs["count"]) != len(keys) or attrs["keys_sha256"] != keys_digest(keys):
            raise ValueError(f"{self.path}: corrupt pseudo-label store (key list does not match its recorded hash)")
        self.keys = keys
        self.attrs = attrs
        self.num_classes = int(attrs["num_classes"]) if int(attrs["num_classes"]) >= 0 else None
        self.size_hw = tuple(int(v) for v in attrs["size_hw"])
        if expect_classes is not None and self.num_classes != int(expect_classes):
            raise ValueError(f"{self.path}: pseudo-labels for {self.num_classes} classes, expected {int(expect_classes)}")
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


class SoftStore(_Store):
    """Soft pseudo-labels: ``store[i]`` is a float32 tensor ``[C, h, w]`` (sums to 1 per pixel)."""

    kind = "soft"

    def __init__(self, path, expect_keys=None, expect_classes=None):
        super().__init__(path, expect_keys, expect_classes)
        self.encoding = str(self.attrs["encoding"])
        self.k = int(self.attrs.get("k", 0))
        if self.encoding not in SOFT_ENCODINGS:
            raise ValueError(f"{self.path}: unknown soft encoding {self.encoding!r}")

    def __getitem__(self, i) -> torch.Tensor:
        i = self._index(i)
        h5 = self._file()
        if self.encoding == "float16":
            return torch.from_numpy(h5["probs"][i].astype(np.float32))
        q = torch.from_numpy(h5["topk_prob"][i].astype(np.float32))
        cls = torch.from_numpy(h5["topk_class"][i].astype(np.int64))
        return decode_topk(q, cls, self.num_classes)


def decode_topk(q: torch.Tensor, cls: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Probabilities ``[C, h, w]`` from quantised top-k values ``q`` (0..255) and class ids ``[k, h, w]``."""
    k = q.shape[0]
    v = q / 255.0
    rank_eps = _RANK_EPS * torch.arange(k, 0, -1, dtype=v.dtype).view(k, 1, 1)
    if k < num_classes:
        rest = (1.0 - v.sum(0)).clamp_(min=0.0) / (num_classes - k)
        rest = torch.minimum(rest, v[-1])
        out = rest.unsqueeze(0).expand(num_classes, *q.shape[1:]).clone()
    else:
        out = torch.zeros(num_classes, *q.shape[1:], dtype=v.dtype)
    out.scatter_(0, cls, v + rank_eps)
    return out / out.sum(0, keepdim=True)


class HardStore(_Store):
    """Hard pseudo-labels: ``get(i)`` -> (label long [H, W], conf float32 [H, W])."""

    kind = "hard"

    def __init__(self, path, expect_keys=None, expect_classes=None):
        super().__init__(path, expect_keys, expect_classes)
        self.conf_encoding = str(self.attrs["conf_encoding"])
        if self.conf_encoding not in CONF_ENCODINGS:
            raise ValueError(f"{self.path}: unknown confidence encoding {self.conf_encoding!r}")
        self.conf_levels = int(self.attrs["conf_levels"])
        self._edges = _grid_edges(self.conf_levels)
        self._edges16 = self._edges.astype(np.float16)

    def _codes(self, i):
        h5 = self._file()
        return h5["label"][i], _undelta2d(h5["conf"][i])

    def _conf(self, code) -> np.ndarray:
        if self.conf_encoding == "grid":
            return self._edges.astype(np.float32)[np.minimum(code, self.conf_levels)]
        return code.view(np.float16).astype(np.float32)

    def _ignore_mask(self, code, threshold) -> np.ndarray:
        """The official rule ``f16(conf) <= f16(threshold)``, evaluated on the stored codes."""
        t16 = np.float16(threshold)
        if self.conf_encoding == "float16":
            return code.view(np.float16) <= t16
        hit = np.flatnonzero(self._edges16 == t16)
        if hit.size == 0:
            raise ValueError(f"{self.path}: threshold {threshold} is not on the stored confidence grid "
                             f"(multiples of 1/{self.conf_levels}); write with conf_encoding='float16' for arbitrary thresholds")
        return code <= hit[0]

    def get(self, i, threshold=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(label, conf); with ``threshold`` the label has 255 where ``conf <= threshold``."""
        label, code = self._codes(self._index(i))
        if threshold is not None:
            label = np.where(self._ignore_mask(code, threshold), np.uint8(IGNORE), label)
        return torch.from_numpy(label.astype(np.int64)), torch.from_numpy(self._conf(code))

    __getitem__ = get

    def thresholded(self, i, threshold) -> torch.Tensor:
        """Label (long [H, W]) with 255 where the confidence is <= ``threshold`` (the official rule)."""
        label, code = self._codes(self._index(i))
        label = np.where(self._ignore_mask(code, threshold), np.uint8(IGNORE), label)
        return torch.from_numpy(label.astype(np.int64))


# --------------------------------------------------------------------------------------------
# measurement: python -m segcore.pseudo.store

def _smooth_logits(num_classes, hw, seed, scale=5.0, low=(17, 33)):
    """Bilinearly upsampled low-resolution Gaussian noise times ``scale``: [1, C, h, w]."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, num_classes, *low, generator=g)
    return F.interpolate(noise, size=hw, mode="bilinear", align_corners=True) * scale


def _measure(n=3, num_classes=19, soft_hw=(129, 257), full_hw=(1024, 2048), scale=5.0):  # pragma: no cover
    import io
    import tempfile

    import torch.nn.functional as F
    from PIL import Image

    keys = [f"img{i}" for i in range(n)]
    official_soft = 128 + num_classes * soft_hw[0] * soft_hw[1] * 4
    official_conf = 128 + full_hw[0] * full_hw[1] * 2
    logits = [_smooth_logits(num_classes, soft_hw, i, scale) for i in range(n)]
    probs = [lg.softmax(1) for lg in logits]
    print(f"synthetic case: {n} images, C={num_classes}, soft {soft_hw}, hard {full_hw}, logits = {scale} x upsampled noise")
    with tempfile.TemporaryDirectory() as tmp:
        for enc in SOFT_ENCODINGS:
            path = Path(tmp) / f"soft_{enc}.h5"
            with SoftWriter(path, keys, num_classes, soft_hw, encoding=enc) as w:
                for i, p in enumerate(probs):
                    w.write(i, p[0])
            store = SoftStore(path, keys, num_classes)
            agree = np.mean([(store[i].argmax(0) == probs[i][0].argmax(0)).float().mean().item() for i in range(n)])
            err = np.mean([(store[i] - probs[i][0]).abs().sum(0).mean().item() for i in range(n)])
            size = path.stat().st_size / n
            print(f"soft {enc:8s}: {size:10,.0f} B/image = {size / official_soft:6.1%} of the official float32 .npy "
                  f"({official_soft:,} B); argmax agreement with float32 {agree:.4%}; mean L1 distance {err:.4f}")
        up = lambda t: F.interpolate(t, size=full_hw, mode="bilinear", align_corners=True)  # noqa: E731
        labels, confs, png = [], [], 0
        for i in range(n):
            flipped = logits[i] + 0.1 * _smooth_logits(num_classes, soft_hw, 1000 + i, scale)  # the flipped view's prediction
            p = (up(probs[i]) + up(flipped.softmax(1))) / 2
            c, lab = p[0].max(0)
            labels.append(lab.numpy().astype(np.uint8))
            confs.append(c.numpy())
            buf = io.BytesIO()
            Image.fromarray(labels[-1]).save(buf, format="PNG")
            png += len(buf.getvalue())
        official_hard = official_conf + png / n
        for enc in CONF_ENCODINGS:
            path = Path(tmp) / f"hard_{enc}.h5"
            with HardWriter(path, keys, full_hw, num_classes, conf_encoding=enc) as w:
                for i in range(n):
                    w.write(i, labels[i], confs[i])
            store = HardStore(path, keys, num_classes)
            same = []
            for t in (0.9, 0.95, 0.99):
                for i in range(n):
                    ref = labels[i].astype(np.int64).copy()
                    ref[confs[i].astype(np.float16) <= t] = IGNORE  # the official NumPy expression
                    same.append(np.array_equal(store.thresholded(i, t).numpy(), ref))
            size = path.stat().st_size / n
            frac = np.mean([(c > 0.95).mean() for c in confs])
            print(f"hard conf={enc:7s}: {size:10,.0f} B/image = {size / official_hard:6.1%} of the official PNG + float16 "
                  f".npy ({official_hard:,.0f} B); thresholded labels identical to the official rule at 0.9/0.95/0.99: "
                  f"{all(same)} ({frac:.1%} of pixels above 0.95)")


if __name__ == "__main__":  # pragma: no cover
    import sys

    _measure(scale=float(sys.argv[1]) if len(sys.argv) > 1 else 5.0)

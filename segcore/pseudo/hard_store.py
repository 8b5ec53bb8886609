"""Hard pseudo-label store (``HardWriter`` / ``HardStore``).

Per image the label (uint8, 255 = ignore) and the confidence (max of the flip-averaged
softmax) at full label resolution, both zstd-compressed (``store_base.codec``).
The confidence comes in one of two encodings, both exact for the official threshold rule:

* ``"grid"`` (default): a uint8 code ``c = #{edges e_k : f16(e_k) < f16(conf)}`` over the
  grid ``e_k = k / conf_levels`` (k = 0..conf_levels, default 200, i.e. steps of 0.005).
  Then ``f16(conf) <= f16(e_k)`` exactly when ``c <= k``: thresholding at any grid value
  (0.95, 0.9, 0.99, ...) gives exactly the official labels. ``get`` returns the upper grid
  edge ``e_c`` as the confidence (at most one step above the truth), so a plain
  ``conf <= t`` on it is exact for grid values t as well. Other thresholds are refused.
* ``"float16"``: the float16 confidence itself, as the official ``_conf.npy`` holds it
  (about twice the size of ``"grid"``); any threshold.
* ``"thresholds"``: the grid code over a short list of thresholds given at writing time
  (``conf_thresholds``, e.g. the consuming stage's 0.95): ``c = #{t_k : f16(t_k) < f16(conf)}``,
  so thresholding at any listed value is exact, as for the grid. The code changes only where
  the confidence crosses a listed threshold, so it packs to a few tens of kB per image (a
  thirtieth of the official files with the label); ``get`` returns the next listed threshold
  above the confidence (or 1.0) as the confidence. Other thresholds are refused.

The grid and float16 codes are stored as a 2-D difference (wrap-around integer arithmetic
along rows, then columns), which turns the smooth, upsampled confidence map into mostly small
numbers that the compressor packs far better; decoding is two cumulative sums. The few-valued
``"thresholds"`` code is stored as it is (attribute ``conf_coding = "none"``): the difference
would save a fifth of its few tens of kB and cost more than the rest of a read.

The official threshold rule is ``lp[conf <= threshold] = 250`` on the float16 array loaded
from ``_conf.npy``; NumPy compares a float16 array with a Python float in float16, so the
rule is ``f16(conf) <= f16(threshold)``. ``HardStore.thresholded`` applies exactly that
(with 255 as the ignore label).

The official code keeps a label PNG and a float16 ``_conf.npy`` per image
(docs/protocol.md, Pseudo-label files); file handling and validation are shared with the soft store
(``segcore.pseudo.store_base``).
"""
from __future__ import annotations

import numpy as np
import torch

from .store_base import IGNORE, _as_numpy, _indices, _Store, _Writer, codec

CONF_ENCODINGS = ("grid", "float16", "thresholds")


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


def _grid_edges(levels: int) -> np.ndarray:
    return np.arange(levels + 1, dtype=np.float64) / levels


def _grid_lut(levels: int) -> np.ndarray:
    """Grid code of every float16 bit pattern: ``#{k : f16(e_k) < value}`` (a table, not a search)."""
    return _edges_lut(_grid_edges(levels))


def _edges_lut(edges) -> np.ndarray:
    """``#{k : f16(e_k) < value}`` for every float16 bit pattern (``edges`` ascending)."""
    values = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    with np.errstate(invalid="ignore"):
        return np.searchsorted(np.asarray(edges).astype(np.float16), values, side="left").astype(np.uint8)


def _threshold_edges(thresholds) -> np.ndarray:
    """Sorted thresholds, distinct in float16 (the comparison the official rule makes)."""
    t = np.asarray(sorted(float(v) for v in thresholds), dtype=np.float64)
    _, first = np.unique(t.astype(np.float16), return_index=True)
    return t[np.sort(first)]


class HardWriter(_Writer):
    """Write hard pseudo-labels: label (uint8, 255 ignore) and confidence at full resolution.

    ``write(index_or_batch, label, conf)`` with ``[H, W]`` arrays (or ``[B, H, W]`` for B
    indices). ``conf_encoding`` ``"grid"`` (uint8 codes, exact for thresholds that are
    multiples of ``1 / conf_levels``), ``"float16"`` (the official float16 values) or
    ``"thresholds"`` (uint8 codes, exact for the listed ``conf_thresholds`` only).
    """

    kind = "hard"

    def __init__(self, path, keys, size_hw, num_classes: int | None = None, conf_encoding: str = "grid",
                 conf_levels: int = 200, conf_thresholds=None):
        super().__init__(path, keys)
        if conf_encoding not in CONF_ENCODINGS:
            raise ValueError(f"{self.path}: unknown confidence encoding {conf_encoding!r} "
                             f"(choose from {', '.join(CONF_ENCODINGS)})")
        if not 1 <= int(conf_levels) <= 254:
            raise ValueError(f"{self.path}: conf_levels must be in 1..254, got {conf_levels}")
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))
        self.num_classes = None if num_classes is None else int(num_classes)
        self.conf_encoding = conf_encoding
        self.conf_levels = int(conf_levels)
        self.conf_thresholds = None
        if conf_encoding == "thresholds":
            if (not conf_thresholds or len(conf_thresholds) > 254
                    or not all(0.0 <= float(t) <= 1.0 for t in conf_thresholds)):
                raise ValueError(f"{self.path}: conf_encoding='thresholds' needs conf_thresholds in [0, 1], "
                                 f"got {conf_thresholds!r}")
            self.conf_thresholds = _threshold_edges(conf_thresholds)
            self.conf_levels = len(self.conf_thresholds)
        self._lut = (_grid_lut(self.conf_levels) if conf_encoding == "grid"
                     else _edges_lut(self.conf_thresholds) if conf_encoding == "thresholds" else None)

    def _create(self, h5):
        n, (h, w) = len(self.keys), self.size_hw
        h5.create_dataset("label", (n, h, w), dtype=np.uint8, chunks=(1, h, w), **codec(shuffle=False))
        dtype = np.uint16 if self.conf_encoding == "float16" else np.uint8
        h5.create_dataset("conf", (n, h, w), dtype=dtype, chunks=(1, h, w), **codec(shuffle=dtype == np.uint16))

    def _attrs(self):
        attrs = {"num_classes": -1 if self.num_classes is None else self.num_classes, "size_hw": self.size_hw,
                 "conf_encoding": self.conf_encoding, "conf_levels": self.conf_levels,
                 "conf_coding": "none" if self.conf_encoding == "thresholds" else "delta2d"}
        if self.conf_thresholds is not None:
            attrs["conf_thresholds"] = self.conf_thresholds
        return attrs

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
        if self._lut is not None:  # grid / thresholds
            code = self._lut[c16.view(np.uint16)]
        else:
            code = c16.view(np.uint16)
        if self.conf_encoding != "thresholds":
            code = _delta2d(code)
        lab = lab.astype(np.uint8)
        for j, i in enumerate(idx):
            self._h5["label"][i] = lab[j]
            self._h5["conf"][i] = code[j]
        self._written[idx] = True


class HardStore(_Store):
    """Hard pseudo-labels: ``get(i)`` -> (label long [H, W], conf float32 [H, W])."""

    kind = "hard"

    def __init__(self, path, expect_keys=None, expect_classes=None):
        super().__init__(path, expect_keys, expect_classes)
        self.conf_encoding = str(self.attrs["conf_encoding"])
        if self.conf_encoding not in CONF_ENCODINGS:
            raise ValueError(f"{self.path}: unknown confidence encoding {self.conf_encoding!r}")
        self.conf_levels = int(self.attrs["conf_levels"])
        if self.conf_encoding == "thresholds":
            self._edges = np.asarray(self.attrs["conf_thresholds"], dtype=np.float64).reshape(-1)
        else:
            self._edges = _grid_edges(self.conf_levels)
        self._edges16 = self._edges.astype(np.float16)
        self._delta = str(self.attrs.get("conf_coding", "delta2d")) == "delta2d"

    def _codes(self, i):
        h5 = self._file()
        code = h5["conf"][i]
        return h5["label"][i], _undelta2d(code) if self._delta else code

    def _conf(self, code) -> np.ndarray:
        if self.conf_encoding == "grid":
            return self._edges.astype(np.float32)[np.minimum(code, self.conf_levels)]
        if self.conf_encoding == "thresholds":  # the next listed threshold above, or 1.0
            return np.append(self._edges, 1.0).astype(np.float32)[code]
        return code.view(np.float16).astype(np.float32)

    def _ignore_mask(self, code, threshold) -> np.ndarray:
        """The official rule ``f16(conf) <= f16(threshold)``, evaluated on the stored codes."""
        t16 = np.float16(threshold)
        if self.conf_encoding == "float16":
            return code.view(np.float16) <= t16
        hit = np.flatnonzero(self._edges16 == t16)
        if hit.size == 0:
            grid = (f"the listed thresholds {', '.join(f'{t:g}' for t in self._edges)}"
                    if self.conf_encoding == "thresholds" else f"multiples of 1/{self.conf_levels}")
            raise ValueError(f"{self.path}: threshold {threshold} is not on the stored confidence grid "
                             f"({grid}); write with conf_encoding='float16' for arbitrary thresholds")
        return code <= hit[0]

    def supports(self, threshold) -> bool:
        """Whether ``thresholded(i, threshold)`` is exact (else it raises)."""
        return self.conf_encoding == "float16" or bool((self._edges16 == np.float16(threshold)).any())

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

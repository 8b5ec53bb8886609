"""The store of SeCo's labels (PSA or SCC): one HDF5 file in the family of the hard store.

Per image a uint8 label (255 = ignore) at the base's label resolution. Its metadata records
what produced it and how much of the set it labels: ``stage`` ("psa" or "scc"), ``proposer``
(e.g. "classical_felzenszwalb", "sam_vit_h"), ``base`` (the base stage, e.g. "proda/stage1"),
``rule`` (SCC's decision rule, or "" for PSA), ``coverage`` (share of labelled pixels over the
set) and ``class_pixels`` (labelled pixels per class). Writing, validation and the refusal of
unfinished files are the shared store machinery (``segcore.pseudo.store_base``); a store that
lacks this metadata is refused too.
"""
from __future__ import annotations

import numpy as np
import torch

from ..pseudo.store_base import _LABEL_GZIP, IGNORE, _as_numpy, _indices, _Store, _Writer

STAGES = ("psa", "scc")
_REQUIRED = ("stage", "proposer", "base", "rule", "coverage", "class_pixels")


class RefinedWriter(_Writer):
    """``write(index_or_batch, label)`` with uint8/long [H, W] (or [B, H, W]) labels."""

    kind = "seco"

    def __init__(self, path, keys, size_hw, num_classes: int, stage: str, proposer: str, base: str, rule: str = ""):
        super().__init__(path, keys)
        if stage not in STAGES:
            raise ValueError(f"{self.path}: unknown SeCo stage {stage!r} (choose from {', '.join(STAGES)})")
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))
        self.num_classes = int(num_classes)
        self.meta = {"stage": stage, "proposer": str(proposer), "base": str(base), "rule": str(rule)}
        self._class_pixels = np.zeros(self.num_classes, dtype=np.int64)
        self._pixels = 0

    def _create(self, h5):
        n, (h, w) = len(self.keys), self.size_hw
        h5.create_dataset("label", (n, h, w), dtype=np.uint8, chunks=(1, h, w), fletcher32=True, **_LABEL_GZIP)

    def _attrs(self):
        covered = int(self._class_pixels.sum())
        return {"num_classes": self.num_classes, "size_hw": self.size_hw, **self.meta,
                "coverage": covered / max(self._pixels, 1), "class_pixels": self._class_pixels}

    def write(self, index_or_batch, label) -> None:
        self._require_open()
        idx, batched = _indices(index_or_batch, len(self.keys), self.path)
        lab = _as_numpy(label)
        if not batched:
            lab = lab[None]
        if lab.shape != (len(idx), *self.size_hw):
            raise ValueError(f"{self.path}: label {lab.shape}, expected {(len(idx), *self.size_hw)}")
        if lab.size and ((lab < 0) | ((lab >= self.num_classes) & (lab != IGNORE))).any():
            raise ValueError(f"{self.path}: labels outside 0..{self.num_classes - 1} and {IGNORE} "
                             f"for image(s) {idx.tolist()}")
        lab = lab.astype(np.uint8)
        for j, i in enumerate(idx):
            if self._written[i]:  # rewriting an image must not count its pixels twice
                raise ValueError(f"{self.path}: image {i} written twice")
            self._h5["label"][i] = lab[j]
            self._class_pixels += np.bincount(lab[j][lab[j] != IGNORE], minlength=self.num_classes)[: self.num_classes]
            self._pixels += lab[j].size
            self._written[i] = True


class RefinedStore(_Store):
    """SeCo labels: ``get(i)`` -> (label long [H, W], conf float32 [H, W]: 1 where labelled)."""

    kind = "seco"

    def __init__(self, path, expect_keys=None, expect_classes=None, expect_stage: str | None = None):
        super().__init__(path, expect_keys, expect_classes)
        lacking = [k for k in _REQUIRED if k not in self.attrs]
        if lacking:
            raise ValueError(f"{self.path}: SeCo label store lacks its metadata ({', '.join(lacking)})")
        self.stage, self.proposer = str(self.attrs["stage"]), str(self.attrs["proposer"])
        self.base, self.rule = str(self.attrs["base"]), str(self.attrs["rule"])
        self.coverage = float(self.attrs["coverage"])
        if expect_stage is not None and self.stage != expect_stage:
            raise ValueError(f"{self.path}: SeCo {self.stage} labels, expected {expect_stage}")

    def label(self, i) -> np.ndarray:
        return self._file()["label"][self._index(i)]

    def get(self, i) -> tuple[torch.Tensor, torch.Tensor]:
        lab = self.label(i)
        return torch.from_numpy(lab.astype(np.int64)), torch.from_numpy((lab != IGNORE).astype(np.float32))

    __getitem__ = get

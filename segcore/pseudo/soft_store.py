"""Soft pseudo-label store (``SoftWriter`` / ``SoftStore``).

The softmax at the network's output resolution, ``[C, h, w]`` per image, in one of two
encodings:

* ``"float16"``: dataset ``probs`` float16 ``[N, C, h, w]``, byte shuffle + zstd
  (``store_base.codec``; stores written with gzip are read too). Relative
  precision 2^-11; argmax equals the float32 argmax except where the top two probabilities
  are closer than float16 resolution.
* ``"topk"``: datasets ``topk_prob`` and ``topk_class``, uint8 ``[N, k, h, w]``: the
  k largest probabilities, rank ordered, quantised to ``round(p * 255)``, and their class ids
  (zstd).
  Decoding puts ``q / 255`` on the stored classes and spreads the rest of the mass,
  ``max(0, 1 - sum(q) / 255)``, uniformly over the other ``C - k`` classes (capped at the k-th
  stored value: in truth no other class exceeds it); a tiny rank term (1e-6 per rank) keeps
  the stored order when quantisation made two values equal, so the decoded argmax is always
  the stored top-1 class; the result is renormalised to sum to 1. Classes outside the top k
  are no longer told apart, which matters where a method re-weights the soft label per
  class (ProDA's ``argmax(w * p0)``): use ``"float16"`` for faithful runs.

The official code keeps a float32 softmax ``.npy`` per image (docs/protocol.md, Pseudo-label files);
file handling and validation are shared with the hard store (``segcore.pseudo.store_base``).
"""
from __future__ import annotations

import numpy as np
import torch

from .store_base import _indices, _Store, _Writer, codec

SOFT_ENCODINGS = ("float16", "topk")
_RANK_EPS = 1e-6


class SoftWriter(_Writer):
    """Write soft pseudo-labels (softmax at output stride) for ``keys``, in that order.

    ``with SoftWriter(path, keys, 19, (129, 257)) as w: w.write(indices, probs)`` where
    ``probs`` is ``[C, h, w]`` for an int index or ``[B, C, h, w]`` for B indices.
    """

    kind = "soft"

    def __init__(self, path, keys, num_classes: int, size_hw, encoding: str = "float16", k: int = 3):
        super().__init__(path, keys)
        if encoding not in SOFT_ENCODINGS:
            raise ValueError(f"{self.path}: unknown soft encoding {encoding!r} "
                             f"(choose from {', '.join(SOFT_ENCODINGS)})")
        self.num_classes = int(num_classes)
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))
        self.encoding = encoding
        self.k = int(k)
        if encoding == "topk" and not (1 <= self.k <= self.num_classes and self.num_classes <= 256):
            raise ValueError(f"{self.path}: topk needs 1 <= k <= num_classes <= 256 (k={self.k}, C={self.num_classes})")

    def _create(self, h5):
        n, (h, w), c = len(self.keys), self.size_hw, self.num_classes
        if self.encoding == "float16":
            h5.create_dataset("probs", (n, c, h, w), dtype=np.float16, chunks=(1, c, h, w), **codec(shuffle=True))
        else:
            for name in ("topk_prob", "topk_class"):
                h5.create_dataset(name, (n, self.k, h, w), dtype=np.uint8, chunks=(1, self.k, h, w),
                                  **codec(shuffle=False))

    def _attrs(self):
        return {"num_classes": self.num_classes, "encoding": self.encoding, "size_hw": self.size_hw,
                "k": self.k if self.encoding == "topk" else 0}

    def write(self, index_or_batch, probs) -> None:
        self._require_open()
        idx, batched = _indices(index_or_batch, len(self.keys), self.path)
        p = (probs.detach().float().cpu() if isinstance(probs, torch.Tensor)
             else torch.from_numpy(np.asarray(probs, np.float32)))
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
            # torch's half -> float conversion is vectorised; NumPy's costs more than the decompression
            return torch.from_numpy(h5["probs"][i]).float()
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

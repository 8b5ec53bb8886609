"""Pseudo-label stores: one chunked, compressed HDF5 file per set of pseudo-labels.

This module re-exports the public names of the store modules:

* ``segcore.pseudo.store_base``: key digest, shared writer / store base classes (temporary
  file and rename, validation, lazy per-process opening), format attributes.
* ``segcore.pseudo.soft_store``: ``SoftWriter`` / ``SoftStore`` and the float16 / top-k
  encodings of the softmax (``decode_topk``).
* ``segcore.pseudo.hard_store``: ``HardWriter`` / ``HardStore``, the grid / float16
  confidence encodings and the official float16 threshold rule.
* ``segcore.pseudo.store_measure``: the size and agreement measurement.

``python -m segcore.pseudo.store [scale]`` measures sizes and agreements on a Cityscapes-size
case (see ``segcore.pseudo.store_measure``).
"""
from __future__ import annotations

from .hard_store import CONF_ENCODINGS, HardStore, HardWriter
from .soft_store import SOFT_ENCODINGS, SoftStore, SoftWriter, decode_topk
from .store_base import FORMAT_VERSION, IGNORE, keys_digest
from .store_measure import _measure, _smooth_logits

__all__ = ["CONF_ENCODINGS", "FORMAT_VERSION", "IGNORE", "SOFT_ENCODINGS", "HardStore", "HardWriter",
           "SoftStore", "SoftWriter", "decode_topk", "keys_digest", "_smooth_logits"]

if __name__ == "__main__":  # pragma: no cover
    import sys

    _measure(scale=float(sys.argv[1]) if len(sys.argv) > 1 else 5.0)

"""The labelled / unlabelled split of the target set for SeCo's semi-supervised re-training.

The released recipe splits the target train images into a labelled subset (with SeCo labels)
and an unlabelled rest and runs UniMatch; how the split is chosen is not released (its logs
suggest about half of the images unlabelled). Ours:

* ``coverage`` (default): the ``labelled_fraction`` of images whose SeCo labels cover the
  largest share of their pixels are labelled (SCC kept most of them: the images the pipeline
  is surest about); ties by image order;
* ``random``: a seeded random ``labelled_fraction`` of the images.
"""
from __future__ import annotations

import numpy as np

from ..pseudo.store_base import IGNORE

SPLIT_RULES = ("coverage", "random")


def split(store, rule: str = "coverage", labelled_fraction: float = 0.5, seed: int = 0):
    """(labelled indices, unlabelled indices), both sorted, of ``store``'s images."""
    if rule not in SPLIT_RULES:
        raise ValueError(f"unknown split rule {rule!r} (choose from {', '.join(SPLIT_RULES)})")
    if not 0.0 < labelled_fraction < 1.0:
        raise ValueError(f"labelled_fraction must be in (0, 1), got {labelled_fraction}")
    n = len(store)
    k = min(max(1, round(labelled_fraction * n)), n - 1)
    if rule == "coverage":
        cov = np.array([(store.label(i) != IGNORE).mean() for i in range(n)])
        order = np.argsort(-cov, kind="stable")
    else:
        order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:k]), np.sort(order[k:])

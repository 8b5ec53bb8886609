"""Pixel semantic aggregation (PSA): pixel pseudo-labels -> labelled regions.

Per image, starting from all-ignore:

1. stuff: every region of ``proposer.stuff_regions()`` (in order; later ones overwrite) takes
   the stuff class with the largest share of its labelled pixels if that share exceeds
   ``min_share`` (0.2). The share's denominator counts every labelled pixel of the region,
   thing pixels included (the released rule);
2. things: for each thing class with more than ``min_thing_pixels`` labelled pixels in the
   image, in increasing class id, each 8-connected component of at least ``min_thing_pixels``
   pixels prompts one region, painted with its class over what is there.

Pixels no accepted region covers are ignore (255), even where the pixel labels had a class.
"""
from __future__ import annotations

import numpy as np

from ..pseudo.store_base import IGNORE
from .components import components
from .regions import stuff_classes, thing_classes


def majority_label(region: np.ndarray, label: np.ndarray, stuff, min_share: float = 0.2) -> int | None:
    """The stuff class of ``region`` by the majority rule, or None when no stuff class holds
    more than ``min_share`` of the region's labelled pixels."""
    inside = label[region]
    inside = inside[inside != IGNORE]
    if inside.size == 0:
        return None
    counts = np.bincount(inside.astype(np.int64), minlength=max(stuff) + 1)
    stuff = np.asarray(stuff)
    best = int(stuff[np.argmax(counts[stuff])])  # first of equal shares: the lowest class id
    return best if counts[best] / inside.size > min_share else None


def segment_majority(segments: np.ndarray, label: np.ndarray, stuff, min_share: float = 0.2) -> np.ndarray:
    """The majority rule on every region of a segment-id map at once (uint8 [H, W], 255 where
    a region takes no class); the same result as ``majority_label`` region by region."""
    seg = segments.reshape(-1).astype(np.int64)
    lab = label.reshape(-1)
    ok = lab != IGNORE
    n_seg, top = int(seg.max()) + 1, max(stuff) + 1
    labelled = np.bincount(seg[ok], minlength=n_seg)
    stuff_px = ok & (lab < top) & np.isin(lab, stuff)
    counts = np.bincount(seg[stuff_px] * top + lab[stuff_px].astype(np.int64), minlength=n_seg * top)
    counts = counts.reshape(n_seg, top)[:, list(stuff)]
    best = np.argmax(counts, axis=1)
    share = counts[np.arange(n_seg), best] / np.maximum(labelled, 1)
    lut = np.where((labelled > 0) & (share > min_share), np.asarray(stuff)[best], IGNORE).astype(np.uint8)
    return lut[seg].reshape(segments.shape)


def aggregate(image: np.ndarray, label: np.ndarray, proposer, num_classes: int, min_share: float = 0.2,
              min_thing_pixels: int = 10) -> np.ndarray:
    """PSA labels (uint8 [H, W]) of one image (uint8 [H, W, 3]) from its pixel labels ([H, W])."""
    label = np.asarray(label)
    if image.shape[:2] != label.shape:
        raise ValueError(f"image {image.shape[:2]} and pseudo-label {label.shape} differ in size")
    out = np.full(label.shape, IGNORE, dtype=np.uint8)
    proposer.set_image(image)
    stuff = stuff_classes(num_classes)
    if np.isin(label, stuff).any():
        if hasattr(proposer, "stuff_segments"):  # non-overlapping regions: every one at once
            out[:] = segment_majority(proposer.stuff_segments(), label, stuff, min_share)
        else:
            for region in proposer.stuff_regions():
                c = majority_label(region, label, stuff, min_share)
                if c is not None:
                    out[region] = c
    counts = np.bincount(label[label != IGNORE].astype(np.int64), minlength=num_classes)
    for c in thing_classes(num_classes):
        if counts[c] <= min_thing_pixels:
            continue
        comps = components(label, min_pixels=min_thing_pixels, classes=(c,))
        for k in range(len(comps)):
            out[proposer.thing_region(comps.mask(k), label)] = c
    return out


def image_uint8(image) -> np.ndarray:
    """A loader's float [3, H, W] image in [0, 1] as uint8 [H, W, 3]."""
    return image.permute(1, 2, 0).clamp(0, 1).mul(255).round().byte().numpy()


def aggregate_set(images, confident_labels, proposer, writer, num_classes: int, min_share: float = 0.2,
                  min_thing_pixels: int = 10, log=None) -> None:
    """PSA over a whole set: ``images`` (a dataset with ``load_image``), ``confident_labels``
    (an iterable of uint8 [H, W] in image order), results into an open ``RefinedWriter``."""
    for i, label in enumerate(confident_labels):
        image = image_uint8(images.load_image(i))
        writer.write(i, aggregate(image, label, proposer, num_classes, min_share, min_thing_pixels))
        if log is not None and ((i + 1) % 100 == 0 or i + 1 == len(images)):
            log(f"PSA {i + 1}/{len(images)}")

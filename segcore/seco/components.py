"""8-connected components of a label map, one class at a time (SCC's samples, PSA's thing prompts)."""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from ..pseudo.store_base import IGNORE

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclasses.dataclass(frozen=True)
class Components:
    """The components of one label map: ``ids`` [H, W] int32 (0 = none, k = component k),
    and per component k (position k - 1) its class, pixel count and box (y0, x0, y1, x1), end exclusive."""

    ids: np.ndarray
    classes: np.ndarray
    areas: np.ndarray
    boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.classes)

    def mask(self, k: int) -> np.ndarray:
        """Boolean mask of component ``k`` (0-based position)."""
        return self.ids == k + 1


def components(label, min_pixels: int = 1, classes=None) -> Components:
    """8-connected components of every class of ``label`` (255 never forms one), in increasing
    class id, then in scipy's raster order; components under ``min_pixels`` are left out."""
    label = np.asarray(label)
    ids = np.zeros(label.shape, dtype=np.int32)
    cls, areas, boxes = [], [], []
    present = np.unique(label)
    present = present[present != IGNORE]
    if classes is not None:
        present = np.asarray([c for c in present if int(c) in set(int(x) for x in classes)], dtype=present.dtype)
    n = 0
    for c in present:
        comp, count = ndimage.label(label == c, structure=_EIGHT)
        if count == 0:
            continue
        sizes = np.bincount(comp.reshape(-1), minlength=count + 1)
        slices = ndimage.find_objects(comp)
        for j in range(1, count + 1):
            if sizes[j] < min_pixels:
                continue
            n += 1
            ids[comp == j] = n
            sl = slices[j - 1]
            cls.append(int(c))
            areas.append(int(sizes[j]))
            boxes.append((sl[0].start, sl[1].start, sl[0].stop, sl[1].stop))
    return Components(ids, np.asarray(cls, dtype=np.int64), np.asarray(areas, dtype=np.int64),
                      np.asarray(boxes, dtype=np.int64).reshape(-1, 4))


def render(comps: Components, labels) -> np.ndarray:
    """Label map with each component painted with ``labels[k]`` (255 = drop it); 255 elsewhere."""
    lut = np.concatenate([[IGNORE], np.asarray(labels, dtype=np.int64)]).astype(np.uint8)
    return lut[comps.ids]

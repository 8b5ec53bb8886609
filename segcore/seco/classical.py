"""The proposer without SAM: superpixels for stuff, grown connected components for things.

* Stuff regions: a scikit-image over-segmentation of the image (``felzenszwalb``, graph-based,
  the default, or ``slic``). The regions do not overlap, so PSA labels them all at once
  (``stuff_segments``) with the same majority rule as SAM's masks.
* Thing regions: the component itself, grown ``grow_steps`` times by one 8-connected ring into
  pixels whose colour lies within ``colour_tol`` (Euclidean, 0-255 RGB) of the component's mean
  colour and whose pixel label is ignore or the component's own class. A component therefore
  spreads into the unlabelled (low-confidence) pixels of its object, never over another class's
  confident pixels.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..pseudo.store_base import IGNORE

SUPERPIXELS = ("felzenszwalb", "slic")
_EIGHT = np.ones((3, 3), dtype=bool)


class ClassicalProposer:
    def __init__(self, superpixels: str = "felzenszwalb", scale: float = 50.0, sigma: float = 0.5,
                 min_size: int = 20, n_segments: int = 200, compactness: float = 10.0, grow_steps: int = 3,
                 colour_tol: float = 40.0):
        if superpixels not in SUPERPIXELS:
            raise ValueError(f"unknown superpixel method {superpixels!r} (choose from {', '.join(SUPERPIXELS)})")
        self.superpixels, self.scale, self.sigma, self.min_size = superpixels, scale, sigma, int(min_size)
        self.n_segments, self.compactness = int(n_segments), compactness
        self.grow_steps, self.colour_tol = int(grow_steps), float(colour_tol)
        self.name = f"classical_{superpixels}"
        self._image = None
        self._segments = None

    def set_image(self, image: np.ndarray) -> None:
        self._image = np.asarray(image)
        self._segments = None

    def stuff_segments(self) -> np.ndarray:
        """Superpixel ids [H, W] (int, 0..n-1), one region each."""
        if self._segments is None:
            from skimage import segmentation

            if self.superpixels == "felzenszwalb":
                seg = segmentation.felzenszwalb(self._image, scale=self.scale, sigma=self.sigma, min_size=self.min_size)
            else:
                seg = segmentation.slic(self._image, n_segments=self.n_segments, compactness=self.compactness,
                                        start_label=0)
            self._segments = seg.astype(np.int64)
        return self._segments

    def stuff_regions(self):
        seg = self.stuff_segments()
        for s in range(int(seg.max()) + 1):
            yield seg == s

    def thing_region(self, component: np.ndarray, label: np.ndarray) -> np.ndarray:
        img = self._image.astype(np.float32)
        mean = img[component].mean(axis=0)
        close = np.linalg.norm(img - mean, axis=-1) <= self.colour_tol
        cls = label[component][0]
        allowed = close & ((label == IGNORE) | (label == cls))
        region = component.copy()
        for _ in range(self.grow_steps):
            grown = ndimage.binary_dilation(region, structure=_EIGHT) & allowed
            grown |= region
            if np.array_equal(grown, region):
                break
            region = grown
        return region

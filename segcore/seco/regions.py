"""The stuff / thing split of SeCo's aggregation and the interface of a region proposer.

Stuff classes (road, sidewalk, building, wall, fence, vegetation, terrain, sky) take their
labels from class-agnostic regions of the image (SAM's automatic masks, or superpixels);
thing classes are completed from each of their connected components through a prompt (a box
and points for SAM, region growing for the classical proposer).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from ..data.classes import class_names

STUFF_NAMES = ("road", "sidewalk", "building", "wall", "fence", "vegetation", "terrain", "sky")


def stuff_classes(num_classes: int) -> tuple[int, ...]:
    """Indices of the stuff classes in the chain's class list (19: 0-4, 8-10; 16: 0-4, 8, 9)."""
    return tuple(i for i, n in enumerate(class_names(num_classes)) if n in STUFF_NAMES)


def thing_classes(num_classes: int) -> tuple[int, ...]:
    stuff = set(stuff_classes(num_classes))
    return tuple(i for i in range(num_classes) if i not in stuff)


class RegionProposer(Protocol):
    """What PSA asks of a proposer, image by image.

    ``set_image(image)`` with the RGB image as uint8 [H, W, 3] at the label's resolution, then
    ``stuff_regions()`` -> boolean [H, W] masks in the order they are painted (later ones
    overwrite earlier ones), and ``thing_region(component, label)`` -> the boolean [H, W] region
    prompted by one connected component (``label``: the image's pixel pseudo-labels)."""

    name: str

    def set_image(self, image: np.ndarray) -> None: ...

    def stuff_regions(self) -> list[np.ndarray]: ...

    def thing_region(self, component: np.ndarray, label: np.ndarray) -> np.ndarray: ...

"""The one table of classes and label-id maps.

Every converter, loader, metric and table takes its class list and id maps from here.
Converted labels on disk always hold the 19 Cityscapes trainIds (255 = ignore); the
16-class view used by SYNTHIA -> Cityscapes is a lookup applied at load time
(``remap_lut(16)``), so there is exactly one converted copy of every dataset.
"""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

# (trainId, name, Cityscapes/GTA5 labelId, SYNTHIA class id, colour of the Cityscapes palette)
_TABLE = (
    (0, "road", 7, 3, (128, 64, 128)),
    (1, "sidewalk", 8, 4, (244, 35, 232)),
    (2, "building", 11, 2, (70, 70, 70)),
    (3, "wall", 12, 21, (102, 102, 156)),
    (4, "fence", 13, 5, (190, 153, 153)),
    (5, "pole", 17, 7, (153, 153, 153)),
    (6, "traffic_light", 19, 15, (250, 170, 30)),
    (7, "traffic_sign", 20, 9, (220, 220, 0)),
    (8, "vegetation", 21, 6, (107, 142, 35)),
    (9, "terrain", 22, 16, (152, 251, 152)),
    (10, "sky", 23, 1, (70, 130, 180)),
    (11, "person", 24, 10, (220, 20, 60)),
    (12, "rider", 25, 17, (255, 0, 0)),
    (13, "car", 26, 8, (0, 0, 142)),
    (14, "truck", 27, 18, (0, 0, 70)),
    (15, "bus", 28, 19, (0, 60, 100)),
    (16, "train", 31, 20, (0, 80, 100)),
    (17, "motorcycle", 32, 12, (0, 0, 230)),
    (18, "bicycle", 33, 11, (119, 11, 32)),
)

CLASSES19 = tuple(row[1] for row in _TABLE)
TRAINID_COLORS = tuple(row[4] for row in _TABLE)
CITYSCAPES_LABELID_TO_TRAINID = {row[2]: row[0] for row in _TABLE}
SYNTHIA_ID_TO_TRAINID19 = {row[3]: row[0] for row in _TABLE}

# The SYNTHIA protocol drops terrain, truck and train (16 classes); mIoU13 further drops
# wall, fence and pole from the same 16 IoUs (docs/protocol.md, Datasets and classes).
_NOT_IN_16 = ("terrain", "truck", "train")
_NOT_IN_13 = ("wall", "fence", "pole")
CLASSES16 = tuple(c for c in CLASSES19 if c not in _NOT_IN_16)
CLASSES13 = tuple(c for c in CLASSES16 if c not in _NOT_IN_13)
#: positions of the 13 classes inside the 16-class list (to average 13 of 16 IoUs)
CLASSES13_IN_16 = tuple(CLASSES16.index(c) for c in CLASSES13)

# All Cityscapes labelIds with their colours (GTA5 label PNGs carry this palette).
CITYSCAPES_LABELID_COLORS = {
    0: (0, 0, 0), 1: (0, 0, 0), 2: (0, 0, 0), 3: (0, 0, 0), 4: (0, 0, 0),
    5: (111, 74, 0), 6: (81, 0, 81), 7: (128, 64, 128), 8: (244, 35, 232),
    9: (250, 170, 160), 10: (230, 150, 140), 11: (70, 70, 70), 12: (102, 102, 156),
    13: (190, 153, 153), 14: (180, 165, 180), 15: (150, 100, 100), 16: (150, 120, 90),
    17: (153, 153, 153), 18: (153, 153, 153), 19: (250, 170, 30), 20: (220, 220, 0),
    21: (107, 142, 35), 22: (152, 251, 152), 23: (70, 130, 180), 24: (220, 20, 60),
    25: (255, 0, 0), 26: (0, 0, 142), 27: (0, 0, 70), 28: (0, 60, 100),
    29: (0, 0, 90), 30: (0, 0, 110), 31: (0, 80, 100), 32: (0, 0, 230), 33: (119, 11, 32),
}
#: every labelId a Cityscapes or GTA5 label may contain (anything else is bad input)
CITYSCAPES_KNOWN_LABELIDS = frozenset(CITYSCAPES_LABELID_COLORS)
#: SYNTHIA-RAND-CITYSCAPES class ids 0 (void) .. 22 (lanemarking)
SYNTHIA_KNOWN_IDS = frozenset(range(23))


def class_names(num_classes: int) -> tuple[str, ...]:
    """Class list of a chain: 19 (GTA5 protocol) or 16 (SYNTHIA protocol)."""
    if num_classes == 19:
        return CLASSES19
    if num_classes == 16:
        return CLASSES16
    raise ValueError(f"num_classes must be 19 or 16, got {num_classes}")


def _lut(mapping: dict[int, int], size: int) -> np.ndarray:
    lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


#: uint8 labelId -> trainId (GTA5 and Cityscapes labelIds PNGs)
CITYSCAPES_LUT = _lut(CITYSCAPES_LABELID_TO_TRAINID, 256)
#: uint16 SYNTHIA class id -> 19-class trainId
SYNTHIA_LUT19 = _lut(SYNTHIA_ID_TO_TRAINID19, 65536)


def remap_lut(num_classes: int) -> np.ndarray:
    """uint8 LUT from 19-class trainIds (and 255) to the chain's trainIds."""
    names = class_names(num_classes)
    return _lut({CLASSES19.index(c): i for i, c in enumerate(names)}, 256)


#: uint16 SYNTHIA class id -> 16-class trainId (the official 16-class list, for checks)
SYNTHIA_LUT16 = remap_lut(16)[SYNTHIA_LUT19]

"""Shared look of the report's figures: the Agg backend, deterministic SVG output, short class
names and the Cityscapes palette."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from segcore.atomic import atomic_path  # noqa: E402
from segcore.data.classes import CLASSES19, TRAINID_COLORS, class_names  # noqa: E402

# the same SVG bytes for the same data: no date, fixed element ids, text kept as text
plt.rcParams.update({"svg.hashsalt": "segcore", "svg.fonttype": "none", "font.size": 9,
                     "axes.spines.top": False, "axes.spines.right": False})

#: short names of the 19 classes (the papers' table headers)
SHORT_NAMES = {
    "road": "road", "sidewalk": "sidew", "building": "build", "wall": "wall", "fence": "fence", "pole": "pole",
    "traffic_light": "light", "traffic_sign": "sign", "vegetation": "veg", "terrain": "terr", "sky": "sky",
    "person": "pers", "rider": "rider", "car": "car", "truck": "truck", "bus": "bus", "train": "train",
    "motorcycle": "mbike", "bicycle": "bike",
}
assert tuple(SHORT_NAMES) == CLASSES19

#: short chain names for titles
CHAIN_TITLES = {"gta5_to_cityscapes": "GTA5 → Cityscapes", "synthia_to_cityscapes": "SYNTHIA → Cityscapes",
                "gta5_synthia_to_cityscapes": "GTA5 + SYNTHIA → Cityscapes"}


def short(name: str) -> str:
    return SHORT_NAMES.get(name, name)


def chain_title(chain: str) -> str:
    return CHAIN_TITLES.get(chain, chain)


def palette(num_classes: int) -> np.ndarray:
    """[num_classes + 1, 3] uint8 colours of the chain's class indices (Cityscapes palette);
    the last row (black) is the ignore label's."""
    colours = [TRAINID_COLORS[CLASSES19.index(c)] for c in class_names(num_classes)]
    return np.array([*colours, (0, 0, 0)], dtype=np.uint8)


def colourise(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[H, W] class indices (255 = ignore) -> [H, W, 3] uint8 in the Cityscapes palette."""
    idx = np.where(labels >= num_classes, num_classes, labels).astype(np.intp)
    return palette(num_classes)[idx]


def save(fig, path, dpi=110, tight=True) -> None:
    """Write ``fig`` to ``path`` atomically (format from the suffix) and close it."""
    fmt = str(path).rsplit(".", 1)[-1]
    metadata = {"Date": None} if fmt == "svg" else {"Software": None} if fmt == "png" else None
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, metadata=metadata, bbox_inches="tight" if tight else None, dpi=dpi)
    plt.close(fig)

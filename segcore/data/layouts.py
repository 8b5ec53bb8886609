"""Scanners for the raw on-disk layouts of GTA5, SYNTHIA-RAND-CITYSCAPES and Cityscapes.

A scanner only lists files and checks the folder structure; it never opens an image. It
returns one :class:`RawPair` per image, sorted by key, or raises a one-line
:class:`~segcore.data.io.BadInputError` naming the path and what is wrong:

- the root is missing, or an expected subfolder is missing;
- a split holds no image;
- an image has no label file, or a label file has no image.

Layouts (docs/protocol.md, Datasets and classes):

- ``gta5``: ``images/NNNNN.png`` + ``labels/NNNNN.png`` (palette PNG of Cityscapes labelIds), all "train".
- ``synthia``: ``RGB/NNNNNNN.png`` + ``GT/LABELS/NNNNNNN.png`` (16-bit, channel 0 = class id), all "train".
- ``cityscapes``: ``leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png`` +
  ``gtFine/{split}/{city}/{stem}_gtFine_labelIds.png`` for the splits train and val (a test split is ignored).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .io import BadInputError

DATASETS = ("gta5", "synthia", "cityscapes")
CITYSCAPES_SPLITS = ("train", "val")
_CS_IMAGE_SUFFIX = "_leftImg8bit.png"
_CS_LABEL_SUFFIX = "_gtFine_labelIds.png"


@dataclass(frozen=True)
class RawPair:
    """One raw image/label pair; paths are relative to the dataset root."""

    key: str  # label path relative to the label folder, without the raw suffix
    image: str  # image path relative to the root
    label: str  # label path relative to the root
    split: str


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise BadInputError(f"{path}: {what} not found")
    return path


def _pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())


def _flat_pairs(root: Path, image_dir: str, label_dir: str, dataset: str) -> list[RawPair]:
    images = _require_dir(root / image_dir, f"{dataset} image folder '{image_dir}/'")
    labels = _require_dir(root / label_dir, f"{dataset} label folder '{label_dir}/'")
    files = _pngs(images)
    if not files:
        raise BadInputError(f"{images}: no .png images (empty split 'train')")
    pairs = []
    for img in files:
        lab = labels / img.name
        if not lab.is_file():
            raise BadInputError(f"{lab}: label file missing for image {img}")
        pairs.append(RawPair(key=img.stem, image=f"{image_dir}/{img.name}", label=f"{label_dir}/{img.name}",
                             split="train"))
    names = {img.name for img in files}
    for lab in _pngs(labels):
        if lab.name not in names:
            raise BadInputError(f"{lab}: image file missing for label (expected {images / lab.name})")
    return pairs


def scan_gta5(root) -> list[RawPair]:
    root = _require_dir(Path(root), "gta5 root")
    return _flat_pairs(root, "images", "labels", "gta5")


def scan_synthia(root) -> list[RawPair]:
    root = _require_dir(Path(root), "synthia root")
    return _flat_pairs(root, "RGB", "GT/LABELS", "synthia")


def scan_cityscapes(root) -> list[RawPair]:
    root = _require_dir(Path(root), "cityscapes root")
    pairs = []
    for split in CITYSCAPES_SPLITS:
        img_split = _require_dir(root / "leftImg8bit" / split, f"cityscapes image folder 'leftImg8bit/{split}/'")
        lab_split = _require_dir(root / "gtFine" / split, f"cityscapes label folder 'gtFine/{split}/'")
        files = sorted(p for p in img_split.glob(f"*/*{_CS_IMAGE_SUFFIX}") if p.is_file())
        if not files:
            raise BadInputError(f"{img_split}: no *{_CS_IMAGE_SUFFIX} images (empty split '{split}')")
        for img in files:
            city = img.parent.name
            stem = img.name[: -len(_CS_IMAGE_SUFFIX)]
            lab = lab_split / city / f"{stem}{_CS_LABEL_SUFFIX}"
            if not lab.is_file():
                raise BadInputError(f"{lab}: label file missing for image {img}")
            pairs.append(RawPair(
                key=f"{split}/{city}/{stem}",
                image=f"leftImg8bit/{split}/{city}/{img.name}",
                label=f"gtFine/{split}/{city}/{lab.name}",
                split=split,
            ))
        stems = {img.parent.name + "/" + img.name[: -len(_CS_IMAGE_SUFFIX)] for img in files}
        for lab in sorted(lab_split.glob(f"*/*{_CS_LABEL_SUFFIX}")):
            if lab.parent.name + "/" + lab.name[: -len(_CS_LABEL_SUFFIX)] not in stems:
                img = img_split / lab.parent.name / (lab.name[: -len(_CS_LABEL_SUFFIX)] + _CS_IMAGE_SUFFIX)
                raise BadInputError(f"{lab}: image file missing for label (expected {img})")
    return pairs


_SCANNERS = {"gta5": scan_gta5, "synthia": scan_synthia, "cityscapes": scan_cityscapes}


def scan(dataset: str, root) -> list[RawPair]:
    """All image/label pairs of a raw dataset tree, validated (see the module docstring)."""
    try:
        scanner = _SCANNERS[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}") from None
    return scanner(root)

"""Qualitative overlays of one chain: for a fixed set of target val images, the image, its
ground truth and the prediction of each run, in the Cityscapes palette with a legend.

The predictions are made here, one model at a time, as the evaluation makes them (the image at
the evaluation's resize, logits upsampled bilinearly to the label's size, argmax)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Patch

from segcore.data.classes import IGNORE_INDEX, class_names
from segcore.data.datasets import SegmentationDataset
from segcore.data.io import read_rgb
from segcore.methods.warmup import upsample
from segcore.models.checkpoint import load_model

from .style import chain_title, colourise, palette, save, short

__all__ = ["select_images", "predict", "plot_overlays"]


def select_images(dataset: SegmentationDataset, images) -> list[int]:
    """Indices of ``images`` in the split: an int n (the first n in manifest order) or a list
    of manifest keys; a key the split lacks is a one-line error naming the manifest."""
    if isinstance(images, int):
        if images < 1:
            raise ValueError(f"report.overlay_images: expected at least 1 image, got {images}")
        return list(range(min(images, len(dataset))))
    index = {k: i for i, k in enumerate(dataset.keys)}
    missing = [k for k in images if k not in index]
    if missing:
        raise ValueError(f"{dataset.manifest}: split {dataset.split!r} has no image {missing[0]!r} "
                         "(config key report.overlay_images)")
    return [index[k] for k in images]


@torch.no_grad()
def predict(model_path, dataset: SegmentationDataset, indices: list[int], num_classes: int,
            device="cpu") -> np.ndarray:
    """[N, H, W] uint8 predicted class indices of ``indices`` (at each label's size)."""
    model, _ = load_model(model_path, expect_num_classes=num_classes)
    model.eval().to(device)
    out = []
    for i in indices:
        label = dataset.load_label(i)
        logits = model(dataset.load_image(i)[None].to(device))["out"]
        out.append(upsample(logits, label.shape[-2:]).argmax(1)[0].to("cpu", torch.uint8).numpy())
    return np.stack(out)


def _fit(img: np.ndarray, width: int) -> np.ndarray:
    """Nearest-neighbour resample of an [H, W(, 3)] array to about ``width`` pixels wide."""
    w = img.shape[1]
    if w < width:
        k = max(1, round(width / w))
        return img.repeat(k, axis=0).repeat(k, axis=1)
    k = max(1, w // width)
    return img[::k, ::k]


def plot_overlays(dataset: SegmentationDataset, indices: list[int], runs: list[tuple[str, np.ndarray]],
                  num_classes: int, chain: str, out, panel_width: int = 256) -> None:
    """Columns are the images; rows the image, its ground truth, then each run's prediction
    (``runs``: (row label, [N, H, W] predictions)); one mosaic at about ``panel_width`` pixels
    per panel (nearest neighbour: the pixels as predicted)."""
    labels = [dataset.load_label(i).numpy() for i in indices]
    images = []
    for i, lab in zip(indices, labels):
        img = read_rgb(dataset.images[i])
        if img.shape[:2] != lab.shape:  # the image at the label's size, as the metrics see it
            from PIL import Image

            img = np.asarray(Image.fromarray(img).resize(lab.shape[::-1], Image.BILINEAR))
        images.append(img)
    rows = [("image", images), ("ground truth", [colourise(lab, num_classes) for lab in labels])]
    for name, pred in runs:
        # pixels without a ground-truth label are shown black in the predictions too
        rows.append((name, [colourise(np.where(lab == IGNORE_INDEX, IGNORE_INDEX, p), num_classes)
                            for p, lab in zip(pred, labels)]))
    gap = 4
    cells = [[_fit(img, panel_width) for img in panels] for _, panels in rows]
    ph, pw = cells[0][0].shape[:2]
    mosaic = np.full((len(rows) * (ph + gap) - gap, len(indices) * (pw + gap) - gap, 3), 255, np.uint8)
    for r, panels in enumerate(cells):
        for c, img in enumerate(panels):
            h, w = img.shape[:2]
            mosaic[r * (ph + gap):r * (ph + gap) + min(h, ph), c * (pw + gap):c * (pw + gap) + min(w, pw)] = \
                img[:ph, :pw]
    dpi = 100
    left, top, bottom = 1.5, 0.55, 0.6  # inches: row labels, title and column names, legend
    w_in, h_in = mosaic.shape[1] / dpi, mosaic.shape[0] / dpi
    fig = plt.figure(figsize=(w_in + left + 0.1, h_in + top + bottom), dpi=dpi)
    ax = fig.add_axes((left / (w_in + left + 0.1), bottom / (h_in + top + bottom),
                       w_in / (w_in + left + 0.1), h_in / (h_in + top + bottom)))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([c * (pw + gap) + pw / 2 for c in range(len(indices))],
                  [dataset.keys[i].rsplit("/", 1)[-1] for i in indices], fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks([r * (ph + gap) + ph / 2 for r in range(len(rows))], [name for name, _ in rows], fontsize=8)
    ax.tick_params(length=0)
    ax.spines[:].set_visible(False)
    colours = palette(num_classes) / 255
    handles = [Patch(color=colours[i], label=short(n)) for i, n in enumerate(class_names(num_classes))]
    handles.append(Patch(color=colours[-1], label="ignore"))
    fig.legend(handles=handles, loc="lower center", ncol=min(10, len(handles)), fontsize=7, frameon=False)
    fig.suptitle(f"{chain_title(chain)}: target images, ground truth and each run's prediction", fontsize=10,
                 y=1 - 0.08 / (h_in + top + bottom), va="top")
    save(fig, out, dpi=dpi, tight=False)  # at the mosaic's own pixels

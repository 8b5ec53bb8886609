"""CPSL's colour transfer of source images to target statistics in CIE-LAB
(docs/protocol.md, Pre-processing and views; the official ``data/gta5_dataset.py``).

On every access the official GTA5 loader picks a random Cityscapes train image and, per LAB
channel, maps the source image to the reference's mean and standard deviation:
``(x - mean_src) / std_src * std_ref + mean_ref``, then back to RGB, clipped. It does this after
resizing the source image and before the weak view. The conversion is scikit-image's
``rgb2lab`` / ``lab2rgb`` (sRGB, D65, 2 degree observer), reimplemented here in torch so that it
runs vectorised in the loader workers without another dependency. Two small differences:
the result stays float (the official code truncates to uint8), and a flat channel
(std 0, where the official code divides by zero) is only shifted to the reference mean.

``LabTransferSet`` wraps a labelled ``SegmentationDataset`` (the source set, with its weak view)
and draws the reference image from a target set; the draw is seeded by the sample's view seed,
so runs are reproducible and independent of the number of workers. The reference statistics are
cached per worker (one reference image is read and converted once).
"""
from __future__ import annotations

import torch
from torch import Tensor

# scikit-image's sRGB (D65) matrix and reference white
_XYZ_FROM_RGB = torch.tensor([[0.412453, 0.357580, 0.180423],
                              [0.212671, 0.715160, 0.072169],
                              [0.019334, 0.119193, 0.950227]], dtype=torch.float64)
_RGB_FROM_XYZ = torch.linalg.inv(_XYZ_FROM_RGB)
_WHITE = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
_STD_EPS = 1e-6


def _mix(matrix: Tensor, x: Tensor) -> Tensor:
    """Apply a 3x3 colour matrix over dim -3 of (..., 3, H, W)."""
    return torch.einsum("ij,...jhw->...ihw", matrix.to(x.device, x.dtype), x)


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB in [0, 1], (..., 3, H, W) -> CIE-LAB (L in [0, 100]), computed in float64."""
    x = rgb.double()
    lin = torch.where(x > 0.04045, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4, x / 12.92)
    xyz = _mix(_XYZ_FROM_RGB, lin) / _WHITE.to(x.device)[:, None, None]
    f = torch.where(xyz > 0.008856, xyz.clamp_min(0.008856) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)


def lab_to_rgb(lab: Tensor) -> Tensor:
    """CIE-LAB (..., 3, H, W) -> sRGB clipped to [0, 1] (float64), as scikit-image's ``lab2rgb``."""
    lab = lab.double()
    big_l, a, b = lab.unbind(-3)
    fy = (big_l + 16.0) / 116.0
    f = torch.stack([a / 500.0 + fy, fy, (fy - b / 200.0).clamp_min(0.0)], dim=-3)
    xyz = torch.where(f > 0.2068966, f ** 3, (f - 16.0 / 116.0) / 7.787) * _WHITE.to(lab.device)[:, None, None]
    lin = _mix(_RGB_FROM_XYZ, xyz)
    rgb = torch.where(lin > 0.0031308, 1.055 * lin.clamp_min(0.0031308) ** (1.0 / 2.4) - 0.055, 12.92 * lin)
    return rgb.clamp(0.0, 1.0)


def lab_stats(rgb: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (population) standard deviation in LAB of an image (3, H, W)."""
    lab = rgb_to_lab(rgb).flatten(-2)
    return lab.mean(-1), lab.std(-1, unbiased=False)


def lab_transfer(rgb: Tensor, ref_mean: Tensor, ref_std: Tensor) -> Tensor:
    """Image (3, H, W) in [0, 1] with its LAB channels mapped to ``ref_mean`` / ``ref_std`` (3,);
    returns an image of the input's dtype in [0, 1]."""
    lab = rgb_to_lab(rgb)
    flat = lab.flatten(-2)
    mean, std = flat.mean(-1), flat.std(-1, unbiased=False)
    ref_mean, ref_std = ref_mean.to(lab), ref_std.to(lab)
    scale = torch.where(std > _STD_EPS, ref_std / std.clamp_min(_STD_EPS), torch.ones_like(std))
    out = (lab - mean[:, None, None]) * scale[:, None, None] + ref_mean[:, None, None]
    return lab_to_rgb(out).to(rgb.dtype)


class LabTransferSet(torch.utils.data.Dataset):
    """A labelled ``SegmentationDataset`` whose images are colour-transferred to a random image
    of ``reference`` (a ``SegmentationDataset`` of the target set) before its weak view."""

    _SALT = 0x5DEECE66D  # separates the reference draw from the view's own random stream

    def __init__(self, base, reference):
        if base.transform is None or not base.with_labels:
            raise ValueError("LabTransferSet wraps a labelled SegmentationDataset with a view")
        self.base, self.reference = base, reference
        self._stats: dict[int, tuple[Tensor, Tensor]] = {}

    def __len__(self) -> int:
        return len(self.base)

    def reference_stats(self, j: int) -> tuple[Tensor, Tensor]:
        if j not in self._stats:
            self._stats[j] = lab_stats(self.reference.load_image(j))
        return self._stats[j]

    def __getitem__(self, item):
        if isinstance(item, (tuple, list)):
            index, view_seed = int(item[0]), int(item[1])
            pick = torch.Generator().manual_seed((view_seed ^ self._SALT) % (2**63))
            view_gen = torch.Generator().manual_seed(view_seed)
        else:
            index, pick, view_gen = int(item), None, None
        j = int(torch.randint(len(self.reference), (), generator=pick))
        image = lab_transfer(self.base.load_image(index), *self.reference_stats(j))
        image, label, view = self.base.transform(image, self.base.load_label(index), generator=view_gen)
        return {"image": image, "index": index, "label": label, "view": view}


__all__ = ["rgb_to_lab", "lab_to_rgb", "lab_stats", "lab_transfer", "LabTransferSet"]

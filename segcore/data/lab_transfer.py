"""CPSL's colour transfer of source images to target statistics in CIE-LAB
(docs/protocol.md, Pre-processing and views; the official ``data/gta5_dataset.py``).

On every access the official GTA5 loader picks a random Cityscapes train image and, per LAB
channel, maps the source image to the reference's mean and standard deviation:
``(x - mean_src) / std_src * std_ref + mean_ref``, then back to RGB, clipped. It does this after
resizing the source image and before the weak view. The conversion is scikit-image's
``rgb2lab`` / ``lab2rgb`` (sRGB, D65, 2 degree observer), reimplemented here in torch so that it
runs vectorised in the loader workers without another dependency. Small differences:
the result stays float (the official code truncates to uint8), a flat channel (std 0, where the
official code divides by zero) is only shifted to the reference mean, and the transfer computes
in float32 (within 1/255 of float64, tests/test_cpsl.py; about twice as fast).

The official loader converts the reference image on every access. Here the per-image reference
statistics of the target train set are computed once, in float64, as an artifact
(``results/data/<target>/lab_stats_train.json``, rule ``lab_stats``; ``write_lab_stats`` /
``read_lab_stats``), checked against the target set's key list when read.

``LabTransferSet`` wraps a labelled ``SegmentationDataset`` (the source set, with its weak view)
and draws the reference from those statistics; the draw is seeded by the sample's view seed,
so runs are reproducible and independent of the number of workers.
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


def rgb_to_lab(rgb: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """sRGB in [0, 1], (..., 3, H, W) -> CIE-LAB (L in [0, 100]), computed in ``dtype``."""
    x = rgb.to(dtype)
    lin = torch.where(x > 0.04045, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4, x / 12.92)
    xyz = _mix(_XYZ_FROM_RGB, lin) / _WHITE.to(x.device)[:, None, None]
    f = torch.where(xyz > 0.008856, xyz.clamp_min(0.008856) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)


def lab_to_rgb(lab: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """CIE-LAB (..., 3, H, W) -> sRGB clipped to [0, 1] in ``dtype``, as scikit-image's ``lab2rgb``."""
    lab = lab.to(dtype)
    big_l, a, b = lab.unbind(-3)
    fy = (big_l + 16.0) / 116.0
    f = torch.stack([a / 500.0 + fy, fy, (fy - b / 200.0).clamp_min(0.0)], dim=-3)
    xyz = torch.where(f > 0.2068966, f ** 3, (f - 16.0 / 116.0) / 7.787) * _WHITE.to(lab.device)[:, None, None]
    lin = _mix(_RGB_FROM_XYZ, xyz)
    rgb = torch.where(lin > 0.0031308, 1.055 * lin.clamp_min(0.0031308) ** (1.0 / 2.4) - 0.055, 12.92 * lin)
    return rgb.clamp(0.0, 1.0)


def lab_stats(rgb: Tensor, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (population) standard deviation in LAB of an image (3, H, W)."""
    lab = rgb_to_lab(rgb, dtype).flatten(-2)
    return lab.mean(-1), lab.std(-1, unbiased=False)


def lab_transfer(rgb: Tensor, ref_mean: Tensor, ref_std: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Image (3, H, W) in [0, 1] with its LAB channels mapped to ``ref_mean`` / ``ref_std`` (3,),
    computed in ``dtype``; returns an image of the input's dtype in [0, 1]."""
    lab = rgb_to_lab(rgb, dtype)
    flat = lab.flatten(-2)
    mean, std = flat.mean(-1), flat.std(-1, unbiased=False)
    ref_mean, ref_std = ref_mean.to(lab), ref_std.to(lab)
    scale = torch.where(std > _STD_EPS, ref_std / std.clamp_min(_STD_EPS), torch.ones_like(std))
    out = (lab - mean[:, None, None]) * scale[:, None, None] + ref_mean[:, None, None]
    return lab_to_rgb(out, dtype).to(rgb.dtype)


# --------------------------------------------------------------------------------------------
# the reference statistics of the target train set, an artifact

LAB_STATS_FORMAT = 1


def compute_lab_stats(dataset, num_workers: int = 0, log=None) -> Tensor:
    """(N, 2, 3) float64: LAB mean and std of every image of ``dataset`` (a ``SegmentationDataset``),
    in its order, read through a DataLoader with ``num_workers`` workers."""
    loader = torch.utils.data.DataLoader(_ImageStats(dataset), batch_size=None, shuffle=False,
                                         num_workers=num_workers)
    out = torch.empty(len(dataset), 2, 3, dtype=torch.float64)
    for i, stats in enumerate(loader):
        out[i] = stats
        if log is not None and (i + 1) % 100 == 0:
            log(f"{i + 1}/{len(dataset)} images")
    return out


class _ImageStats(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Tensor:
        return torch.stack(lab_stats(self.dataset.load_image(i)))


def write_lab_stats(path, keys, stats: Tensor, source: dict) -> None:
    """Write the (N, 2, 3) statistics of the images ``keys`` as JSON, atomically; ``source``
    says what they were computed on (the data spec)."""
    from ..atomic import write_json
    from ..pseudo.store_base import keys_digest

    stats = torch.as_tensor(stats, dtype=torch.float64)
    if stats.shape != (len(keys), 2, 3):
        raise ValueError(f"{path}: statistics of shape {tuple(stats.shape)} for {len(keys)} images")
    write_json(path, {"format": LAB_STATS_FORMAT, "what": "CIE-LAB mean and population std per image",
                      "source": source, "count": len(keys), "keys_sha256": keys_digest(keys),
                      "mean": stats[:, 0].tolist(), "std": stats[:, 1].tolist()})


def read_lab_stats(path, expect_keys) -> Tensor:
    """The (N, 2, 3) float32 statistics of ``path``, refused with a one-line error naming the file
    when it is not a statistics file of exactly the images ``expect_keys``, in that order."""
    import json

    from ..pseudo.store_base import keys_digest

    try:
        data = json.loads(open(path, encoding="utf-8").read())
        mean, std = torch.tensor(data["mean"], dtype=torch.float64), torch.tensor(data["std"], dtype=torch.float64)
        fmt, count, digest = data["format"], data["count"], data["keys_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a LAB statistics file ({type(exc).__name__}: {exc})") from None
    if fmt != LAB_STATS_FORMAT:
        raise ValueError(f"{path}: LAB statistics format {fmt!r}, this version reads {LAB_STATS_FORMAT}")
    n = len(expect_keys)
    if count != n or digest != keys_digest(expect_keys):
        raise ValueError(f"{path}: LAB statistics of {count} images that are not the {n} images of the "
                         "target set (their key lists differ); rebuild it")
    if mean.shape != (n, 3) or std.shape != (n, 3) or not (torch.isfinite(mean).all() and (std >= 0).all()):
        raise ValueError(f"{path}: 'mean' and 'std' must be {n} finite triples, std >= 0")
    return torch.stack([mean, std], dim=1).float()


class LabTransferSet(torch.utils.data.Dataset):
    """A labelled ``SegmentationDataset`` whose images are colour-transferred to the statistics of
    a random target image before its weak view; ``reference_stats`` is (N, 2, 3) (mean, std) per
    target image (``read_lab_stats``)."""

    _SALT = 0x5DEECE66D  # separates the reference draw from the view's own random stream

    def __init__(self, base, reference_stats: Tensor):
        if base.transform is None or not base.with_labels:
            raise ValueError("LabTransferSet wraps a labelled SegmentationDataset with a view")
        reference_stats = torch.as_tensor(reference_stats, dtype=torch.float32)
        if reference_stats.ndim != 3 or reference_stats.shape[1:] != (2, 3) or not len(reference_stats):
            raise ValueError(f"reference_stats must be (N, 2, 3), got {tuple(reference_stats.shape)}")
        self.base, self.reference_stats = base, reference_stats

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item):
        if isinstance(item, (tuple, list)):
            index, view_seed = int(item[0]), int(item[1])
            pick = torch.Generator().manual_seed((view_seed ^ self._SALT) % (2**63))
            view_gen = torch.Generator().manual_seed(view_seed)
        else:
            index, pick, view_gen = int(item), None, None
        j = int(torch.randint(len(self.reference_stats), (), generator=pick))
        image = lab_transfer(self.base.load_image(index), *self.reference_stats[j])
        image, label, view = self.base.transform(image, self.base.load_label(index), generator=view_gen)
        return {"image": image, "index": index, "label": label, "view": view}


__all__ = ["rgb_to_lab", "lab_to_rgb", "lab_stats", "lab_transfer", "compute_lab_stats", "write_lab_stats",
           "read_lab_stats", "LabTransferSet"]

"""Tensor implementations of the photometric ops of the strong view (``segcore.data.strong_view``).

The FixMatch pool's photometric ops as PIL does them, on a float [3, H, W] image in [0, 1]:
AutoContrast, Equalize, Brightness/Color/Contrast/Sharpness, Posterize and Solarize (the last
three on uint8 values, like PIL: quantise, apply, come back), plus CPSL's extras, the Gaussian
blur (sigma 1, like PIL's ``GaussianBlur(1.0)``) and ``ColorJitter``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor

BLUR_SIGMA = 1.0  # PIL ImageFilter.GaussianBlur(radius=1.0): radius is the standard deviation
BLUR_KERNEL = 7  # covers +-3 sigma


def to_u8(image: Tensor) -> Tensor:
    return (image * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def from_u8(image: Tensor, dtype) -> Tensor:
    return image.to(dtype) / 255.0


def apply_photometric(image: Tensor, name: str, value: float) -> Tensor:
    """A photometric op of the pool on a float [3, H, W] image in [0, 1]."""
    if name == "Identity":
        return image
    if name == "AutoContrast":
        return TF.autocontrast(image)
    if name == "Brightness":
        return TF.adjust_brightness(image, value)
    if name == "Color":
        return TF.adjust_saturation(image, value)
    if name == "Contrast":
        return TF.adjust_contrast(image, value)
    if name == "Sharpness":
        return sharpness(image, value)
    # PIL applies these to uint8 values: quantise, apply, come back
    if name == "Equalize":
        return from_u8(TF.equalize(to_u8(image)), image.dtype)
    if name == "Posterize":
        return from_u8(TF.posterize(to_u8(image), int(value)), image.dtype)
    if name == "Solarize":
        u8 = to_u8(image)
        return from_u8(torch.where(u8 >= int(value), 255 - u8, u8), image.dtype)
    raise ValueError(f"not a photometric op: {name!r}")


def sharpness(image: Tensor, factor: float) -> Tensor:
    """PIL ``ImageEnhance.Sharpness``: blend with the SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]]/13),
    border pixels kept (as ``TF.adjustsharpness``, with box sums instead of a slow conv2d)."""
    if image.shape[-1] < 3 or image.shape[-2] < 3:
        return image
    rows = image[..., :-2, :] + image[..., 1:-1, :] + image[..., 2:, :]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    inner = image[..., 1:-1, 1:-1]
    smooth = (box + 4.0 * inner) / 13.0
    out = image.clone()
    out[..., 1:-1, 1:-1] = smooth.add_(inner - smooth, alpha=factor)
    return out.clamp_(0.0, 1.0)


def gaussian_blur(image: Tensor, sigma: float = BLUR_SIGMA, radius: int = BLUR_KERNEL // 2) -> Tensor:
    """Separable Gaussian blur with edge replication (PIL's GaussianBlur extends the edge pixels)."""
    taps = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float64) ** 2 / (2.0 * sigma ** 2))
    taps = (taps / taps.sum()).tolist()
    h, w = image.shape[-2:]
    x = F.pad(image[None], (radius, radius, radius, radius), mode="replicate")[0]
    acc = x[..., :, 0:w] * taps[0]
    for i in range(1, 2 * radius + 1):
        acc.add_(x[..., :, i:i + w], alpha=taps[i])
    out = acc[..., 0:h, :] * taps[0]
    for i in range(1, 2 * radius + 1):
        out.add_(acc[..., i:i + h, :], alpha=taps[i])
    return out


def color_jitter(image: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    b, c, s, hue = (float(f) for f in factors)
    fns = (
        lambda x: TF.adjust_brightness(x, b),
        lambda x: TF.adjust_contrast(x, c),
        lambda x: TF.adjust_saturation(x, s),
        lambda x: TF.adjust_hue(x, hue),
    )
    for i in order.tolist():
        image = fns[i](image)
    return image

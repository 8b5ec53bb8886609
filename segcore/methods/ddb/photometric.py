"""The photometric post-processing of DDB's bridged image, batched on the training device
(the official code runs it per sample with kornia inside the loader workers).

Per sample, independently:

* colour jitter with probability ``jitter_p`` (0.8): brightness, contrast, saturation and hue
  with strength ``s`` (0.2) in a random order, with kornia 0.5's ``ColorJitter`` semantics:
  brightness adds ``b - 1``, contrast multiplies by ``c``, saturation scales the HSV
  saturation by ``s``, hue shifts the HSV hue by ``h`` turns, with b, c, s ~ U(1-s, 1+s),
  h ~ U(-s, s); the image is clamped to [0, 1] after each op;
* a Gaussian blur with probability ``blur_p`` (0.5), sigma ~ U(0.15, 1.15), kernel sides
  ``odd(ceil(0.1 * side))`` of the crop, reflect padding (kornia's ``GaussianBlur2d``).
  The official code reads the kernel height off the wrong axis and blurs with a 1 x k_x
  kernel (horizontal only); ``official_1d_blur`` reproduces that slip.

The draws come from the CPU RNG (``distributed.global_rand``: the rows a single process would
draw for these samples), the arithmetic runs where the images are.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ...train import distributed as D

SIGMA_RANGE = (0.15, 1.15)


def kernel_size(side: int) -> int:
    """The official odd kernel size for a crop side: floor(ceil(0.1 side) - 0.5 + ceil(0.1 side) % 2)."""
    k = math.ceil(0.1 * side)
    return int(math.floor(k - 0.5 + k % 2))


def _rgb_to_hsv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    safe = delta.clamp_min(1e-12)
    h = torch.where(maxc == r, ((g - b) / safe) % 6,
                    torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6.0
    h = torch.where(delta > 0, h, torch.zeros_like(h))
    return h, s, maxc


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    h6 = (h % 1.0) * 6.0
    k = torch.stack([(5 + h6) % 6, (3 + h6) % 6, (1 + h6) % 6], dim=1)
    f = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return v[:, None] - (v * s)[:, None] * f


def _brightness(x, f):
    return (x + (f - 1)[:, None, None, None]).clamp(0, 1)


def _contrast(x, f):
    return (x * f[:, None, None, None]).clamp(0, 1)


def _saturation(x, f):
    h, s, v = _rgb_to_hsv(x)
    return _hsv_to_rgb(h, (s * f[:, None, None]).clamp(0, 1), v).clamp(0, 1)


def _hue(x, f):
    h, s, v = _rgb_to_hsv(x)
    return _hsv_to_rgb(h + f[:, None, None], s, v).clamp(0, 1)


OPS = (_brightness, _contrast, _saturation, _hue)


def draw_params(n: int, strength: float = 0.2, jitter_p: float = 0.8, blur_p: float = 0.5) -> dict:
    """Every random number of ``apply`` for n samples (CPU tensors)."""
    u = D.global_rand((n, 11), dtype=torch.float64)
    lo = torch.tensor([1 - strength, 1 - strength, 1 - strength, -strength], dtype=torch.float64)
    factors = lo + u[:, 0:4] * 2 * strength
    order = u[:, 4:8].argsort(dim=1)                       # a uniform random permutation per sample
    return {"jitter": u[:, 8] < jitter_p, "factors": factors, "order": order,
            "blur": u[:, 9] < blur_p, "sigma": SIGMA_RANGE[0] + u[:, 10] * (SIGMA_RANGE[1] - SIGMA_RANGE[0])}


def color_jitter(x: Tensor, params: dict) -> Tensor:
    """Jitter the samples of ``x`` (n, 3, H, W) in [0, 1] that ``params["jitter"]`` selects."""
    dev, dt = x.device, x.dtype
    factors = params["factors"].to(dev, dt)
    order = params["order"].to(dev)
    out = x
    for slot in range(4):
        cands = torch.stack([op(out, factors[:, i]) for i, op in enumerate(OPS)], dim=0)  # (4, n, 3, H, W)
        out = cands[order[:, slot], torch.arange(x.shape[0], device=dev)]
    return torch.where(params["jitter"].to(dev)[:, None, None, None], out, x)


def gaussian_kernels(sigma: Tensor, size: int) -> Tensor:
    """(n, size) normalised 1-D Gaussian taps."""
    r = (size - 1) / 2
    t = torch.arange(size, dtype=sigma.dtype, device=sigma.device) - r
    g = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None] ** 2))
    return g / g.sum(dim=1, keepdim=True)


def _blur_axis(x: Tensor, taps: Tensor, axis: int) -> Tensor:
    """Per-sample 1-D convolution along ``axis`` (2 = H, 3 = W) with reflect padding."""
    n, c, h, w = x.shape
    k = taps.shape[1]
    if k == 1:
        return x
    p = k // 2
    weight = taps.repeat_interleave(c, dim=0)               # (n*c, k)
    y = x.reshape(1, n * c, h, w)
    if axis == 3:
        y = F.conv2d(F.pad(y, (p, p, 0, 0), mode="reflect"), weight[:, None, None, :], groups=n * c)
    else:
        y = F.conv2d(F.pad(y, (0, 0, p, p), mode="reflect"), weight[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def gaussian_blur(x: Tensor, params: dict, official_1d: bool = False) -> Tensor:
    """Blur the samples that ``params["blur"]`` selects, each with its own sigma."""
    h, w = x.shape[-2:]
    sigma = params["sigma"].to(x.device, x.dtype)
    ky = 1 if official_1d else kernel_size(h)
    kx = kernel_size(w)
    y = _blur_axis(_blur_axis(x, gaussian_kernels(sigma, kx), 3), gaussian_kernels(sigma, ky), 2)
    return torch.where(params["blur"].to(x.device)[:, None, None, None], y, x)


def draw_distortion(n: int) -> dict:
    """The random numbers of ``photometric_distortion`` for n samples (CPU tensors)."""
    u = D.global_rand((n, 9), dtype=torch.float64)
    return {"brightness": u[:, 0] < 0.5, "beta": (u[:, 1] * 64 - 32) / 255.0,
            "contrast_first": u[:, 2] < 0.5, "contrast": u[:, 3] < 0.5, "alpha": 0.5 + u[:, 4],
            "saturation": u[:, 5] < 0.5, "sat": 0.5 + u[:, 6],
            "hue": u[:, 7] < 0.5, "delta": torch.floor(u[:, 8] * 36 - 18) / 180.0}


def photometric_distortion(x: Tensor, params: dict) -> Tensor:
    """mmseg's ``PhotoMetricDistortion`` (the source pipeline of CKD), batched: each op with
    probability 1/2: brightness + U(-32, 32)/255, contrast x U(0.5, 1.5) (before or after the HSV
    ops, at random), saturation x U(0.5, 1.5), hue + an integer of [-18, 18) on OpenCV's 180 scale;
    clamped to [0, 1] after each op."""
    dev, dt = x.device, x.dtype

    def sel(flag, y, x):
        return torch.where(params[flag].to(dev)[:, None, None, None], y, x)

    x = sel("brightness", (x + params["beta"].to(dev, dt)[:, None, None, None]).clamp(0, 1), x)
    contrast = (x * params["alpha"].to(dev, dt)[:, None, None, None]).clamp(0, 1)
    first = params["contrast_first"].to(dev) & params["contrast"].to(dev)
    x = torch.where(first[:, None, None, None], contrast, x)
    x = sel("saturation", _saturation(x, params["sat"].to(dev, dt)), x)
    x = sel("hue", _hue(x, params["delta"].to(dev, dt)), x)
    last = ~params["contrast_first"].to(dev) & params["contrast"].to(dev)
    contrast = (x * params["alpha"].to(dev, dt)[:, None, None, None]).clamp(0, 1)
    return torch.where(last[:, None, None, None], contrast, x)


def jitter_and_blur(x: Tensor, params: dict, official_1d_blur: bool = False) -> Tensor:
    """Colour jitter then blur (the official order) of a batch in [0, 1]."""
    return gaussian_blur(color_jitter(x, params), params, official_1d_blur)


__all__ = ["kernel_size", "draw_params", "draw_distortion", "photometric_distortion", "color_jitter", "gaussian_blur",
           "jitter_and_blur", "gaussian_kernels"]

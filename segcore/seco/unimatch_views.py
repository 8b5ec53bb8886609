"""UniMatch's views of an unlabelled image: the weak crop, two strong views and two CutMix boxes.

Strong view (UniMatch ``dataset/semi.py``, on the weak crop; photometric only, so the weak
view's labels stay aligned): ColorJitter(0.5, 0.5, 0.5, 0.25) with p 0.8 (the four ops in a
random order), grayscale with p 0.2, Gaussian blur with sigma in [0.1, 2] with p 0.5. Each strong
view has a CutMix box with p 0.5 (area 2-40% of the crop, aspect ratio in [0.3, 1/0.3]), where
the step pastes a second unlabelled batch. Every draw comes from the sample's own generator.
"""
from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF


def _u(g, lo=0.0, hi=1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def strong(image: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    x = image
    if _u(g) < 0.8:
        ops = [lambda x: TF.adjust_brightness(x, _u(g, 0.5, 1.5)), lambda x: TF.adjust_contrast(x, _u(g, 0.5, 1.5)),
               lambda x: TF.adjust_saturation(x, _u(g, 0.5, 1.5)), lambda x: TF.adjust_hue(x, _u(g, -0.25, 0.25))]
        for j in torch.randperm(4, generator=g).tolist():
            x = ops[j](x)
    if _u(g) < 0.2:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if _u(g) < 0.5:
        sigma = _u(g, 0.1, 2.0)
        x = TF.gaussian_blur(x, kernel_size=2 * math.ceil(3 * sigma) + 1, sigma=sigma)
    return x.clamp(0, 1)


def cutmix_box(h: int, w: int, g: torch.Generator, p: float = 0.5, area=(0.02, 0.4),
               ratio=(0.3, 1 / 0.3)) -> torch.Tensor:
    """A [h, w] uint8 mask: 1 inside the box (all zeros with probability 1 - p)."""
    mask = torch.zeros(h, w, dtype=torch.uint8)
    if _u(g) >= p:
        return mask
    for _ in range(100):  # UniMatch draws until the box fits
        size = _u(g, *area) * h * w
        r = _u(g, *ratio)
        bw, bh = int(math.sqrt(size / r)), int(math.sqrt(size * r))
        x0, y0 = int(_u(g, 0, w)), int(_u(g, 0, h))
        if bw > 0 and bh > 0 and x0 + bw <= w and y0 + bh <= h:
            mask[y0:y0 + bh, x0:x0 + bw] = 1
            return mask
    return mask


class UnlabelledViews(torch.utils.data.Dataset):
    def __init__(self, base, weak):
        self.base, self.weak = base, weak

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        index, seed = key
        g = torch.Generator().manual_seed(int(seed))
        weak, _, _ = self.weak(self.base.load_image(index), None, generator=g)
        h, w = weak.shape[-2:]
        return {"index": index, "weak": weak, "strong1": strong(weak, g), "strong2": strong(weak, g),
                "box1": cutmix_box(h, w, g), "box2": cutmix_box(h, w, g)}

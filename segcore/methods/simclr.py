"""SimCLR pieces for pretraining the DeepLabV2 backbone self-supervised (the CPU demo's
stand-in for the SimCLRv2 ResNet-101 file that ProDA stages 2 and 3 start the student from;
docs/protocol.md, Network; docs/methods/proda.md, Stages 2 and 3).

* :func:`nt_xent`: the normalised-temperature cross entropy of SimCLR over the 2N views of a
  batch; the positive of a view is the other view of the same image, the 2N - 2 views of the
  other images are its negatives.
* :class:`SimCLRAugment`: the SimCLR view distribution on float tensors in [0, 1]: random
  resized crop, horizontal flip, colour jitter (strength 0.8, p=0.8, random op order),
  random grayscale (p=0.2), Gaussian blur (p=0.5). Every draw comes from a ``torch.Generator``.
* :class:`ProjectionHead`: the MLP between the pooled features and the loss. SimCLRv2 uses
  3 layers (Linear + BN + ReLU, Linear + BN + ReLU, Linear + BN); ``layers`` is configurable
  (2 is SimCLR v1's head). It is thrown away after pretraining.
* :class:`Backbone`: conv1 .. layer4 (+ ``bn_pretrain``) of a DeepLabV2 followed by global
  average pooling. It *shares* the model's modules under the same attribute names, so its
  ``state_dict()`` holds exactly the model's backbone keys (``conv1.*``, ``bn1.*``,
  ``layer1-4.*``, ``bn_pretrain.*``), which is the key layout ``load_simclr_backbone`` reads.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

# ----------------------------------------------------------------------------- loss

def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """NT-Xent over 2N views. ``z1[i]`` and ``z2[i]`` are the two views of image i ([N, D]).

    The embeddings are L2-normalised; the logits of view a are its cosine similarities to the
    2N - 1 other views divided by ``temperature``; the loss is the cross entropy with the other
    view of the same image as the target, averaged over the 2N views.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError("nt_xent expects two [N, D] tensors of one shape, "
                         f"got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    if n < 2:
        raise ValueError("nt_xent needs at least 2 images (negatives come from the other images)")
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    logits = z @ z.t() / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


# ----------------------------------------------------------------------------- views

def _uniform(lo: float, hi: float, g: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _coin(p: float, g: torch.Generator | None) -> bool:
    return float(torch.rand((), generator=g, dtype=torch.float64)) < p


class SimCLRAugment:
    """Two random SimCLR views of each image.

    ``size`` is the output (W, H). Geometry (torchvision ``RandomResizedCrop`` semantics): a box
    of ``U(scale)`` times the image area and aspect ratio ``exp(U(log ratio))`` times the
    output's aspect ratio (10 tries, else the largest centred box of the output's aspect
    ratio), resized bilinearly (antialiased) to ``size``, then flipped with p=``flip_p``.
    Colour (SimCLR's ``get_color_distortion(s)``): with p=``jitter_p`` brightness, contrast and
    saturation factors ``U(1 - 0.8s, 1 + 0.8s)`` and a hue shift ``U(-0.2s, 0.2s)`` applied in
    a random order; then grayscale with p=``gray_p``; then with p=``blur_p`` a Gaussian blur
    with sigma ``U(0.1, 2.0)`` and a kernel of about 10% of the output's shorter side (odd, >= 3).
    Each view is clamped to [0, 1].
    """

    def __init__(self, size: tuple[int, int], scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), flip_p: float = 0.5,
                 strength: float = 0.8, jitter_p: float = 0.8, gray_p: float = 0.2, blur_p: float = 0.5,
                 blur_sigma=(0.1, 2.0)):
        self.size = (int(size[0]), int(size[1]))
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        if min(self.size) <= 0 or not 0 < self.scale[0] <= self.scale[1] <= 1 or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"bad SimCLRAugment settings: size={size}, scale={scale}, ratio={ratio}")
        self.flip_p, self.strength = float(flip_p), float(strength)
        self.jitter_p, self.gray_p, self.blur_p = float(jitter_p), float(gray_p), float(blur_p)
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        k = int(0.1 * min(self.size))
        self.blur_kernel = max(3, k + 1 - k % 2)

    def __repr__(self) -> str:
        return (f"SimCLRAugment(size={self.size}, scale={self.scale}, ratio={self.ratio}, flip_p={self.flip_p}, "
                f"strength={self.strength}, jitter_p={self.jitter_p}, gray_p={self.gray_p}, blur_p={self.blur_p})")

    def crop_box(self, height: int, width: int, g: torch.Generator | None = None) -> tuple[int, int, int, int]:
        """(top, left, h, w) of a random resized crop of a ``height`` x ``width`` image."""
        area = height * width
        aspect = self.size[0] / self.size[1]  # keep the output's shape on average
        log_r = (math.log(self.ratio[0] * aspect), math.log(self.ratio[1] * aspect))
        for _ in range(10):
            target = area * _uniform(*self.scale, g)
            r = math.exp(_uniform(*log_r, g))
            w = int(round(math.sqrt(target * r)))
            h = int(round(math.sqrt(target / r)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (), generator=g))
                left = int(torch.randint(0, width - w + 1, (), generator=g))
                return top, left, h, w
        if width / height > aspect:  # fallback: centred box of the output's aspect ratio
            h, w = height, max(1, min(width, int(round(height * aspect))))
        else:
            w, h = width, max(1, min(height, int(round(width / aspect))))
        return (height - h) // 2, (width - w) // 2, h, w

    def _colour(self, x: Tensor, g: torch.Generator | None) -> Tensor:
        s = self.strength
        if _coin(self.jitter_p, g):
            b, c, sat = (_uniform(max(0.0, 1 - 0.8 * s), 1 + 0.8 * s, g) for _ in range(3))
            hue = _uniform(-0.2 * s, 0.2 * s, g)
            ops = (lambda y: TF.adjust_brightness(y, b), lambda y: TF.adjust_contrast(y, c),
                   lambda y: TF.adjust_saturation(y, sat), lambda y: TF.adjust_hue(y, hue))
            for i in torch.randperm(4, generator=g).tolist():
                x = ops[i](x).clamp_(0.0, 1.0)
        if _coin(self.gray_p, g):
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        if _coin(self.blur_p, g):
            sigma = _uniform(*self.blur_sigma, g)
            x = TF.gaussian_blur(x, [self.blur_kernel, self.blur_kernel], [sigma, sigma])
        return x

    def view(self, image: Tensor, g: torch.Generator | None = None) -> Tensor:
        """One random view of ``image`` float[3, H, W] in [0, 1] -> float[3, size H, size W]."""
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"SimCLRAugment expects an RGB image [3, H, W], got {tuple(image.shape)}")
        top, left, h, w = self.crop_box(image.shape[1], image.shape[2], g)
        x = image[:, top:top + h, left:left + w]
        x = F.interpolate(x[None], size=(self.size[1], self.size[0]), mode="bilinear",
                          align_corners=False, antialias=True)[0].clamp_(0.0, 1.0)
        if _coin(self.flip_p, g):
            x = x.flip(-1)
        return self._colour(x, g).contiguous()

    def pair(self, image: Tensor, g: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Two independent views of one image."""
        return self.view(image, g), self.view(image, g)

    def __call__(self, images, g: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Views of a batch: ``images`` float[N, 3, H, W] or a list of [3, H_i, W_i] (sizes may
        differ) -> (view1, view2), each float[N, 3, size H, size W]."""
        pairs = [self.pair(img, g) for img in images]
        return torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs])


# ----------------------------------------------------------------------------- networks

class ProjectionHead(nn.Module):
    """MLP projection head of SimCLRv2: ``layers`` Linear layers, each followed by BatchNorm1d,
    all but the last by ReLU (SimCLRv2 uses 3 layers with ``hidden = in_dim``; ``layers=2`` is
    SimCLR v1's head plus the BN). The last BN has no affine bias/scale, as in SimCLRv2."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int = 128, layers: int = 3):
        super().__init__()
        if layers < 1:
            raise ValueError(f"ProjectionHead needs at least one layer, got {layers}")
        mods: list[nn.Module] = []
        dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
        for i in range(layers):
            last = i == layers - 1
            mods += [nn.Linear(dims[i], dims[i + 1], bias=False), nn.BatchNorm1d(dims[i + 1], affine=not last)]
            if not last:
                mods.append(nn.ReLU(inplace=True))
        self.mlp = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


class Backbone(nn.Module):
    """The backbone of a DeepLabV2 (conv1, bn1, ReLU, maxpool, layer1-4, ``bn_pretrain`` when
    the model has it) followed by global average pooling -> [N, backbone_dim].

    The modules are the model's own objects registered under the same names (nothing is
    copied): training this module trains the model, and ``state_dict()`` has the model's key
    names for exactly these modules.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(model, name))
        bn = getattr(model, "bn_pretrain", None)
        self.bn_pretrain = bn
        self.out_dim = int(model.spec.backbone_dim) if hasattr(model, "spec") else None

    def feature_map(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.bn_pretrain is not None:
            x = self.bn_pretrain(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.feature_map(x).mean(dim=(2, 3))


class SimCLRNet(nn.Module):
    """Backbone + projection head; ``forward`` returns the projections ``z`` [N, out_dim]."""

    def __init__(self, model: nn.Module, hidden: int | None = None, out_dim: int = 128, layers: int = 3):
        super().__init__()
        self.backbone = Backbone(model)
        dim = self.backbone.out_dim
        self.head = ProjectionHead(dim, hidden or dim, out_dim, layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


__all__ = ["nt_xent", "SimCLRAugment", "ProjectionHead", "Backbone", "SimCLRNet"]

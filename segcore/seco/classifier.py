"""SCC's connectivity classifier and its samples.

The classifier is a torchvision ResNet whose stem output (conv1 - bn1 - ReLU, stride 2) is
multiplied by the component's mask (nearest-resized) before the max-pool; then layer1..4,
global average pooling and a new ``fc`` (Xavier-normal init). ``arch="resnet101"`` is the
released network (ImageNet weights from a torchvision ``resnet101`` state dict file);
``arch="small"`` (BasicBlock [1, 1, 1, 1], widths 16-64) is the CPU demo's.

A sample is one component: a window of the image centred on the component's box, at least
``window`` (h, w) pixels and enlarged at the same aspect when the box is larger, shifted
inside the image, resized to ``crop`` (bilinear image, nearest mask), normalised with the
ImageNet mean / std in RGB order (the released code flips to BGR first and then applies the
RGB statistics; we do not), flipped horizontally at random when training.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ..models.weights import load_imagenet_backbone
from .components import components

#: (block, blocks per stage, stage widths); resnet101 is torchvision's (its ImageNet keys load as they are)
ARCHS = {"resnet101": (Bottleneck, (3, 4, 23, 3), (64, 128, 256, 512)),
         "small": (BasicBlock, (1, 1, 1, 1), (16, 32, 48, 64))}
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


class ConnectivityClassifier(ResNet):
    def __init__(self, num_classes: int, arch: str = "resnet101"):
        if arch not in ARCHS:
            raise ValueError(f"unknown classifier arch {arch!r} (choose from {', '.join(ARCHS)})")
        block, layers, widths = ARCHS[arch]
        super().__init__(block, list(layers), num_classes=num_classes)
        if widths != (64, 128, 256, 512):  # a narrower preset: rebuild the stages at its widths
            self.inplanes = widths[0]
            self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            for i, (w, n) in enumerate(zip(widths, layers)):
                setattr(self, f"layer{i + 1}", self._make_layer(block, w, n, stride=1 if i == 0 else 2))
            self.fc = nn.Linear(widths[3] * block.expansion, num_classes)
        self.arch = arch
        nn.init.xavier_normal_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(image)))
        x = x * F.interpolate(mask[:, None].to(x.dtype), size=x.shape[-2:], mode="nearest")
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.maxpool(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def backbone_modules(self):
        return [m for n, m in self.named_children() if n != "fc"]


def build_classifier(num_classes: int, arch: str = "resnet101", imagenet: str | None = None) -> ConnectivityClassifier:
    """The classifier, its backbone from a torchvision ImageNet file when given."""
    model = ConnectivityClassifier(num_classes, arch)
    if imagenet:
        load_imagenet_backbone(model, imagenet)
    return model


def param_groups(model: ConnectivityClassifier, backbone_lr: float, fc_lr: float) -> list[dict]:
    body = [p for m in model.backbone_modules() for p in m.parameters()]
    return [{"params": body, "lr": backbone_lr, "initial_lr": backbone_lr, "name": "backbone"},
            {"params": list(model.fc.parameters()), "lr": fc_lr, "initial_lr": fc_lr, "name": "fc"}]


def window(box, image_hw, window_hw) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1) of the sample window around ``box`` (y0, x0, y1, x1)."""
    (H, W), (wh, ww) = image_hw, window_hw
    y0, x0, y1, x1 = (int(v) for v in box)
    s = max(1.0, (y1 - y0) / wh, (x1 - x0) / ww)
    h, w = min(H, math.ceil(wh * s)), min(W, math.ceil(ww * s))
    top = min(max((y0 + y1) // 2 - h // 2, 0), H - h)
    left = min(max((x0 + x1) // 2 - w // 2, 0), W - w)
    return top, left, top + h, left + w


def crop_sample(image: torch.Tensor, mask: np.ndarray, box, window_hw, crop_hw, flip: bool = False):
    """(normalised image [3, h, w], mask [h, w] float) of one component."""
    t, l, b, r = window(box, image.shape[-2:], window_hw)
    img = F.interpolate(image[None, :, t:b, l:r], size=tuple(crop_hw), mode="bilinear", align_corners=False)[0]
    m = torch.from_numpy(np.ascontiguousarray(mask[t:b, l:r])).float()
    m = F.interpolate(m[None, None], size=tuple(crop_hw), mode="nearest")[0, 0]
    img = (img - _MEAN) / _STD
    if flip:
        img, m = img.flip(-1), m.flip(-1)
    return img, m


class ComponentSet(torch.utils.data.Dataset):
    """Every component (of at least ``min_pixels``) of every image's PSA labels, as samples
    ``{"image", "mask", "label" (its PSA class), "index" (position in the table)}``.

    ``images``: the target images (``SegmentationDataset`` without labels) at the labels'
    resolution; ``labels``: a ``RefinedStore`` (or anything with ``label(i)``). The table of
    components is built once; a sample recomputes its image's components (cached for
    ``cache_images`` images) instead of holding every mask in memory."""

    def __init__(self, images, labels, window_hw, crop_hw, min_pixels: int = 1, train: bool = False,
                 cache_images: int = 256):
        self.images, self.labels = images, labels
        self.window_hw, self.crop_hw = tuple(window_hw), tuple(crop_hw)
        self.min_pixels, self.train, self.cache_images = int(min_pixels), bool(train), int(cache_images)
        table = []
        for i in range(len(images)):
            comps = components(labels.label(i), min_pixels=self.min_pixels)
            table += [(i, k, int(c), *b) for k, (c, b) in enumerate(zip(comps.classes, comps.boxes))]
        self.table = np.asarray(table, dtype=np.int64).reshape(-1, 7)  # image, k, class, y0, x0, y1, x1
        self._cache: dict = {}

    def __len__(self) -> int:
        return len(self.table)

    @property
    def classes(self) -> np.ndarray:
        return self.table[:, 2]

    def _image(self, i):
        if i not in self._cache:
            if len(self._cache) >= self.cache_images:
                self._cache.pop(next(iter(self._cache)))
            self._cache[i] = (self.images.load_image(i), components(self.labels.label(i), min_pixels=self.min_pixels))
        return self._cache[i]

    def __getitem__(self, item):
        if isinstance(item, (tuple, list)):
            j, seed = int(item[0]), int(item[1])
        else:
            j, seed = int(item), None
        i, k, c = (int(v) for v in self.table[j, :3])
        image, comps = self._image(i)
        flip = False
        if self.train:
            g = torch.Generator().manual_seed(seed) if seed is not None else None
            flip = bool(torch.rand((), generator=g) < 0.5)
        img, m = crop_sample(image, comps.mask(k), self.table[j, 3:], self.window_hw, self.crop_hw, flip)
        return {"image": img, "mask": m, "label": c, "index": j}

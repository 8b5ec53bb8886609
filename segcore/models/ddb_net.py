"""DDB's network: a ResNetV1c backbone (deep stem, output stride 8) with DDB's reduced
DeepLabV2 head ("dlv2red"), named so that ``state_dict()`` follows the mmsegmentation layout
key for key (``backbone.stem.0.weight`` ... ``decode_head.conv_seg.bias``).

* ``backbone.stem``: three 3x3 convs (3 -> w/2 stride 2, w/2 -> w/2, w/2 -> w), each with BN
  and ReLU (indices 0-8 of a Sequential, as mmseg's ``deep_stem``), then a 3x3/2 max-pool
  (padding 1, floor mode).
* ``backbone.layer1..4``: PyTorch-style bottlenecks (the stride sits on the 3x3 ``conv2``),
  strides (1, 2, 1, 1), dilations (1, 1, 2, 4) with ``contract_dilation``: the first block of a
  dilated stage uses half the stage's dilation. Block 0 of every stage has a ``downsample``
  (1x1 conv + BN).
* ``decode_head``: ``aspp_modules`` = parallel 3x3 dilated conv + BN + ReLU branches
  (dilations 6 and 12, ``head_width / 2`` channels each; a dilation of 1 would be a 1x1 conv as
  in the official ``ASPPModule``), concatenated -> ``bottleneck`` 3x3 conv + BN + ReLU to
  ``head_width`` (the 256-d feature of the prototypes) -> Dropout2d(0.1) -> ``conv_seg`` 1x1
  conv with bias.

The network takes images in [0, 1] (the project's loaders) and applies mmseg's ImageNet
normalisation itself (mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375) on the 0-255
scale), so evaluation and pseudo-label scripts can use it unchanged. ``forward`` returns
``{"feat", "out"}`` at output stride 8, as :class:`~segcore.models.deeplabv2.DeepLabV2` does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .deeplabv2 import EXPANSION, Bottleneck

IMAGENET_MEAN = (123.675 / 255, 116.28 / 255, 103.53 / 255)
IMAGENET_STD = (58.395 / 255, 57.12 / 255, 57.375 / 255)


@dataclass(frozen=True)
class V1cSpec:
    """Widths, depths and head of one DDB network preset."""

    layers: tuple[int, int, int, int]
    stem_width: int                       # output channels of the deep stem (its first two convs: half)
    planes: tuple[int, int, int, int]     # bottleneck widths per stage (x4 out)
    head_width: int                       # concatenated ASPP channels = bottleneck channels
    aspp_dilations: tuple[int, ...] = (6, 12)
    dropout: float = 0.1

    def __post_init__(self):
        if self.head_width % len(self.aspp_dilations):
            raise ValueError(f"head_width {self.head_width} is not divisible by the {len(self.aspp_dilations)} "
                             "ASPP branches")
        if self.stem_width % 2:
            raise ValueError(f"stem_width {self.stem_width} must be even (the deep stem halves it)")

    @property
    def backbone_dim(self) -> int:
        return self.planes[3] * EXPANSION


DDB_ARCHS: dict[str, V1cSpec] = {
    # the official network: ResNetV1c-101 (mmseg, open-mmlab://resnet101_v1c), dlv2red head
    "resnet101_v1c": V1cSpec(layers=(3, 4, 23, 3), stem_width=64, planes=(64, 128, 256, 512), head_width=256),
    # CPU demo: the same structure, one block per stage, narrow widths, dilations for 16x8 maps
    "small_v1c": V1cSpec(layers=(1, 1, 1, 1), stem_width=16, planes=(16, 32, 48, 64), head_width=64,
                         aspp_dilations=(2, 4)),
}


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    pad = dilation if kernel == 3 else 0
    return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=pad, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ConvModule(nn.Module):
    """conv (no bias) -> ``bn`` -> ReLU, with mmcv's ``ConvModule`` names (``conv``, ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int = 1):
        super().__init__()
        pad = dilation if kernel == 3 else 0
        self.conv = nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.activate(self.bn(self.conv(x)))


class ResNetV1c(nn.Module):
    """Deep-stem ResNet at output stride 8 (see the module docstring)."""

    STRIDES = (1, 2, 1, 1)
    DILATIONS = (1, 1, 2, 4)

    def __init__(self, spec: V1cSpec):
        super().__init__()
        w = spec.stem_width
        self.stem = nn.Sequential(*_conv_bn_relu(3, w // 2, 3, stride=2), *_conv_bn_relu(w // 2, w // 2, 3),
                                  *_conv_bn_relu(w // 2, w, 3))
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = w
        for i in range(4):
            planes, stride, dilation = spec.planes[i], self.STRIDES[i], self.DILATIONS[i]
            out = planes * EXPANSION
            downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
            first = dilation // 2 if dilation > 1 else dilation          # contract_dilation
            blocks = [Bottleneck(inplanes, planes, stride, first, downsample, stride_in_3x3=True)]
            blocks += [Bottleneck(out, planes, 1, dilation, stride_in_3x3=True) for _ in range(1, spec.layers[i])]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = out

    def forward(self, x):
        x = self.maxpool(self.stem(x))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class DLV2ReducedHead(nn.Module):
    """DDB's reduced DeepLabV2 head (``DLV2AdapterHead`` with dilations (6, 12))."""

    def __init__(self, in_ch: int, num_classes: int, spec: V1cSpec):
        super().__init__()
        branch = spec.head_width // len(spec.aspp_dilations)
        self.aspp_modules = nn.ModuleList(
            [ConvModule(in_ch, branch, 1 if d == 1 else 3, dilation=d) for d in spec.aspp_dilations])
        self.bottleneck = ConvModule(spec.head_width, spec.head_width, 3)
        self.dropout = nn.Dropout2d(spec.dropout)
        self.conv_seg = nn.Conv2d(spec.head_width, num_classes, 1)

    def forward(self, x) -> dict[str, torch.Tensor]:
        feat = self.dropout(self.bottleneck(torch.cat([m(x) for m in self.aspp_modules], dim=1)))
        return {"feat": feat, "out": self.conv_seg(feat)}


class DDBNet(nn.Module):
    """ResNetV1c + reduced DeepLabV2 head; images in [0, 1], ImageNet normalisation inside."""

    def __init__(self, num_classes: int, spec: V1cSpec, arch: str | None = None):
        super().__init__()
        self.arch = arch
        self.spec = spec
        self.num_classes = int(num_classes)
        self.bn_clr = False  # checkpoint meta (segcore.models.checkpoint): DDB has no SimCLR BN
        self.feature_dim = spec.head_width
        self.backbone = ResNetV1c(spec)
        self.decode_head = DLV2ReducedHead(spec.backbone_dim, self.num_classes, spec)
        # constants, not state: the state_dict keeps the mmseg layout exactly
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self):
        # mmseg's ResNet init without pretrained weights (kaiming fan_out convs, BN 1/0); the
        # head as the official config: Normal(std 0.01) convs, conv_seg bias 0
        for m in self.backbone.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.decode_head.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0.0, 0.01)
                if m.bias is not None:
                    m.bias.zero_()
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()

    def backbone_modules(self) -> list[nn.Module]:
        return [self.backbone]

    def head_modules(self) -> list[nn.Module]:
        return [self.decode_head]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)
        return self.decode_head(self.backbone(x))


def build_ddb_net(num_classes: int, arch: str = "resnet101_v1c") -> DDBNet:
    """A randomly initialised DDB network of preset ``arch`` (a key of ``DDB_ARCHS``)."""
    if arch not in DDB_ARCHS:
        raise ValueError(f"unknown DDB arch {arch!r}; known: {', '.join(sorted(DDB_ARCHS))}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    return DDBNet(num_classes, DDB_ARCHS[arch], arch=arch)


def adamw_param_groups(model: nn.Module, lr: float, head_lr_mult: float = 10.0) -> list[dict]:
    """DDB's AdamW groups: parameters whose name contains ``head`` (the decode head) at
    ``head_lr_mult * lr``, the rest (the backbone) at ``lr``; each parameter once, with its
    ``initial_lr`` and a ``name``."""
    from .deeplabv2 import unwrap

    head, rest = [], []
    for name, p in unwrap(model).named_parameters():
        (head if "head" in name else rest).append(p)
    return [{"params": rest, "lr": lr, "initial_lr": lr, "name": "backbone"},
            {"params": head, "lr": lr * head_lr_mult, "initial_lr": lr * head_lr_mult, "name": "head"}]


__all__ = ["DDB_ARCHS", "V1cSpec", "DDBNet", "ResNetV1c", "DLV2ReducedHead", "build_ddb_net",
           "adamw_param_groups", "IMAGENET_MEAN", "IMAGENET_STD"]

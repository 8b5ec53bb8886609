"""DAFormer's decode head (context-aware feature fusion), as Uni-UVPT configures it.

Per level a linear embedding to ``width`` channels; all levels resized to the stride-4 map
(bilinear) and concatenated; fusion by a depthwise-separable ASPP without image pooling
(dilation 1 = 1x1 conv; the others depthwise 3x3 dilated + pointwise, each BN + ReLU), a 3x3
conv (BN + ReLU) over the concatenated branches, Dropout2d(0.1), 1x1 classifier. Output
logits at stride 4.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1, groups: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SeparableBranch(nn.Module):
    """Depthwise 3x3 (dilated) conv + BN + ReLU, then pointwise 1x1 + BN + ReLU."""

    def __init__(self, cin: int, cout: int, dilation: int):
        super().__init__()
        self.depthwise = conv_bn_relu(cin, cin, 3, dilation, groups=cin)
        self.pointwise = conv_bn_relu(cin, cout, 1)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class DAFormerHead(nn.Module):
    def __init__(self, in_dims, num_classes: int, width: int = 256, dilations=(1, 6, 12, 18), dropout: float = 0.1):
        super().__init__()
        self.num_classes, self.width = num_classes, width
        self.embed = nn.ModuleList(nn.Linear(d, width) for d in in_dims)
        cat = width * len(in_dims)
        self.aspp = nn.ModuleList(conv_bn_relu(cat, width, 1) if d == 1 else SeparableBranch(cat, width, d)
                                  for d in dilations)
        self.bottleneck = conv_bn_relu(width * len(dilations), width, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(width, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, feats) -> torch.Tensor:
        size = feats[0].shape[-2:]
        emb = []
        for f, lin in zip(feats, self.embed):
            e = lin(f.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(f.shape[0], self.width, *f.shape[-2:])
            emb.append(e if e.shape[-2:] == size else F.interpolate(e, size=size, mode="bilinear",
                                                                    align_corners=False))
        x = torch.cat(emb, dim=1)
        x = self.bottleneck(torch.cat([branch(x) for branch in self.aspp], dim=1))
        return self.classifier(self.dropout(x))


__all__ = ["DAFormerHead"]

"""Output-space discriminator of the ProDA warm-up (official ``models/discriminator.py``).

Four 3x3 stride-2 convs (padding 1, with bias) of ndf, 2ndf, 4ndf, 8ndf channels; ReLU after
the first three and LeakyReLU(0.2) after the fourth (not LeakyReLU everywhere, nor 4x4
kernels as in AdaptSegNet); then a 1x1 conv to one channel. PyTorch default init. Module
names match the official state dict (``conv1``..``conv4``, ``classifier``).
"""
from __future__ import annotations

import torch
import torch.nn as nn


class FCDiscriminator(nn.Module):
    def __init__(self, num_classes: int, ndf: int = 64):
        super().__init__()
        widths = (num_classes, ndf, ndf * 2, ndf * 4, ndf * 8)
        for i in range(4):
            setattr(self, f"conv{i + 1}", nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1))
        self.relu = nn.ReLU(inplace=True)
        self.leaky_relu = nn.LeakyReLU(0.2, inplace=True)
        self.classifier = nn.Conv2d(widths[4], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        x = self.relu(self.conv3(x))
        x = self.leaky_relu(self.conv4(x))
        return self.classifier(x)


__all__ = ["FCDiscriminator"]

"""Losses of the warm-up stage: source cross-entropy and the output-space LS-GAN of
AdaptSegNet as ProDA's warm-up uses it (reference/proda_cpsl.md 2.1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.classes import IGNORE_INDEX

SOURCE_LABEL, TARGET_LABEL = 0.0, 1.0


def upsample(logits: torch.Tensor, size) -> torch.Tensor:
    """Logits to label resolution, bilinear with align_corners=True as the official code."""
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(upsample(logits, labels.shape[-2:]), labels, ignore_index=IGNORE_INDEX)


def ls_gan_loss(d_out: torch.Tensor, label: float) -> torch.Tensor:
    """Least-squares GAN loss: MSE of the discriminator map to a constant label."""
    return F.mse_loss(d_out, torch.full_like(d_out, label))


def generator_adv_loss(discriminator, target_logits_up: torch.Tensor) -> torch.Tensor:
    """Push the target prediction towards looking like a source one."""
    return ls_gan_loss(discriminator(F.softmax(target_logits_up, dim=1)), SOURCE_LABEL)


def discriminator_loss(discriminator, source_logits_up: torch.Tensor, target_logits_up: torch.Tensor) -> torch.Tensor:
    src = F.softmax(source_logits_up.detach(), dim=1)
    tgt = F.softmax(target_logits_up.detach(), dim=1)
    return ls_gan_loss(discriminator(src), SOURCE_LABEL) + ls_gan_loss(discriminator(tgt), TARGET_LABEL)


def set_requires_grad(module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)

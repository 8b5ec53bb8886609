"""Losses of the warm-up stage: source cross-entropy and the output-space LS-GAN of
AdaptSegNet as ProDA's warm-up uses it (docs/methods/proda.md, Warm-up)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.classes import IGNORE_INDEX
from ..train import distributed as D

SOURCE_LABEL, TARGET_LABEL = 0.0, 1.0


def upsample(logits: torch.Tensor, size) -> torch.Tensor:
    """Logits to label resolution, bilinear with align_corners=True as the official code."""
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy at label resolution, mean over non-ignored pixels (of the global batch
    under DDP: the count is summed over ranks, see ``distributed.global_mean``)."""
    up = upsample(logits, labels.shape[-2:])
    if not D.active():
        return F.cross_entropy(up, labels, ignore_index=IGNORE_INDEX)
    total = F.cross_entropy(up, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return D.global_mean(total, (labels != IGNORE_INDEX).sum())


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

"""CPSL stage 1: class-balanced pixel-level self-labeling (docs/methods/cpsl.md, Stage 1).
One iteration's pieces as functions of the batch, the networks, the prototypes and the memory;
the loop that calls them is ``segcore.train.cpsl_stage1``.

* ``CosinePrototypes``: learnable prototypes ``P`` (a cosine classifier on L2-normalised
  features, initialised from the normalised ProDA centroids) and their EMA copy ``P'``.
* ``self_labeling_loss``: the EMA teacher's features of the full target image, sampled per
  image, are assigned to classes by Sinkhorn with the class prior, over the memory plus the
  current samples, twice: from their cosine scores with ``P`` and from the teacher's
  L2-normalised logits. ``P`` is trained to predict both assignments; the features come from
  the teacher under no_grad, so this loss trains the prototypes only.
* rectification: ``argmax(softmax(cos(f', P') / tau) * p0)`` with the teacher's features moved
  into the weak crop (``rectify.cosine_scores`` / ``cosine_weights``).
* ``cosine_consistency_loss``: KL between the teacher's cosine assignments to ``P'`` (moved into
  the strong view) and the student's on the strong view.
* ``contrastive_loss``: optional supervised contrast of the student's weak-crop features
  against the memory (weight 0.001 in the official runs).

Differences from the official code (each a fix of a quirk the reference lists, no switch):
the memory scores use the normalised ``P`` (the official code uses the raw ``P`` for the memory
and the normalised one for the current samples); the labels stored with the memory features
are the rectified labels at those very pixels of the full image (the official ones are the crop
labels resized onto the full-image grid, misaligned) and the contrastive anchors' labels are the
rectified labels at the anchors' pixels; one Sinkhorn per step over the memory and the whole
batch's samples (the official code runs one per image, pushing in between).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.strong_view import warp_to_strong
from ..train import distributed as D
from . import losses as L
from .rectify import cosine_scores
from .sinkhorn import sinkhorn

# cosine scores lie in [-1, 1]; this fill marks pixels the strong view has no source for
_NO_SOURCE = -10.0


class CosinePrototypes(nn.Module):
    """``weight`` = P (C, D), trained by the self-labeling loss; buffer ``ema`` = P'."""

    def __init__(self, init: torch.Tensor, ema_momentum: float = 0.999):
        super().__init__()
        if init.dim() != 2:
            raise ValueError(f"prototypes must be (C, D), got {tuple(init.shape)}")
        start = F.normalize(init.detach().float(), dim=1)
        self.weight = nn.Parameter(start.clone())
        self.register_buffer("ema", start.clone())
        self.ema_momentum = float(ema_momentum)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Cosine scores (M, C) of normalised samples z (M, D) with P (gradient to P), in float32
        with autocast off (they are divided by a temperature of 0.08 and fed to Sinkhorn)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return z.float() @ F.normalize(self.weight.float(), dim=1).t()

    @torch.no_grad()
    def update_ema(self) -> None:
        """``P' <- m P' + (1 - m) P`` (official 0.999), after the optimiser step."""
        self.ema.mul_(self.ema_momentum).add_(self.weight.detach(), alpha=1.0 - self.ema_momentum)


def sample_pixels(maps, count: int, generator: torch.Generator | None = None):
    """The same ``count`` random pixels of every image from each map (N, C_i, h, w) (or (N, h, w)),
    flattened to (N*count, C_i) (or (N*count,)); pixels are drawn without replacement,
    independently per image (``count`` is capped at h*w). Under DDP the noise of the whole
    global batch is drawn (``distributed.global_rand``) and this rank keeps its images' rows:
    each image gets the pixels one process would draw for it."""
    n, h, w = maps[0].shape[0], maps[0].shape[-2], maps[0].shape[-1]
    count = min(int(count), h * w)
    noise = D.global_rand((n, h * w), device=maps[0].device if generator is None else "cpu", generator=generator)
    idx = noise.argsort(dim=1)[:, :count].to(maps[0].device)             # (N, count)
    out = []
    for m in maps:
        if m.dim() == 3:
            out.append(m.reshape(n, h * w).gather(1, idx).reshape(-1))
        else:
            c = m.shape[1]
            flat = m.reshape(n, c, h * w).gather(2, idx[:, None].expand(n, c, count))
            out.append(flat.transpose(1, 2).reshape(n * count, c))
    return out


def memory_entries(feat_full: torch.Tensor, logits_full: torch.Tensor, labels_full: torch.Tensor,
                   count: int, generator: torch.Generator | None = None) -> dict:
    """This step's samples for the self-labeling loss and the memory: ``count`` random pixels per
    image of the teacher's full-image outputs at the output stride, as normalised features
    ``feat`` (M, D), normalised logits ``logits`` (M, C) and rectified labels ``label`` (M,).
    Under DDP these are what ranks all-gather before ``FeatureMemory.push``."""
    f, z, y = sample_pixels([feat_full.detach(), logits_full.detach(), labels_full], count, generator)
    return {"feat": F.normalize(f.float(), dim=1), "logits": F.normalize(z.float(), dim=1), "label": y.long()}


def self_labeling_loss(entries: dict, protos: CosinePrototypes, memory, prior: torch.Tensor,
                       temperature: float = 0.08, epsilon: float = 0.05, iterations: int = 3):
    """``-mean_i sum_k q_ik log softmax(<z_i, P_k/|P_k|> / tau)_k`` for the two Sinkhorn targets
    (feature scores with P, and the teacher's normalised logits), each computed over the memory
    (once it is full, as the official code) followed by this step's samples. Returns
    (loss, (q_feat, q_logits)). Float32 with autocast off.

    Under DDP ``entries`` are the all-gathered entries of the whole global batch (the same on
    every rank, as the memory): every rank computes the single-process loss, whose gradient
    (to P only) is then the same on every rank and unchanged by the gradient average."""
    with torch.autocast(device_type=entries["feat"].device.type, enabled=False):
        z, u = entries["feat"].float(), entries["logits"].float()
        scores = protos.logits(z)                                        # (M, C), gradient to P
        m = z.shape[0]
        with torch.no_grad():
            s_feat, s_out = scores.detach(), u
            if memory is not None and memory.full:
                s_feat = torch.cat([protos.logits(memory.get("feat")).detach(), s_feat])
                s_out = torch.cat([memory.get("logits").float(), s_out])
            q_feat = sinkhorn(s_feat, prior, epsilon, iterations)[-m:]
            q_out = sinkhorn(s_out, prior, epsilon, iterations)[-m:]
        logp = F.log_softmax(scores / temperature, dim=1)
        loss = -(q_feat * logp).sum(dim=1).mean() - (q_out * logp).sum(dim=1).mean()
    return loss, (q_feat, q_out)


def contrastive_loss(anchors: torch.Tensor, anchor_labels: torch.Tensor, bank: torch.Tensor,
                     bank_labels: torch.Tensor, temperature: float = 0.08, ignore: int = 255) -> torch.Tensor:
    """The official supervised contrast of normalised anchors (M, D) against the memory (K, D):
    with ``l_ij = <a_i, b_j> / tau`` (shifted by the row max) and positives ``y_i == y_j``,
    ``log p_ij = l_ij - log(exp(l_ij) + sum_{j' negative} exp(l_ij'))`` and the loss is
    ``-mean_i sum_j pos_ij log p_ij / (sum_j pos_ij + 1e-5)``. Anchors labelled ``ignore`` are left
    out (0 with a graph when none is left) by a mask, not by indexing: no host sync, and under
    DDP the mean is over the kept anchors of the whole global batch (``distributed.global_mean``;
    every rank takes part in its collective, whatever it keeps). Logits in float32 (at least),
    autocast off."""
    keep = anchor_labels != ignore
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        dtype = torch.promote_types(anchors.dtype, torch.float32)
        a = anchors.to(dtype)
        logits = a @ bank.to(device=a.device, dtype=dtype).t() / temperature      # (M, K)
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()
        pos = (anchor_labels[:, None] == bank_labels[None, :].to(anchor_labels.device)).to(dtype)
        neg_sum = (logits.exp() * (1.0 - pos)).sum(dim=1, keepdim=True)
        log_prob = logits - torch.log(logits.exp() + neg_sum)
        per_anchor = (pos * log_prob).sum(dim=1) / (pos.sum(dim=1) + 1e-5)
        per_anchor = torch.where(keep, per_anchor, torch.zeros_like(per_anchor))
        return -D.global_mean(per_anchor.sum(), keep.sum(), min_count=1)


def cosine_consistency_loss(teacher_scores_w: torch.Tensor, student_feat_s: torch.Tensor, strong_view,
                            protos_ema: torch.Tensor, temperature: float = 0.08,
                            geometry: str = "direct") -> torch.Tensor:
    """KL between the teacher's cosine assignments to P' (computed on the weak crop, moved into
    the strong view) and the student's on the strong view, ``softmax(s / tau)``, normalised as the
    official ``(kl * mask).sum() / mask.sum()`` over (N, C, h, w) (``losses.masked_kl``)."""
    t = warp_to_strong(teacher_scores_w, strong_view, "nearest", fill=_NO_SOURCE, geometry=geometry)
    mask = t[:, 0] > _NO_SOURCE / 2
    s = cosine_scores(student_feat_s, protos_ema.detach())
    return L.masked_kl(t / temperature, s / temperature, mask)


__all__ = ["CosinePrototypes", "sample_pixels", "memory_entries", "self_labeling_loss", "contrastive_loss",
           "cosine_consistency_loss"]

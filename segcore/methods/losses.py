"""Losses of ProDA / CPSL stages 1-3 (docs/methods/proda.md, Stage 1 and Stages 2 and 3; docs/methods/cpsl.md, Stage 1).

All take logits (N, C, H, W) and labels (N, H, W) with IGNORE_INDEX = 255 (the official code
uses 250). Every loss that averages over valid pixels returns 0 (with a graph) when there is
none, instead of the NaN of ``F.cross_entropy``: a batch of fully-thresholded pseudo-labels
must not poison training. Under DDP the valid-pixel counts are summed over the ranks
(``segcore.train.distributed.global_mean``), so the averaged gradient is the single-process one.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.classes import IGNORE_INDEX
from ..train.distributed import global_mean

RCE_LOG_CLAMP = 1e-4    # one-hot clamp of the official RCE: -log(1e-4) = 9.2103
RCE_PROB_CLAMP = 1e-7   # probability clamp of the official RCE


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixel cross-entropy, mean over non-ignored pixels (0 if none)."""
    total = F.cross_entropy(logits, labels, ignore_index=ignore, reduction="sum")
    return global_mean(total, (labels != ignore).sum(), min_count=1)  # DDP: count over all ranks


def rce_loss(logits: torch.Tensor, labels: torch.Tensor, ignore: int = IGNORE_INDEX) -> torch.Tensor:
    """Reverse cross-entropy of the official code:
    mean over valid pixels of ``-sum_k clamp(p_k, 1e-7, 1) * log(clamp(onehot(y)_k, 1e-4, 1))``.

    The one-hot term is 0 for k = y and log(1e-4) elsewhere, so the per-pixel value is
    ``-log(1e-4) * (sum_k p'_k - p'_y)`` with p' the clamped softmax (= 9.21 (1 - p_y) up to the
    clamp); computed that way, without materialising the one-hot. The denominator carries the
    official ``+ 1e-6``.
    """
    p = F.softmax(logits, dim=1).clamp(min=RCE_PROB_CLAMP, max=1.0)
    valid = labels != ignore
    y = torch.where(valid, labels, torch.zeros_like(labels)).long()
    p_y = p.gather(1, y[:, None]).squeeze(1)
    per_pixel = -math.log(RCE_LOG_CLAMP) * (p.sum(dim=1) - p_y)
    per_pixel = torch.where(valid, per_pixel, torch.zeros_like(per_pixel))
    return global_mean(per_pixel.sum(), valid.sum(), eps=1e-6)


def ce_rce(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.1, beta: float = 1.0,
           ignore: int = IGNORE_INDEX) -> torch.Tensor:
    """Symmetric cross-entropy of ProDA/CPSL stage 1 (``--rce``): alpha * CE + beta * RCE."""
    return alpha * cross_entropy(logits, labels, ignore) + beta * rce_loss(logits, labels, ignore)


def mrkld(logits: torch.Tensor) -> torch.Tensor:
    """MRKLD regulariser (ProDA ``regular_type='MRKLD'``): ``-(1/(N C H W)) sum log_softmax``,
    i.e. the KL from the uniform distribution up to a constant."""
    return -F.log_softmax(logits, dim=1).mean()


def masked_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(teacher) || softmax(student))`` over dim 1, normalised as the official
    prototype-consistency loss: ``sum(mask * q_T (log q_T - log q_S)) / sum(mask over N,C,h,w)``.

    The official mask is the (N, C, h, w) map ``teacher != 250``, identical over C, so its sum is
    C times the number of valid pixels: the loss is (1/C) times the mean per-pixel KL. That
    factor is reproduced on purpose (it sets the effective weight of ``proto_consistW``).
    ``mask`` (N, h, w) bool; masked-out pixels may hold anything (even non-finite values):
    they are selected away, not multiplied by 0. The teacher gets no gradient.
    """
    log_t = F.log_softmax(teacher_logits.detach(), dim=1)
    log_s = F.log_softmax(student_logits, dim=1)
    kl = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(dim=1)   # (N, h, w)
    mask = mask.bool()
    kl = torch.where(mask, kl, torch.zeros_like(kl))
    return global_mean(kl.sum(), mask.sum() * teacher_logits.shape[1], min_count=1)


def proto_consistency_kl(teacher_dist: torch.Tensor, student_dist: torch.Tensor, mask: torch.Tensor,
                         temperature: float = 1.0) -> torch.Tensor:
    """ProDA prototype-assignment consistency (stage 1, step 7).

    teacher_dist: distances of the EMA teacher's features to the prototypes, already warped into
    the strong view (N, C, h, w); mask (N, h, w) bool marks the pixels the warp filled.
    student_dist: distances of the student's strong-view features (N, C, h, w).
    ``q_T = softmax(-D_t T)``, ``log q_S = log_softmax(-D_s T)``; the loss is
    ``sum(mask q_T (log q_T - log q_S)) / sum(mask replicated over C)``, exactly the official
    normalisation (1/C of the mean per-pixel KL, see ``masked_kl``).
    For CPSL call ``masked_kl(scores_t / 0.08, scores_s / 0.08, mask)`` with cosine scores.
    """
    return masked_kl(-teacher_dist * temperature, -student_dist * temperature, mask)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, official: bool = False) -> torch.Tensor:
    """Knowledge distillation of ProDA/CPSL stages 2-3 (no temperature, no mask).

    official=False (default): the correct ``KL(t || s)``, i.e. the mean over all N*C*H*W
    elements of ``t (log t - log_softmax(s))`` with ``t = softmax(teacher)``: the same "mean
    over every element" reduction as the official code, so the weight ``distillation = 1``
    keeps its scale. It is >= 0 and 0 when student == teacher.

    official=True reproduces the released code, ``F.kl_div(softmax(s), t)`` (mean over all
    elements): probabilities are passed where log-probabilities belong, so the loss is
    ``mean(t log t - t p_s)`` and can be negative; the authors confirmed it is a bug
    (microsoft/ProDA issues #20 and #43). The published ProDA/CPSL numbers were produced with it.
    """
    t_logits = teacher_logits.detach()
    if official:
        return F.kl_div(F.softmax(student_logits, dim=1), F.softmax(t_logits, dim=1), reduction="none").mean()
    return F.kl_div(F.log_softmax(student_logits, dim=1), F.log_softmax(t_logits, dim=1),
                    reduction="none", log_target=True).mean()

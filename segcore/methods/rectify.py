"""Prototype-based pseudo-label rectification (ProDA stage 1, CPSL stage 1).

ProDA (docs/methods/proda.md, Stage 1, step 4): Euclidean distances of the EMA teacher's
features to the class prototypes give weights ``softmax_k(-d_k * T)`` that multiply the
warm-up soft pseudo-label; the rectified hard label is the argmax. The official
``feat_prototype_distance`` loops over classes and materialises an (N, D, H, W) difference per
class; here it is one matmul (``||f||^2 - 2 f.eta + ||eta||^2``).
CPSL (3.2): cosine scores against the (EMA) prototypes, weights ``softmax(s / 0.08)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.classes import IGNORE_INDEX

# Squared distances are clamped to this before the square root: the matmul form can cancel
# to tiny or negative values where f ~ eta, and sqrt'(0) is infinite. The value changes by at
# most 1e-6, only at such points; the gradient stays finite.
_SQ_EPS = 1e-12


def _full_precision(feat: torch.Tensor, protos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = torch.promote_types(torch.promote_types(feat.dtype, protos.dtype), torch.float32)
    return feat.to(dtype), protos.to(device=feat.device, dtype=dtype)


def prototype_distances(feat: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of every pixel feature to every prototype.

    feat (N, D, h, w), protos (C, D) -> (N, C, h, w). Computed in at least float32 with autocast
    off (the expanded form cancels badly in half precision). Gradients flow to ``feat`` (and to
    ``protos`` if it requires them). With TF32 matmuls enabled the cancellation error grows too.
    """
    if feat.dim() != 4 or protos.dim() != 2 or feat.shape[1] != protos.shape[1]:
        raise ValueError(f"feat (N,D,h,w) and protos (C,D) needed; got {tuple(feat.shape)}, {tuple(protos.shape)}")
    with torch.autocast(device_type=feat.device.type, enabled=False):
        feat, protos = _full_precision(feat, protos)
        f2 = feat.pow(2).sum(dim=1, keepdim=True)                    # (N, 1, h, w)
        p2 = protos.pow(2).sum(dim=1)[None, :, None, None]          # (1, C, 1, 1)
        dot = torch.einsum("ndhw,cd->nchw", feat, protos)           # (N, C, h, w)
        return (f2 - 2.0 * dot + p2).clamp(min=_SQ_EPS).sqrt()


def prototype_weights(distances: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``softmax_k(-d_k * T)`` over dim 1. The official code multiplies by the temperature
    (``proto_temperature`` = 1) and first subtracts min_k d_k, which softmax ignores."""
    return F.softmax(-distances * temperature, dim=1)


def rectify(soft_pl: torch.Tensor, weights: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Rectified hard pseudo-label ``argmax_k(w_k * p_k)`` (N, h, w) long.

    Pixels whose normalised maximum ``max_k (w p)_k / sum_k (w p)_k`` is below ``threshold``
    become IGNORE_INDEX (the official ``train_thred``; 0, the default, never drops a pixel).
    """
    if soft_pl.shape != weights.shape:
        raise ValueError(f"soft_pl {tuple(soft_pl.shape)} and weights {tuple(weights.shape)} differ")
    rect = weights * soft_pl
    best, labels = rect.max(dim=1)
    if threshold > 0:
        conf = best / rect.sum(dim=1)
        labels = labels.masked_fill(conf < threshold, IGNORE_INDEX)
    return labels


def cosine_scores(feat: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pixel feature to every prototype (CPSL):
    ``<f/|f|, P_k/|P_k|>``, feat (N, D, h, w), protos (C, D) -> (N, C, h, w), at least float32."""
    if feat.dim() != 4 or protos.dim() != 2 or feat.shape[1] != protos.shape[1]:
        raise ValueError(f"feat (N,D,h,w) and protos (C,D) needed; got {tuple(feat.shape)}, {tuple(protos.shape)}")
    with torch.autocast(device_type=feat.device.type, enabled=False):
        feat, protos = _full_precision(feat, protos)
        return torch.einsum("ndhw,cd->nchw", F.normalize(feat, dim=1), F.normalize(protos, dim=1))


def cosine_weights(scores: torch.Tensor, temperature: float = 0.08) -> torch.Tensor:
    """CPSL rectification weights ``softmax_k(s_k / tau)`` (tau = 0.08, a divisor here)."""
    return F.softmax(scores / temperature, dim=1)

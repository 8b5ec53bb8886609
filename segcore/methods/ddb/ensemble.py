"""CKD's adaptive ensemble of the two path teachers (``cu``, ``ca``).

For each teacher T with prototypes c^T (C, D) and pixel feature f_T(x):
``w_T,k(x) = softmax_k(-||f_T(x) - c^T_k||)`` (the official code subtracts the nearest distance
first, which leaves the softmax unchanged), ``p~_T = w_T * softmax(z_T)``, element-wise and NOT
renormalised; the ensemble is ``(p~_cu + p~_ca) / 2`` and its argmax is the student's label.

Where: we compute the distances and weights at the feature resolution (output stride 8) and
upsample the weights (bilinear, ``align_corners=False``) to the crop; the official code
upsamples the 256-d features to the crop first and loops over the classes there
(``official_full_resolution=True`` reproduces that, 64x the distance work). Both ways, the
logits are upsampled to the crop before the softmax. Per element, the two results differ by a
factor within exp(+-2S), with S the largest feature distance between neighbouring feature
pixels (the distances move by at most S inside a cell of the bilinear grid); the tests check it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .losses import upsample


def proto_distances(feat: Tensor, protos: Tensor) -> Tensor:
    """||f(x) - c_k||_2 for every pixel and class: (N, C, h, w), in float32."""
    n, d, h, w = feat.shape
    f = feat.float().permute(0, 2, 3, 1).reshape(n, h * w, d)
    c = protos.float().to(feat.device)[None].expand(n, -1, -1)
    dist = torch.cdist(f, c, compute_mode="donot_use_mm_for_euclid_dist")       # (N, hw, C)
    return dist.permute(0, 2, 1).reshape(n, protos.shape[0], h, w)


def proto_distances_loop(feat: Tensor, protos: Tensor) -> Tensor:
    """The official per-class loop (``feat_proto_distance``), for the full-resolution switch."""
    n, _, h, w = feat.shape
    out = feat.new_empty((n, protos.shape[0], h, w), dtype=torch.float32)
    for k in range(protos.shape[0]):
        out[:, k] = torch.norm(feat.float() - protos[k].float().to(feat.device)[:, None, None], p=2, dim=1)
    return out


def prototype_weights(dist: Tensor) -> Tensor:
    """softmax_k(-(d_k - min_j d_j)) over the class axis."""
    return F.softmax(-(dist - dist.min(dim=1, keepdim=True).values), dim=1)


def teacher_probs(out: dict, protos: Tensor, size, official_full_resolution: bool = False,
                  rectify_on_prob: bool = True) -> Tensor:
    """One teacher's prototype-weighted class scores at the crop size ``size``.

    ``out``: the teacher's ``{"feat", "out"}`` at output stride; ``protos`` (C, D).
    ``rectify_on_prob=False`` is the official variant that weights the logits, then softmaxes."""
    logits = upsample(out["out"].float(), size)
    if official_full_resolution:
        weights = prototype_weights(proto_distances_loop(upsample(out["feat"].float(), size), protos))
    else:
        weights = upsample(prototype_weights(proto_distances(out["feat"], protos)), size)
    if rectify_on_prob:
        return weights * F.softmax(logits, dim=1)
    return F.softmax(weights * logits, dim=1)


def ensemble(p_cu: Tensor, p_ca: Tensor) -> tuple[Tensor, Tensor]:
    """(confidence, label) of the mean of the two teachers' weighted scores."""
    return (0.5 * p_cu + 0.5 * p_ca).max(dim=1)


__all__ = ["proto_distances", "proto_distances_loop", "prototype_weights", "teacher_probs", "ensemble"]

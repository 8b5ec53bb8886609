"""Sinkhorn-Knopp with a class-prior marginal: CPSL's class-balanced online clustering
(docs/methods/cpsl.md, Stage 1; the official ``sinkhorn``).

SwAV's equipartition (every prototype gets 1/K of the samples) is replaced by the class
distribution ``r`` of the warm-up pseudo-labels: the transport plan ``Q`` (K classes x B samples)
is scaled alternately so that class k's row sums to ``r_k`` and every sample's column to
``1/B``; the returned assignment is ``B * Q^T`` (B x K, each row a distribution over classes).

As the official code: ``Q = exp(S / eps)``, normalised to sum 1, then ``iterations`` rounds of
(row scaling to ``r``, column scaling to ``1/B``), so the last step is the column one: rows of the
result sum to 1 exactly and the class marginal approaches ``r`` with the number of rounds
(3 in the official runs). Two numerical guards that do not change a finite official result:
the scores are shifted by their maximum before ``exp`` (cancelled by the first normalisation;
``exp(1/0.05)`` alone would be harmless, but logits or larger scores could overflow), and a row
whose prior is 0 stays 0 instead of turning into 0/0 = NaN in the next round (the official code
would produce NaN for a class the warm-up model never predicts).
"""
from __future__ import annotations

import torch

_TINY = 1e-30


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, prior: torch.Tensor | None = None, epsilon: float = 0.05,
             iterations: int = 3) -> torch.Tensor:
    """Soft class assignments (B, K) of B samples with scores (B, K) (e.g. cosine logits).

    ``prior`` (K,): the row marginal (class distribution; normalised here to sum 1); None is
    the uniform 1/K of SwAV. Its values are the caller's to check, once, when it is read
    (non-negative, positive sum: ``read_class_distribution``): checking them here would cost a
    host sync per call on the GPU. Computed in float64 whatever the input dtype (the bank holds
    65,536 + samples rows; float32 sums over it lose the 1e-4 marginal accuracy at extreme
    priors); the result has the dtype of ``scores``.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, K), got {tuple(scores.shape)}")
    b, k = scores.shape
    if b == 0:
        return scores.new_zeros(0, k)
    s = scores.detach().double() / float(epsilon)
    q = torch.exp(s - s.max()).t()                  # (K, B)
    q /= q.sum()
    if prior is None:
        r = torch.full((k,), 1.0 / k, dtype=q.dtype, device=q.device)
    else:
        r = prior.detach().to(device=q.device, dtype=q.dtype).reshape(-1)
        if r.numel() != k:
            raise ValueError(f"prior has {r.numel()} classes, the scores {k}")
        r = r / r.sum()
    for _ in range(int(iterations)):
        q /= q.sum(dim=1, keepdim=True).clamp_min(_TINY)
        q *= r[:, None]
        q /= q.sum(dim=0, keepdim=True).clamp_min(_TINY)
        q /= b
    return (q * b).t().to(scores.dtype)


__all__ = ["sinkhorn"]

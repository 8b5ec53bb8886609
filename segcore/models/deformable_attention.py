"""Multi-scale deformable attention (Deformable DETR), in plain PyTorch.

The official Uni-UVPT code imports a compiled CUDA op (``MSDeformAttn`` with a value
projection ``ratio``, as in ViT-Adapter) that its install steps do not build. This module is
the same computation with ``grid_sample``: it runs on any device, needs no build step, and is
differentiable in every input.

Sampling convention (the CUDA op's): a location ``(x, y)`` in [0, 1] on a level of size
``(H_l, W_l)`` is sampled bilinearly at pixel coordinates ``(x * W_l - 0.5, y * H_l - 0.5)``
(pixel centres at integers), with zeros outside the map. That is ``grid_sample`` with
``align_corners=False`` and ``padding_mode="zeros"`` on the grid ``2 * loc - 1``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def ms_deform_attn(value: torch.Tensor, shapes: list[tuple[int, int]], locations: torch.Tensor,
                   weights: torch.Tensor) -> torch.Tensor:
    """The attention-weighted sum of bilinear samples.

    value (B, S, heads, d) with S = sum of H_l * W_l (levels concatenated in ``shapes`` order,
    row-major); locations (B, Q, heads, L, P, 2) as normalised (x, y); weights
    (B, Q, heads, L, P). Returns (B, Q, heads * d)."""
    b, _, heads, d = value.shape
    _, q, _, levels, points, _ = locations.shape
    if levels != len(shapes):
        raise ValueError(f"locations have {levels} levels, shapes {len(shapes)}")
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1
    samples = []
    for lvl, (h, w) in enumerate(shapes):
        v = per_level[lvl].permute(0, 2, 3, 1).reshape(b * heads, d, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(b * heads, q, points, 2)
        samples.append(F.grid_sample(v, g.to(v.dtype), mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(samples, dim=-2).flatten(-2)                       # (B*heads, d, Q, L*P)
    w = weights.transpose(1, 2).reshape(b * heads, 1, q, levels * points).to(stacked.dtype)
    out = (stacked * w).sum(-1)                                              # (B*heads, d, Q)
    return out.view(b, heads * d, q).transpose(1, 2).contiguous()


def reference_points(shapes: list[tuple[int, int]], device=None) -> torch.Tensor:
    """Pixel centres of each level, normalised to [0, 1] as (x, y), concatenated: (sum H*W, 2)."""
    refs = []
    for h, w in shapes:
        y, x = torch.meshgrid((torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h,
                              (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w, indexing="ij")
        refs.append(torch.stack([x.reshape(-1), y.reshape(-1)], dim=-1))
    return torch.cat(refs, dim=0)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with a narrowed value space (``ratio``: the value and
    output projections go through ``int(dim * ratio)`` channels, ViT-Adapter's variant).

    Each query predicts, per head, level and point, an offset from its reference point (in
    units of that level's pixels) and an attention weight (softmax over levels x points)."""

    def __init__(self, dim: int, levels: int = 1, heads: int = 8, points: int = 4, ratio: float = 1.0):
        super().__init__()
        inner = int(dim * ratio)
        if inner % heads:
            raise ValueError(f"value width {inner} (dim {dim} x ratio {ratio}) is not divisible by {heads} heads")
        self.dim, self.levels, self.heads, self.points, self.inner = dim, levels, heads, points, inner
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, inner)
        self.output_proj = nn.Linear(inner, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's init: zero offset weights, offsets biased onto a circle per head
        (point k of a head at k+1 pixels along the head's direction), uniform attention."""
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.heads, 1, 1, 2).repeat(1, self.levels, self.points, 1)
        grid = grid * torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query: torch.Tensor, refs: torch.Tensor, value: torch.Tensor,
                shapes: list[tuple[int, int]]) -> torch.Tensor:
        """query (B, Q, dim); refs (Q, 2) or (B, Q, 2) reference points, shared by all levels;
        value (B, S, dim) over ``shapes``. Returns (B, Q, dim)."""
        b, q, _ = query.shape
        if len(shapes) != self.levels:
            raise ValueError(f"attention over {self.levels} level(s), got {len(shapes)}")
        v = self.value_proj(value).view(b, value.shape[1], self.heads, self.inner // self.heads)
        offsets = self.sampling_offsets(query).view(b, q, self.heads, self.levels, self.points, 2)
        attn = self.attention_weights(query).view(b, q, self.heads, self.levels * self.points).softmax(-1)
        attn = attn.view(b, q, self.heads, self.levels, self.points)
        size = torch.tensor([[w, h] for h, w in shapes], dtype=offsets.dtype, device=offsets.device)
        refs = refs.to(offsets.dtype).expand(b, q, 2)
        locations = refs[:, :, None, None, None, :] + offsets / size[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn(v, shapes, locations, attn))


__all__ = ["ms_deform_attn", "reference_points", "MSDeformAttn"]

"""Mix Transformer (MiT, SegFormer's encoder), with the released SegFormer key layout.

Module names follow the released ImageNet ``mit_b5.pth`` (SegFormer) key for key:
``patch_embed{1-4}.{proj,norm}``, ``block{1-4}.{j}.{norm1,attn.{q,kv,proj,sr,norm},norm2,
mlp.{fc1,dwconv.dwconv,fc2}}``, ``norm{1-4}``; the file's ImageNet classifier ``head.*`` is
not part of the encoder and is skipped by :func:`load_mit_weights`.

Stage i: overlapping patch embedding (7x7 stride 4, then 3x3 stride 2) -> transformer blocks
(efficient self-attention whose keys/values are reduced by a strided ``sr`` conv, Mix-FFN with
a depthwise 3x3 conv) -> LayerNorm -> map for the next stage. Outputs at strides 4/8/16/32.

The stage is split into ``stage_input`` / ``stage_blocks`` / ``stage_output`` so that the
prompt adapter can work between the embedding and the blocks (``segcore.models.uvpt``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
from torchvision.ops import StochasticDepth

from .weights import _require_file, _strip_module, _torch_load, _unwrap_state_dict, load_encoder_keys


@dataclass(frozen=True)
class MiTSpec:
    dims: tuple[int, int, int, int]
    heads: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4
    drop_path: float = 0.1


MIT_SPECS = {
    "mit_b5": MiTSpec(dims=(64, 128, 320, 512), heads=(1, 2, 5, 8), depths=(3, 6, 40, 3)),
    # CPU demo: the same structure (four stages, reduced attention, Mix-FFN), one block each
    "mit_small": MiTSpec(dims=(16, 32, 64, 128), heads=(1, 2, 4, 8), depths=(1, 1, 1, 1), drop_path=0.0),
}

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class OverlapPatchEmbed(nn.Module):
    def __init__(self, kernel: int, stride: int, cin: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, kernel, stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), (h, w)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, sr: int):
        super().__init__()
        self.heads, self.scale, self.sr_ratio = heads, (dim // heads) ** -0.5, sr
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr > 1:
            self.sr = nn.Conv2d(dim, dim, sr, sr)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x, hw):
        b, n, c = x.shape
        q = self.q(x).view(b, n, self.heads, c // self.heads).transpose(1, 2)
        if self.sr_ratio > 1:
            m = x.transpose(1, 2).reshape(b, c, *hw)
            x = self.norm(self.sr(m).flatten(2).transpose(1, 2))
        k, v = self.kv(x).view(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class DWConv(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x, hw):
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, *hw)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x, hw):
        return self.fc2(self.act(self.dwconv(self.fc1(x), hw)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int, sr: int, drop_path: float):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, heads, sr)
        self.drop_path = StochasticDepth(drop_path, "row")
        self.norm2 = LayerNorm(dim)
        self.mlp = MixFFN(dim, dim * mlp_ratio)

    def forward(self, x, hw):
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x), hw))


class MixTransformer(nn.Module):
    """The MiT encoder; ``forward(x)`` gives the four stage maps (B, dims[i], H/s_i, W/s_i)."""

    def __init__(self, spec: MiTSpec):
        super().__init__()
        self.spec, self.dims = spec, spec.dims
        n = sum(spec.depths)
        rates = [spec.drop_path * k / max(n - 1, 1) for k in range(n)]  # linspace (also on the meta device)
        start = 0
        for i in range(4):
            kernel, stride, cin = (7, 4, 3) if i == 0 else (3, 2, spec.dims[i - 1])
            setattr(self, f"patch_embed{i + 1}", OverlapPatchEmbed(kernel, stride, cin, spec.dims[i]))
            setattr(self, f"block{i + 1}", nn.ModuleList(
                Block(spec.dims[i], spec.heads[i], spec.mlp_ratio, spec.sr_ratios[i], rates[start + j])
                for j in range(spec.depths[i])))
            setattr(self, f"norm{i + 1}", LayerNorm(spec.dims[i]))
            start += spec.depths[i]
        self.apply(_init)

    def stage_input(self, i: int, carry):
        """Tokens (B, N, C) and their (h, w) entering stage ``i``; ``carry`` is the image for
        stage 0, else the previous stage's ``carry``."""
        return getattr(self, f"patch_embed{i + 1}")(carry)

    def stage_blocks(self, i: int, x, hw):
        for blk in getattr(self, f"block{i + 1}"):
            x = blk(x, hw)
        return x

    def stage_output(self, i: int, x, hw):
        """(feature map of stage i, carry for stage i + 1)."""
        x = getattr(self, f"norm{i + 1}")(x)
        m = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *hw)
        return m, m

    def forward(self, x):
        feats, carry = [], x
        for i in range(4):
            t, hw = self.stage_input(i, carry)
            feat, carry = self.stage_output(i, self.stage_blocks(i, t, hw), hw)
            feats.append(feat)
        return feats


def _init(m):
    """SegFormer's init: trunc-normal(0.02) linears, fan-out normal convs, unit norms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def load_mit_weights(encoder: MixTransformer, path) -> list[str]:
    """Load a released SegFormer MiT ImageNet file (plain state dict, or under "state_dict" /
    "model"; any "module." / "backbone." prefix stripped) strictly into ``encoder``: every
    encoder key must be present with its shape; the ImageNet classifier ``head.*`` is
    skipped; any other extra key is refused. Returns the loaded keys."""
    _require_file(path)
    sd = _strip_module(_unwrap_state_dict(_torch_load(path), path))
    sd = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    target = encoder.state_dict()
    load_encoder_keys(encoder, sd, target, path, "MiT", "MiT")  # every encoder key: a strict load
    return list(target)


__all__ = ["MiTSpec", "MIT_SPECS", "MixTransformer", "load_mit_weights"]

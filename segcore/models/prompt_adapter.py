"""Uni-UVPT's prompt adapter (ViT-Adapter style) around a frozen four-stage encoder.

* **Prompt generator** (``SpatialPrior``): a conv stem on the image (3x3/2 conv + two 3x3
  convs, BN + ReLU, a 3x3 max-pool of stride 1) gives c1 at stride 2; two 3x3/2 convs give c2
  (stride 4) and c3 (stride 8); 1x1 convs project each to the first stage's width, and a
  learnable level embedding is added per level. The initial prompts are therefore at
  (1/2, 1, 2) x the stride of the stage-1 tokens. (The official stem also computes a fourth,
  unused conv; it is not built here.)
* **Per stage an interaction block** (``Interaction``), run on the stage's tokens x before its
  blocks:
  1. extractor: the prompts (three levels) attend to x (multi-scale deformable attention,
     one value level), then a ConvFFN; both residual -> c';
  2. injector: x attends to c' (three value levels); ``x + gamma * attn`` with a layer-scale
     ``gamma`` initialised to 1e-6, so the adapter starts as the identity on the encoder;
  3. the encoder's blocks run on the injected tokens;
  4. the prompts of the next stage are the INCOMING prompts (not c', as the official code),
     each level through its own 3x3/2 conv to the next stage's width (none after stage 4).
* The injected tokens of every stage are returned as maps: the "prompts" of the prompt
  consistency loss.

Deformable attention: ``segcore.models.deformable_attention`` (plain PyTorch).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torchvision.ops import StochasticDepth

from .deformable_attention import MSDeformAttn, reference_points


@dataclass(frozen=True)
class AdapterSpec:
    stem_width: int = 64        # SPM inplanes (c1 64, c2 128, c3 256 channels before projection)
    heads: int = 16
    points: int = 4
    ratio: float = 0.5          # deformable attention value / output projection width ratio
    ffn_ratio: float = 0.25     # ConvFFN hidden = dim * ffn_ratio
    init_gamma: float = 1e-6    # layer-scale of the injector
    drop_path: float = 0.0      # ConvFFN drop path (the official uses the encoder's rate)


ADAPTER_SPECS = {
    "official": AdapterSpec(),
    "small": AdapterSpec(stem_width=16, heads=2, points=4),
}


def _conv_bn_relu(cin, cout, stride=1):
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SpatialPrior(nn.Module):
    def __init__(self, width: int, dim: int):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(3, width, 2), *_conv_bn_relu(width, width),
                                  *_conv_bn_relu(width, width), nn.MaxPool2d(3, 1, 1))
        self.conv2 = nn.Sequential(*_conv_bn_relu(width, 2 * width, 2))
        self.conv3 = nn.Sequential(*_conv_bn_relu(2 * width, 4 * width, 2))
        self.fc1 = nn.Conv2d(width, dim, 1)
        self.fc2 = nn.Conv2d(2 * width, dim, 1)
        self.fc3 = nn.Conv2d(4 * width, dim, 1)

    def forward(self, x):
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        return [self.fc1(c1), self.fc2(c2), self.fc3(c3)]


def _tokens(maps):
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1), [tuple(m.shape[-2:]) for m in maps]


def _maps(tokens, shapes):
    b, _, c = tokens.shape
    parts = tokens.split([h * w for h, w in shapes], dim=1)
    return [p.transpose(1, 2).reshape(b, c, h, w) for p, (h, w) in zip(parts, shapes)]


class ConvFFN(nn.Module):
    """Linear -> depthwise 3x3 conv on each prompt level separately -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x, shapes):
        x = self.fc1(x)
        x, _ = _tokens([self.dwconv(m) for m in _maps(x, shapes)])
        return self.fc2(self.act(x))


class Interaction(nn.Module):
    def __init__(self, dim: int, next_dim: int | None, spec: AdapterSpec):
        super().__init__()
        self.ext_query_norm, self.ext_feat_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ext_attn = MSDeformAttn(dim, 1, spec.heads, spec.points, spec.ratio)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = ConvFFN(dim, int(dim * spec.ffn_ratio))
        self.drop_path = StochasticDepth(spec.drop_path, "row")
        self.inj_query_norm, self.inj_feat_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.inj_attn = MSDeformAttn(dim, 3, spec.heads, spec.points, spec.ratio)
        self.gamma = nn.Parameter(torch.full((dim,), float(spec.init_gamma)))
        self.down = None if next_dim is None else nn.ModuleList(nn.Conv2d(dim, next_dim, 3, 2, 1) for _ in range(3))

    def forward(self, x, hw, prompts):
        """x (B, N, dim) tokens of shape ``hw``; prompts: three maps (B, dim, h_l, w_l).
        Returns the injected tokens and the next stage's prompts (None after the last)."""
        c, shapes = _tokens(prompts)
        dev = x.device
        c = c + self.ext_attn(self.ext_query_norm(c), reference_points(shapes, dev), self.ext_feat_norm(x), [hw])
        c = c + self.drop_path(self.ffn(self.ffn_norm(c), shapes))
        attn = self.inj_attn(self.inj_query_norm(x), reference_points([hw], dev), self.inj_feat_norm(c), shapes)
        x = x + self.gamma * attn
        nxt = None if self.down is None else [conv(p) for conv, p in zip(self.down, prompts)]
        return x, nxt


class PromptAdapter(nn.Module):
    """The trainable part of the adapted network: ``spm``, ``level_embed``, ``interactions``
    (parameter names as the official code's, which its learning-rate rule matches)."""

    def __init__(self, dims, spec: AdapterSpec):
        super().__init__()
        self.spec = spec
        self.spm = SpatialPrior(spec.stem_width, dims[0])
        self.level_embed = nn.Parameter(torch.empty(3, dims[0]).normal_())
        self.interactions = nn.ModuleList(
            Interaction(dims[i], dims[i + 1] if i + 1 < len(dims) else None, spec) for i in range(len(dims)))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():  # the attention's own init after the generic one above
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()

    def forward(self, encoder, x):
        """Run ``encoder`` (stage_input / stage_blocks / stage_output) with the adapter;
        returns (stage feature maps, injected-token maps)."""
        prompts = [p + e.view(1, -1, 1, 1) for p, e in zip(self.spm(x), self.level_embed)]
        feats, injected, carry = [], [], x
        for i, block in enumerate(self.interactions):
            t, hw = encoder.stage_input(i, carry)
            t, prompts = block(t, hw, prompts)
            injected.append(t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *hw))
            feat, carry = encoder.stage_output(i, encoder.stage_blocks(i, t, hw), hw)
            feats.append(feat)
        return feats, injected


def adapter_param_count(dims, spec: AdapterSpec) -> int:
    """The adapter's parameter count computed from its layer shapes (no module built)."""
    w = spec.stem_width

    def conv(cin, cout, k, bias=True, groups=1):
        return cin // groups * cout * k * k + (cout if bias else 0)

    def lin(cin, cout):
        return cin * cout + cout

    bn = ln = 2  # weight + bias per channel
    spm = (conv(3, w, 3, False) + conv(w, w, 3, False) * 2 + 3 * bn * w
           + conv(w, 2 * w, 3, False) + bn * 2 * w + conv(2 * w, 4 * w, 3, False) + bn * 4 * w
           + conv(w, dims[0], 1) + conv(2 * w, dims[0], 1) + conv(4 * w, dims[0], 1))
    total = spm + 3 * dims[0]
    for i, d in enumerate(dims):
        inner, hidden = int(d * spec.ratio), int(d * spec.ffn_ratio)

        def attn(levels, d=d, inner=inner):
            return (lin(d, spec.heads * levels * spec.points * 2) + lin(d, spec.heads * levels * spec.points)
                    + lin(d, inner) + lin(inner, d))

        total += 5 * ln * d + attn(1) + attn(3) + d
        total += lin(d, hidden) + conv(hidden, hidden, 3, groups=hidden) + lin(hidden, d)
        if i + 1 < len(dims):
            total += 3 * conv(d, dims[i + 1], 3)
    return total


__all__ = ["AdapterSpec", "ADAPTER_SPECS", "PromptAdapter", "Interaction", "SpatialPrior", "adapter_param_count"]

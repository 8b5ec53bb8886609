"""Swin Transformer (torchvision's) as a four-level feature encoder.

The blocks are torchvision's own (``torchvision.models.swin_transformer``), held under the
same ``features.*`` names, so torchvision's ImageNet file (``swin_b-68c6b09e.pth``, keys
``features.*``, ``norm.*``, ``head.*``) loads key for key into ``features`` with
:func:`load_swin_weights`; the classifier's ``norm`` / ``head`` are not used. As in mmseg's
Swin backbone, each of the four stage outputs gets its own LayerNorm (``out_norm.{i}``, new
parameters: the ImageNet file has no such norms).

``features`` is torchvision's sequence: 0 patch embedding (4x4 conv, channels-last, LN),
1/3/5/7 the stages' blocks, 2/4/6 patch merging. Stage i (0-based) is: its input (patch
embedding for 0, merging of the previous stage's blocks output otherwise), its blocks, its
output norm. Tokens are channels-last (B, h, w, C) inside torchvision's blocks and
(B, h * w, C) at the adapter's interface.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
from torchvision.models.swin_transformer import SwinTransformer

from .weights import _require_file, _strip_module, _torch_load, _unwrap_state_dict, load_encoder_keys


@dataclass(frozen=True)
class SwinSpec:
    embed_dim: int
    depths: tuple[int, int, int, int]
    heads: tuple[int, int, int, int]
    window: int = 7
    drop_path: float = 0.3

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(4))


SWIN_SPECS = {
    "swin_b": SwinSpec(embed_dim=128, depths=(2, 2, 18, 2), heads=(4, 8, 16, 32)),
    # CPU demo: the same structure (a plain and a shifted window block per stage), narrow
    "swin_small": SwinSpec(embed_dim=16, depths=(2, 2, 2, 2), heads=(1, 2, 4, 8), window=4, drop_path=0.0),
}


class SwinEncoder(nn.Module):
    """torchvision's Swin blocks; ``forward(x)`` gives the four normalised stage maps."""

    def __init__(self, spec: SwinSpec):
        super().__init__()
        net = SwinTransformer(patch_size=[4, 4], embed_dim=spec.embed_dim, depths=list(spec.depths),
                              num_heads=list(spec.heads), window_size=[spec.window, spec.window],
                              stochastic_depth_prob=spec.drop_path)
        self.spec, self.dims = spec, spec.dims
        self.features = net.features
        self.out_norm = nn.ModuleList(nn.LayerNorm(d) for d in self.dims)

    def stage_input(self, i: int, carry):
        """Tokens (B, N, C) and their (h, w) entering stage ``i``; ``carry`` is the image for
        stage 0, else the previous stage's channels-last blocks output."""
        x = self.features[0](carry) if i == 0 else self.features[2 * i](carry)
        h, w = x.shape[1:3]
        return x.flatten(1, 2), (h, w)

    def stage_blocks(self, i: int, x, hw):
        b, _, c = x.shape
        return self.features[2 * i + 1](x.view(b, *hw, c)).flatten(1, 2)

    def stage_output(self, i: int, x, hw):
        """(feature map (B, C, h, w) of stage i, channels-last carry for stage i + 1)."""
        b, _, c = x.shape
        carry = x.view(b, *hw, c)
        return self.out_norm[i](carry).permute(0, 3, 1, 2).contiguous(), carry

    def forward(self, x):
        feats, carry = [], x
        for i in range(4):
            t, hw = self.stage_input(i, carry)
            feat, carry = self.stage_output(i, self.stage_blocks(i, t, hw), hw)
            feats.append(feat)
        return feats


def load_swin_weights(encoder: SwinEncoder, path) -> list[str]:
    """Load torchvision's Swin ImageNet state dict (plain, or under "state_dict" / "model")
    into ``encoder.features``: every ``features.*`` key must be present with its shape; the
    classifier ``norm.*`` / ``head.*`` are skipped; other keys are refused. Returns the keys."""
    _require_file(path)
    sd = _strip_module(_unwrap_state_dict(_torch_load(path), path))
    sd = {k: v for k, v in sd.items() if not k.startswith(("norm.", "head."))}
    target = {k: v for k, v in encoder.state_dict().items() if k.startswith("features.")}
    missing = load_encoder_keys(encoder, sd, target, path, "torchvision Swin", "Swin")
    assert all(k.startswith("out_norm.") for k in missing), missing
    return list(target)


__all__ = ["SwinSpec", "SWIN_SPECS", "SwinEncoder", "load_swin_weights"]

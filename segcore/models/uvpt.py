"""Uni-UVPT's segmentation network: a transformer encoder (Swin-B or MiT-B5, or their small
demo presets), optionally the prompt adapter around it, and a DAFormer head.

``UVPTNet(x)`` takes images in [0, 1] (segcore's loaders), normalises them with the ImageNet
mean / std (what the encoders' ImageNet weights expect), and returns
``{"out": logits at stride 4, "prompts": the adapter's injected-token maps (None without
adapter)}``. The adapted network also holds ``scale_weights``, the learnable mixture of the
three input scales of the consistency loss (unused at inference).

Checkpoints: ``meta["arch"] = "uvpt_<backbone>"`` and ``meta["adapter"]``; see
:func:`build_from_meta`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .daformer_head import DAFormerHead
from .mit import MIT_SPECS, MixTransformer, load_mit_weights
from .prompt_adapter import ADAPTER_SPECS, PromptAdapter
from .swin import SWIN_SPECS, SwinEncoder, load_swin_weights
from .uvpt_presets import ARCH_PREFIX, PRESETS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _encoder(backbone: str):
    if PRESETS[backbone].family == "swin":
        return SwinEncoder(SWIN_SPECS[backbone])
    return MixTransformer(MIT_SPECS[backbone])


class UVPTNet(nn.Module):
    def __init__(self, backbone: str, num_classes: int, adapter: bool = False):
        super().__init__()
        if backbone not in PRESETS:
            raise ValueError(f"unknown UVPT backbone {backbone!r} (known: {', '.join(PRESETS)})")
        preset = PRESETS[backbone]
        self.backbone_name, self.num_classes, self.arch = backbone, num_classes, ARCH_PREFIX + backbone
        self.backbone = _encoder(backbone)
        dims = self.backbone.dims
        self.adapter = PromptAdapter(dims, ADAPTER_SPECS[preset.adapter]) if adapter else None
        self.head = DAFormerHead(dims, num_classes, preset.head_width, preset.dilations)
        if adapter:
            self.scale_weights = nn.Parameter(torch.ones(3))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def has_adapter(self) -> bool:
        return self.adapter is not None

    def forward(self, x):
        x = (x - self.mean) / self.std
        if self.adapter is None:
            feats, prompts = self.backbone(x), None
        else:
            feats, prompts = self.adapter(self.backbone, x)
        return {"out": self.head(feats), "prompts": prompts}


def build_uvpt(backbone: str, num_classes: int, adapter: bool = False) -> UVPTNet:
    return UVPTNet(backbone, num_classes, adapter)


def load_imagenet_encoder(net: UVPTNet, path) -> list[str]:
    """The encoder's ImageNet weights from ``path``: torchvision's Swin layout for Swin,
    SegFormer's released MiT layout for MiT."""
    if PRESETS[net.backbone_name].family == "swin":
        return load_swin_weights(net.backbone, path)
    return load_mit_weights(net.backbone, path)


def build_from_meta(meta: dict) -> UVPTNet:
    """The network a checkpoint's meta describes (``arch`` "uvpt_<backbone>", ``adapter``)."""
    arch = str(meta["arch"])
    backbone = arch[len(ARCH_PREFIX):]
    if not arch.startswith(ARCH_PREFIX) or backbone not in PRESETS:
        raise ValueError(f"unknown arch {arch!r} (known: {', '.join(ARCH_PREFIX + b for b in PRESETS)})")
    return UVPTNet(backbone, int(meta["num_classes"]), bool(meta.get("adapter", False)))


def set_backbone_frozen(net: UVPTNet, frozen: bool = True) -> None:
    """``requires_grad`` off (on) for every encoder parameter. The encoder stays in train
    mode (its drop path runs, as in the official frozen setting; it has no BatchNorm)."""
    for p in net.backbone.parameters():
        p.requires_grad_(not frozen)


def _no_decay(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or "norm" in name or "pos_block" in name


def param_groups(net: UVPTNet, lr: float, weight_decay: float, head_mult: float = 10.0,
                 prompt_mult: float = 1.0) -> list[dict]:
    """AdamW groups of the official rule: the head at ``lr * head_mult``, the adapter
    (``spm``, ``level_embed``, ``interactions``) at ``lr * prompt_mult``, the rest (encoder,
    scale mixture) at ``lr``; no weight decay on norms (and ``pos_block``). Only parameters
    with ``requires_grad``; each parameter once. Each group carries ``initial_lr``."""
    owner = {}
    for mname, m in net.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            owner[id(p)] = (f"{mname}.{pname}" if mname else pname, m)
    groups: dict[tuple, list] = {}
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        mult = head_mult if name.startswith("head.") else prompt_mult if name.startswith("adapter.") else 1.0
        decay = 0.0 if _no_decay(*owner[id(p)]) else weight_decay
        groups.setdefault((mult, decay), []).append(p)
    return [{"params": ps, "lr": lr * m, "initial_lr": lr * m, "weight_decay": d, "name": f"x{m:g} wd{d:g}"}
            for (m, d), ps in groups.items()]


def parameter_counts(net: UVPTNet) -> dict:
    """Trainable and total parameter counts, per part."""
    parts = {"backbone": net.backbone, "head": net.head}
    if net.adapter is not None:
        parts["adapter"] = net.adapter
    out = {f"{k}_params": sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
    out["total_params"] = sum(p.numel() for p in net.parameters())
    out["trainable_params"] = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return out


__all__ = ["UVPTNet", "build_uvpt", "build_from_meta", "load_imagenet_encoder", "set_backbone_frozen",
           "param_groups", "parameter_counts"]

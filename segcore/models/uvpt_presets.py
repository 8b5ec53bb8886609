"""The presets of Uni-UVPT's network and the checkpoint ``meta["arch"]`` names they give.

Apart from ``segcore.models.uvpt`` so that reading a checkpoint's architecture does not import
the encoders: they import torchvision, about 2 s of start-up (torch._dynamo) that jobs which
never build a transformer (every evaluation of a DeepLabV2 checkpoint) would pay.
"""
from __future__ import annotations

from dataclasses import dataclass

ARCH_PREFIX = "uvpt_"


@dataclass(frozen=True)
class Preset:
    family: str                 # "swin" or "mit"
    adapter: str                # key of ADAPTER_SPECS
    head_width: int
    dilations: tuple[int, ...]


PRESETS = {
    "swin_b": Preset("swin", "official", 256, (1, 6, 12, 18)),
    "mit_b5": Preset("mit", "official", 256, (1, 6, 12, 18)),
    "swin_small": Preset("swin", "small", 32, (1, 2, 3, 4)),
    "mit_small": Preset("mit", "small", 32, (1, 2, 3, 4)),
}
UVPT_ARCHS = tuple(ARCH_PREFIX + b for b in PRESETS)   # checkpoint ``meta["arch"]`` values

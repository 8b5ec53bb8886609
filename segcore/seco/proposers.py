"""The proposer a SeCo run uses: SAM when a checkpoint is configured, else the classical one.
Imports nothing heavy until a proposer is made (the workflow names it at parse time)."""
from __future__ import annotations

from pathlib import Path


def proposer_name(options: dict) -> str:
    """The name the stores and tables give the proposer ``options`` configure."""
    sam = options.get("sam") or {}
    if sam.get("checkpoint"):
        return sam.get("name") or f"sam_{Path(sam['checkpoint']).stem}"
    return f"classical_{(options.get('classical') or {}).get('superpixels', 'felzenszwalb')}"


def make_proposer(options: dict, num_classes: int, device: str | None = None):
    """``options``: ``sam`` ({"checkpoint", "name", "prompts", "generator"}) and ``classical``
    (``ClassicalProposer``'s keyword arguments). SAM runs on ``device`` (None: CUDA when
    available; a ViT-H on the CPU takes minutes per Cityscapes image)."""
    import torch

    from .classical import ClassicalProposer

    sam = options.get("sam") or {}
    if sam.get("checkpoint"):
        from .sam import SamProposer, load_sam

        if not Path(sam["checkpoint"]).is_file():
            raise ValueError(f"{sam['checkpoint']}: SAM checkpoint not found (seco.sam.checkpoint)")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return SamProposer(load_sam(sam["checkpoint"]).to(device), sam.get("generator"), sam.get("prompts", "released"),
                           num_classes, name=proposer_name(options))
    proposer = ClassicalProposer(**(options.get("classical") or {}))
    proposer.name = proposer_name(options)
    return proposer

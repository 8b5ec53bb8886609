"""Rolling resume state, kept outside the declared outputs (Snakemake deletes those when a
job fails). Written atomically every N iterations and read with ``weights_only=True``.
A state written under other hyperparameters is not reused (its fingerprint differs).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from ..atomic import save_torch


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RollingState:
    def __init__(self, path, every: int, fingerprint: str):
        self.path, self.every, self.fp = Path(path), every, fingerprint

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") != self.fp:
            print(f"{self.path}: resume state belongs to other settings; starting over", file=sys.stderr)
            return None
        return state

    def due(self, iteration: int) -> bool:
        return iteration % self.every == 0

    def save(self, state: dict) -> None:
        save_torch(self.path, dict(state, fingerprint=self.fp))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

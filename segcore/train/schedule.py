"""Learning-rate schedule of the official code: poly decay stepped once per iteration."""
from __future__ import annotations


def poly_factor(iteration: int, horizon: int, power: float = 0.9) -> float:
    """(1 - it/horizon)^power, clamped at 0 (the official code crashes past its horizon)."""
    return max(0.0, 1.0 - iteration / horizon) ** power


def set_lr(optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor

"""Learning-rate schedules, stepped once per iteration: a factor on each param group's
``initial_lr``. ``options["schedule"]`` picks one:

* ``poly`` (ProDA, CPSL, the warm-up): ``(1 - it / horizon) ** poly_power``, ``horizon`` =
  ``poly_horizon`` or the real number of iterations;
* ``warmup_poly`` (DDB): poly over the whole horizon, scaled during the first
  ``warmup_iterations`` by a linear warm-up from ``warmup_ratio`` to 1;
* ``cosine`` (Uni-UVPT): from 1 to ``min_lr_ratio`` over the iterations, with the same
  optional warm-up.
"""
from __future__ import annotations

import math

SCHEDULES = ("poly", "warmup_poly", "cosine")


def poly_factor(iteration: int, horizon: int, power: float = 0.9) -> float:
    """(1 - it/horizon)^power, clamped at 0 (the official code crashes past its horizon)."""
    return max(0.0, 1.0 - iteration / horizon) ** power


def warmup_factor(iteration: int, warmup: int, ratio: float) -> float:
    """Linear warm-up (mmcv's ``linear``): ``ratio`` at 0, 1 at ``warmup``."""
    return 1.0 - (1.0 - iteration / warmup) * (1.0 - ratio)


def lr_factor(iteration: int, options: dict) -> float:
    """The factor of ``options["schedule"]`` (default ``poly``) at ``iteration``. During a
    warm-up the regular factor is scaled by the warm-up's, as mmcv's ``LrUpdaterHook`` does
    (no jump at the end of the warm-up)."""
    kind = options.get("schedule", "poly")
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r} (known: {', '.join(SCHEDULES)})")
    total = int(options["iterations"])
    if kind == "cosine":
        floor = options.get("min_lr_ratio", 0.0)
        factor = floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, iteration / total)))
    else:
        factor = poly_factor(iteration, options.get("poly_horizon") or total, options["poly_power"])
    warmup = int(options.get("warmup_iterations") or 0) if kind != "poly" else 0
    if warmup and iteration < warmup:
        factor *= warmup_factor(iteration, warmup, options.get("warmup_ratio", 1e-6))
    return factor


def set_lr(optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor

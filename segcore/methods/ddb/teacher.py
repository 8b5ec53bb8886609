"""DDB's mean teacher (the DAFormer/DACS one): at iteration t >= 1, before the step,
``theta' <- a_t theta' + (1 - a_t) theta`` over the parameters only, with
``a_t = min(1 - 1/(t+1), alpha)`` (alpha 0.99); at t = 0 the teacher is a copy of the student.
The teacher's BatchNorm buffers are its own: its forward runs BN in train mode (batch
statistics, running statistics updated), as the official code, with dropout off.
``bn_train_mode=False`` runs it fully in eval mode instead.

Not an ``nn.Module`` (as ``segcore.train.ema.EMATeacher``): a parent's ``.train()`` or an
optimiser built from ``.parameters()`` cannot reach it by accident.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ...train.ema import unwrap


def ema_alpha(t: int, alpha: float = 0.99) -> float:
    """The weight of the teacher at iteration ``t`` (>= 1): min(1 - 1/(t+1), alpha)."""
    return min(1.0 - 1.0 / (int(t) + 1), float(alpha))


class MeanTeacher:
    def __init__(self, student: nn.Module, alpha: float = 0.99, bn_train_mode: bool = True):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.bn_train_mode = bool(bn_train_mode)
        self.module = copy.deepcopy(unwrap(student))
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module, t: int) -> None:
        """The EMA step of iteration ``t`` >= 1 (parameters only)."""
        a = ema_alpha(t, self.alpha)
        tp = list(self.module.parameters())
        sp = [p.detach() for p in unwrap(student).parameters()]
        torch._foreach_mul_(tp, a)
        torch._foreach_add_(tp, sp, alpha=1.0 - a)

    def _mode(self) -> None:
        self.module.train(self.bn_train_mode)
        for m in self.module.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.eval()

    def __call__(self, *args, **kwargs):
        self._mode()
        with torch.no_grad():
            return self.module(*args, **kwargs)

    def to(self, *args, **kwargs) -> MeanTeacher:
        self.module.to(*args, **kwargs)
        return self

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict, strict: bool = True):
        return self.module.load_state_dict(state, strict=strict)


__all__ = ["ema_alpha", "MeanTeacher"]

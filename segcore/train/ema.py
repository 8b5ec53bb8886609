"""EMA teacher (mean teacher) of ProDA / CPSL stage 1 (docs/methods/proda.md).

Official behaviour, reproduced by default:
* after every optimiser step, ``theta' <- m theta' + (1 - m) theta`` with m = 0.999 for every
  parameter (frozen ones included), and every buffer (BN running stats, num_batches_tracked)
  is copied from the student;
* the teacher is never put in eval mode (``CustomModel.train/eval`` skip it), so its forward
  uses batch-statistics BN and active dropout. ``train_mode=False`` switches to eval mode.

Under DDP the teacher is identical on every rank: it starts from the same weights and is
updated from identical students (averaged gradients, globally synchronised BN buffers); its
train-mode forward uses the global batch's BN statistics when the student was passed through
``distributed.prepare_model`` before the copy.

The teacher is deliberately not an ``nn.Module``: a parent's ``.train()``/``.eval()``, an
optimiser built from ``.parameters()`` or a DDP wrapper cannot reach it by accident.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module of a DistributedDataParallel / DataParallel wrapper (else the model)."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


class EMATeacher:
    def __init__(self, model: nn.Module, momentum: float = 0.999, copy_buffers: bool = True,
                 train_mode: bool = True):
        """Deep copy of ``model`` (unwrapped from DDP), detached from autograd.

        copy_buffers=False: floating-point buffers follow the same EMA as the parameters and
        integer ones (num_batches_tracked) are copied.
        """
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.copy_buffers = bool(copy_buffers)
        self.train_mode = bool(train_mode)
        self.module = copy.deepcopy(unwrap(model))
        self.module.requires_grad_(False)
        self.module.train(self.train_mode)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """One EMA step from ``student`` (bare or DDP-wrapped); call after the optimiser step."""
        student = unwrap(student)
        t_params, s_params = list(self.module.parameters()), list(student.parameters())
        t_bufs, s_bufs = list(self.module.buffers()), list(student.buffers())
        if len(t_params) != len(s_params) or len(t_bufs) != len(s_bufs):
            raise ValueError("student and teacher have different parameters/buffers")
        m = self.momentum
        # multi-tensor ops: one kernel per group on the GPU instead of one per tensor
        torch._foreach_mul_(t_params, m)
        torch._foreach_add_(t_params, [s.detach() for s in s_params], alpha=1.0 - m)
        if self.copy_buffers:
            torch._foreach_copy_(t_bufs, s_bufs)
            return
        for t, s in zip(t_bufs, s_bufs):
            if not t.is_floating_point():
                t.copy_(s)
            else:
                t.mul_(m).add_(s, alpha=1.0 - m)

    def forward(self, *args, **kwargs):
        """Teacher forward under no_grad, in the configured mode (train mode by default)."""
        self.module.train(self.train_mode)
        with torch.no_grad():
            return self.module(*args, **kwargs)

    __call__ = forward

    def to(self, *args, **kwargs) -> EMATeacher:
        self.module.to(*args, **kwargs)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The teacher network's own state_dict (loadable into a plain model of the same class)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True):
        return self.module.load_state_dict(state, strict=strict)

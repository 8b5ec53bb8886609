"""Small pieces every training loop shares."""
from __future__ import annotations

import time

import torch

from ..models.deeplabv2 import param_groups


def make_sgd(model, opts) -> torch.optim.SGD:
    return torch.optim.SGD(param_groups(model, opts["lr"], opts["head_lr_mult"]), lr=opts["lr"],
                           momentum=opts["momentum"], weight_decay=opts["weight_decay"])


def freeze_bn(model) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


class Progress:
    """Prints losses every ``every`` iterations (one .item() per logged value, not per step)."""

    def __init__(self, total: int, start: int, every: int, log=print):
        self.total, self.start, self.every, self.log, self.t0 = total, start, every, log, time.time()

    def __call__(self, done: int, lr: float, logs: dict) -> None:
        if done % self.every and done != self.total:
            return
        rate = (done - self.start) / max(time.time() - self.t0, 1e-9)
        values = " ".join(f"{k} {float(v):.4f}" for k, v in logs.items())
        self.log(f"it {done}/{self.total} lr {lr:.2e} {values} ({rate:.2f} it/s)")

"""Batch-coupled layers made global for multi-process training (``distributed.prepare_model``):
BatchNorm statistics over the global batch and Dropout2d masks drawn for the global batch,
so that W processes compute what one process does on the whole batch."""
from __future__ import annotations

import torch
from torch import nn

from . import distributed as D


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics are those of the global batch (all ranks),
    differentiable, on any backend (torch's SyncBatchNorm is CUDA-only). Two passes (mean,
    then the centred second moment) for accuracy; running statistics as ``nn.BatchNorm``
    (unbiased variance of the global batch). Eval mode (frozen BN) is plain BatchNorm."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and D.active()):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        n = D.all_reduce_sum(torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device))
        mean = D.sum_over_ranks(x.sum(dims)) / n
        d = x - mean.reshape(shape)
        var = D.sum_over_ranks((d * d).sum(dims)) / n
        y = d * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1).clamp(min=1)), alpha=m)
        return y


class GlobalDropout2d(nn.Dropout2d):
    """``Dropout2d`` whose mask is drawn for the whole global batch (every rank draws the same
    mask from its identically seeded RNG, in the same way as ``F.dropout2d`` does) and sliced
    to this rank's samples: the masks and the RNG stream are the single process's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or not D.active():
            return super().forward(x)
        if self.p >= 1:
            return x * 0.0
        n = x.shape[0]
        noise = x.new_empty((n * D.world_size(), x.shape[1]) + (1,) * (x.dim() - 2))
        noise.bernoulli_(1 - self.p).div_(1 - self.p)
        return x * noise[D.rank() * n:(D.rank() + 1) * n]


def make_global(module: nn.Module, on_cuda: bool) -> nn.Module:
    """``module`` with its BatchNorm layers global (SyncBatchNorm on CUDA, GlobalBatchNorm
    elsewhere) and its Dropout2d layers drawing global-batch masks; the parameter and buffer
    objects (and so the state_dict keys) are kept."""
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, (nn.SyncBatchNorm,
                                                                                        GlobalBatchNorm)):
        cls = nn.SyncBatchNorm if on_cuda else GlobalBatchNorm
        out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    elif type(module) is nn.Dropout2d:
        out = GlobalDropout2d(module.p, module.inplace)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, make_global(child, on_cuda))
    return out


__all__ = ["GlobalBatchNorm", "GlobalDropout2d", "make_global"]

"""Data order that is a pure function of (seed, iteration), so a resumed run sees the same batches.

Each sample is drawn as ``(index, view_seed)``: the dataset seeds its random view from
``view_seed``, so augmentations do not depend on worker count, worker timing or a resume.
Under DDP every rank walks the same global order and takes its own slice of each batch.
"""
from __future__ import annotations

import torch


class SeededBatchSampler(torch.utils.data.Sampler):
    """Yields batches of (index, view_seed) from ``start_iter`` on, reshuffling every epoch."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, start_iter: int = 0,
                 rank: int = 0, world_size: int = 1):
        if num_samples < batch_size:
            raise ValueError(f"dataset has {num_samples} samples, fewer than the batch size {batch_size}")
        if batch_size % world_size:
            raise ValueError(f"global batch size {batch_size} is not divisible by {world_size} processes")
        self.n, self.bs, self.seed, self.start = num_samples, batch_size, seed, start_iter
        self.rank, self.world = rank, world_size
        self.per_epoch = num_samples // batch_size  # drop_last, as the official loaders

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        epoch, pos = divmod(iteration, self.per_epoch)
        order = self._epoch_order(epoch)
        idx = order[pos * self.bs : (pos + 1) * self.bs].tolist()
        local = self.bs // self.world
        idx = idx[self.rank * local : (self.rank + 1) * local]
        base = (self.seed * 7919 + iteration * self.bs) * 31
        return [(i, base + self.rank * local + k) for k, i in enumerate(idx)]

    def __iter__(self):
        it = self.start
        while True:
            yield self.batch(it)
            it += 1

    def __len__(self):  # endless; DataLoader only needs it for len()
        return 2**62


"""A fixed-size FIFO memory of per-sample tensors (CPSL's feature, label and logit queues).

The official code keeps three queues of 65,536 rows and, for every image of every iteration,
shifts each of them by copying all but 256 rows (``queue[fbs:] = queue[:-fbs].clone()``).
Here the rows live in a ring buffer with a write pointer: a push writes only the new rows (one
indexed copy per field) and nothing moves. Row order inside the buffer is therefore not the
insertion order; ``ordered()`` gives oldest-to-newest when that matters (Sinkhorn and the
contrastive loss do not care: both are invariant to a permutation of the memory's rows).

Under DDP the caller all-gathers a step's entries (in rank order) before ``push``, so that every
rank holds the same memory.
"""
from __future__ import annotations

import torch


class FeatureMemory:
    """``fields``: name -> (shape of one row, dtype), e.g.
    ``{"feat": ((256,), torch.float32), "label": ((), torch.int64)}``."""

    def __init__(self, size: int, fields: dict, device=None):
        if int(size) < 1 or not fields:
            raise ValueError(f"a memory needs size >= 1 and at least one field (size={size})")
        self.size = int(size)
        self.buffers = {name: torch.zeros(self.size, *shape, dtype=dtype, device=device)
                        for name, (shape, dtype) in fields.items()}
        self.ptr = 0      # next row to write
        self.count = 0    # rows written so far, capped at size

    @property
    def full(self) -> bool:
        return self.count >= self.size

    def __len__(self) -> int:
        return self.count

    @torch.no_grad()
    def push(self, **entries: torch.Tensor) -> None:
        """Append one row per sample of every field (all fields, same number of rows n).
        When n exceeds the size, only the last ``size`` rows are kept, as a FIFO would."""
        if set(entries) != set(self.buffers):
            raise ValueError(f"push needs exactly the fields {sorted(self.buffers)}, got {sorted(entries)}")
        lengths = {name: x.shape[0] for name, x in entries.items()}
        n = next(iter(lengths.values()))
        if any(v != n for v in lengths.values()):
            raise ValueError(f"fields of different lengths: {lengths}")
        if n == 0:
            return
        start = self.ptr
        if n > self.size:
            start, entries = (self.ptr + n - self.size) % self.size, {k: v[-self.size:] for k, v in entries.items()}
        m = min(n, self.size)
        first = self.buffers[next(iter(self.buffers))]
        idx = (start + torch.arange(m, device=first.device)) % self.size
        for name, x in entries.items():
            buf = self.buffers[name]
            buf[idx] = x.detach().to(device=buf.device, dtype=buf.dtype).reshape(m, *buf.shape[1:])
        self.ptr = (self.ptr + n) % self.size
        self.count = min(self.count + n, self.size)

    def get(self, name: str) -> torch.Tensor:
        """The filled rows of ``name`` in buffer order (all rows once full)."""
        return self.buffers[name][: self.count] if not self.full else self.buffers[name]

    def ordered(self, name: str) -> torch.Tensor:
        """The filled rows of ``name``, oldest first."""
        if not self.full:
            return self.buffers[name][: self.count]
        return torch.roll(self.buffers[name], shifts=-self.ptr, dims=0)

    def state_dict(self) -> dict:
        return {"buffers": {k: v.detach().clone() for k, v in self.buffers.items()},
                "ptr": torch.tensor(self.ptr), "count": torch.tensor(self.count)}

    def load_state_dict(self, state: dict) -> None:
        bufs = state["buffers"]
        if set(bufs) != set(self.buffers):
            raise ValueError(f"memory state has fields {sorted(bufs)}, expected {sorted(self.buffers)}")
        for name, v in bufs.items():
            if v.shape != self.buffers[name].shape:
                raise ValueError(f"memory field {name!r}: state {tuple(v.shape)}, "
                                 f"expected {tuple(self.buffers[name].shape)}")
            self.buffers[name].copy_(v)
        self.ptr, self.count = int(state["ptr"]), int(state["count"])


__all__ = ["FeatureMemory"]

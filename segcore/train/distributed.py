"""Multi-process data parallelism for the training loops (``torchrun``), one process per GPU.

Contract: a run gives the same result whatever the number of processes W (up to float
rounding), because every rank computes its slice of exactly the computation a single
process does on the whole global batch.

* **Launch.** ``init()`` reads ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` (what ``torchrun``
  sets). With ``WORLD_SIZE > 1`` it starts the process group (NCCL on CUDA, gloo on CPU);
  with none or ``WORLD_SIZE=1`` nothing is started and every helper below is the identity,
  so ``torchrun --nproc_per_node=1 script.py`` behaves exactly as ``python script.py``.
  The device is ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU
  (``SEGCORE_DEVICE=cpu`` or ``init(device="cpu")`` forces the CPU).
* **Data.** The global batch size stays the one of the config; each rank gets
  ``batch_size / W`` samples (``local_batch``: a one-line error when W does not divide it).
  ``infinite_loader(..., rank=, world_size=)`` builds the global batch of iteration t from
  (seed, epoch) exactly as one process does and hands rank r the contiguous slice
  ``[r*b, (r+1)*b)``. Like a ``DistributedSampler`` with ``set_epoch`` (a permutation seeded
  per epoch, every sample once per epoch over all ranks) but without its padding duplicates,
  and the union of the ranks' batches at iteration t IS the single-process batch t.
* **Gradients.** ``average_gradients`` all-reduces the gradients once per optimiser step
  (flat buckets, sum / W): what ``DistributedDataParallel`` computes, but explicit, because
  our steps call the student two or three times and call ``backward`` twice per step
  (``DistributedDataParallel``'s reducer wants one forward per backward). Every loss whose
  normaliser depends on the data (cross-entropy over non-ignored pixels, masked KL) divides
  by the count summed over ranks (``global_mean``), so the averaged gradient is the gradient
  of the single-process loss. Losses averaged over a fixed number of elements per sample
  need nothing (equal shards).
* **Batch-coupled layers.** ``prepare_model``: BatchNorm in training mode computes its
  statistics over the global batch (``torch.nn.SyncBatchNorm`` on CUDA, the differentiable
  ``GlobalBatchNorm`` of global_batch_layers.py on CPU / gloo); frozen BN (``freeze_bn``, eval mode) is left
  alone. ``Dropout2d`` draws the mask of the whole global batch from the (identically
  seeded) RNG on every rank and keeps its slice (``GlobalDropout2d``), so the masks, and the
  RNG streams, are those of the single process. Both replacements keep the state_dict keys.
* **Shared state.** Parameters, BN buffers, the EMA teacher (updated from identical
  students), prototypes (updated from ``all_gather_cat`` of every rank's class means, in rank
  order = global batch order) and queues are identical on every rank by construction;
  ``assert_same`` checks it.
* **Side effects.** Only rank 0 (``is_main()``) logs, writes the rolling resume state and
  the declared outputs. Every rank reads the resume state (the same file) at start.

Every collective here must be called by all ranks in the same order: call them from the
training step only, never under ``if is_main()``.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn


@dataclasses.dataclass(frozen=True)
class Context:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None        # None: no process group (one process)


_CTX: Context | None = None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init(device: str | None = None) -> Context:
    """Set up this process from the torchrun environment (idempotent); see the module doc."""
    global _CTX
    if _CTX is not None:
        return _CTX
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    want = (device or os.environ.get("SEGCORE_DEVICE") or "auto").lower()
    if want not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {want!r}")
    if want == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    use_cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) visible")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    backend = None
    if world > 1:
        backend = "nccl" if use_cuda else "gloo"
        if not dist.is_initialized():
            kwargs = {"device_id": dev} if use_cuda else {}
            dist.init_process_group(backend=backend, init_method="env://", **kwargs)
        rank, world = dist.get_rank(), dist.get_world_size()
    _CTX = Context(rank=rank, local_rank=local_rank, world_size=world, local_world_size=local_world,
                   device=dev, backend=backend)
    return _CTX


def shutdown() -> None:
    """Leave the process group (end of a script); the context goes back to one process."""
    global _CTX
    if _CTX is not None and _CTX.backend is not None and dist.is_initialized():
        dist.destroy_process_group()
    _CTX = None


def context() -> Context:
    """The current context; one CPU process when ``init`` was not called."""
    return _CTX if _CTX is not None else Context()


def world_size() -> int:
    return context().world_size


def rank() -> int:
    return context().rank


def is_main() -> bool:
    return context().rank == 0


def active() -> bool:
    """More than one process (the collectives below do something)."""
    return context().world_size > 1


def device() -> torch.device:
    return context().device


def barrier() -> None:
    if active():
        ctx = context()
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def run_script(main, name: str) -> int:
    """``preflight.run_script`` for scripts that may run under torchrun: a bad input
    (ValueError / OSError: the preflight checks, a batch the processes do not divide) is the
    same on every rank, so rank 0 alone prints its one line; the other ranks exit with the
    same status (2) silently. Any other exception keeps its traceback on every rank."""
    from ..preflight import run_script as _run_script

    if _env_int("RANK", 0) == 0:
        return _run_script(main, name)
    try:
        return int(main() or 0)
    except (ValueError, OSError):
        return 2


def threads_per_rank(threads: int) -> int:
    """CPU threads of one rank when a job of ``threads`` runs ``LOCAL_WORLD_SIZE`` processes."""
    return max(1, int(threads) // max(1, context().local_world_size))


def add_launch_arguments(parser) -> None:
    """The arguments every training script shares: CPU threads of the whole job, loader
    workers per process, device."""
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of the whole job (split over its processes)")
    add_workers_argument(parser)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="auto (default, or $SEGCORE_DEVICE): cuda:LOCAL_RANK when CUDA is available, else the CPU")


def add_workers_argument(parser) -> None:
    """``--workers``, of the training scripts and of the inference ones (evaluation, pseudo-labels,
    prototypes); ``loader_workers`` resolves it."""
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers per process (default: 0 on the CPU, up to 8 per GPU on CUDA)")


def launch(run, args) -> None:
    """Run ``run(args)`` in this process's share of the job: under torchrun the process group
    and the device of LOCAL_RANK, under plain python one process; always shut down after."""
    init(args.device)
    try:
        torch.set_num_threads(threads_per_rank(args.threads))
        run(args)
    finally:
        shutdown()


def loader_workers(requested: int | None = None, on: torch.device | str | None = None) -> int:
    """DataLoader workers per rank: ``requested`` when given (>= 0); else 0 on the CPU (the
    cores compute) and, on CUDA, up to 8 of the cores this rank may use. ``on``: the device the
    batches go to (default: this process's, ``device()``; a script outside ``launch`` names it)."""
    if requested is not None and requested >= 0:
        return int(requested)
    if torch.device(on if on is not None else device()).type != "cuda":
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cores = os.cpu_count() or 1
    return max(1, min(8, cores // max(1, context().local_world_size) - 1))


# ----------------------------------------------------------------------------- batch sharding

def local_batch(global_batch: int, what: str = "batch_size") -> int:
    """This rank's share of a global batch; a one-line error when the world does not divide it."""
    w = world_size()
    if global_batch % w:
        raise ValueError(f"{what} {global_batch} is not divisible by the number of processes {w} "
                         f"(the batch size is global: choose a process count that divides it)")
    return global_batch // w


def rank_slice(global_batch: int) -> slice:
    """The part of a global batch (samples in global order) that belongs to this rank."""
    b = local_batch(global_batch)
    return slice(rank() * b, (rank() + 1) * b)


def global_rand(local_shape, device=None, generator: torch.Generator | None = None,
                dtype=torch.float32) -> torch.Tensor:
    """``torch.rand`` for per-sample random draws (pixel sampling, masks) made world-size
    independent: draws the tensor of the GLOBAL batch (first dim x W) from the RNG, which is
    in the same state on every rank, and returns this rank's rows, i.e. exactly the rows a
    single process would use for these samples. One process: ``torch.rand(local_shape)``."""
    shape = tuple(int(v) for v in local_shape)
    n, w = shape[0], world_size()
    full = torch.rand((n * w, *shape[1:]), generator=generator, device=device, dtype=dtype)
    return full if w == 1 else full[rank() * n:(rank() + 1) * n]


# ----------------------------------------------------------------------------- collectives

def _check_dtype(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.uint8) if t.dtype == torch.bool else t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (a new tensor; no gradient). Identity with one process."""
    if not active():
        return t
    out = _check_dtype(t.detach()).clone()
    dist.all_reduce(out)
    return out.to(t.dtype)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (a new tensor; no gradient). Identity with one process."""
    if not active():
        return t
    out = t.detach().to(torch.promote_types(t.dtype, torch.float32)).clone()
    dist.all_reduce(out)
    return out.div_(world_size())


class _SumAllReduce(torch.autograd.Function):
    """Differentiable sum over ranks: the backward sums the incoming gradients over ranks too
    (each rank's loss depends on every rank's summand)."""

    @staticmethod
    def forward(ctx, t):
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over ranks (identity with one process)."""
    return _SumAllReduce.apply(t) if active() else t


class _GatherCat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, dim):
        ctx.dim, ctx.size = dim, t.shape[dim]
        parts = [torch.empty_like(t) for _ in range(world_size())]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss may depend on this rank's part
        return grad.narrow(ctx.dim, rank() * ctx.size, ctx.size), None


def all_gather_cat(t: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate every rank's ``t`` (same shape on every rank) along ``dim``, in rank order,
    i.e. in global-batch order for per-sample tensors. Differentiable when ``t`` requires a
    gradient (the backward sums the gradients of all ranks' uses, then takes this rank's
    part). Bool tensors are fine. Identity with one process."""
    if not active():
        return t
    if t.dtype == torch.bool:
        return all_gather_cat(t.to(torch.uint8), dim).bool()
    if t.requires_grad and torch.is_grad_enabled():
        return _GatherCat.apply(t, dim)
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.detach().contiguous())
    return torch.cat(parts, dim=dim)


def global_mean(total: torch.Tensor, count: torch.Tensor, min_count: float | None = None,
                eps: float = 0.0) -> torch.Tensor:
    """``total / count`` of a loss whose normaliser depends on the data, made global.

    ``total`` and ``count`` are this rank's sum and number of elements (``count`` needs no
    gradient). Returns ``W * total / (clamp(sum_r count_r, min_count) + eps)``: the mean over
    ranks of this value (what the gradient average sees, and what ``reduce_logs`` prints) is
    ``sum_r total_r / sum_r count_r``, the single-process loss. One process:
    ``total / (clamp(count, min_count) + eps)`` exactly.
    """
    count = all_reduce_sum(count)
    if min_count is not None:
        count = count.clamp(min=min_count)
    if eps:
        count = count + eps
    if active():
        return total * world_size() / count
    return total / count


def reduce_logs(logs: dict) -> dict:
    """Logged values averaged over ranks (one collective; call on every rank at log time)."""
    if not active() or not logs:
        return logs
    keys = list(logs)
    values = torch.stack([torch.as_tensor(logs[k], dtype=torch.float32, device=device()).detach().float().reshape(())
                          for k in keys])
    values = all_reduce_mean(values)
    return dict(zip(keys, values.unbind(0)))


def average_gradients(params: Iterable[torch.Tensor], bucket_bytes: int = 32 << 20) -> None:
    """Average the ``.grad`` of ``params`` over ranks (in place), in flat buckets.

    Parameters without a gradient are skipped; the set of those is the same on every rank
    (same graph), which keeps the collectives aligned. Call after the last ``backward`` of
    the step and before ``optimizer.step()``.
    """
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    w = float(world_size())
    bucket, size = [], 0
    for g in grads + [None]:
        if g is not None and (not bucket or (g.dtype == bucket[0].dtype and size + g.numel() * g.element_size()
                                             <= bucket_bytes)):
            bucket.append(g)
            size += g.numel() * g.element_size()
            continue
        if bucket:
            flat = torch.cat([b.reshape(-1) for b in bucket])
            dist.all_reduce(flat)
            flat.div_(w)
            offset = 0
            for b in bucket:
                b.copy_(flat[offset:offset + b.numel()].view_as(b))
                offset += b.numel()
        bucket, size = ([g], g.numel() * g.element_size()) if g is not None else ([], 0)


def broadcast_module(*modules: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (a safety net at start; the ranks
    build / load identical models anyway)."""
    if not active():
        return
    with torch.no_grad():
        for m in modules:
            for t in list(m.parameters()) + list(m.buffers()):
                dist.broadcast(t.data, src=0)


def broadcast_tensor(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``t`` on every rank (in place; returned)."""
    if active():
        dist.broadcast(t.data, src=0)
    return t


def assert_same(*items, what: str = "state") -> None:
    """Raise when a tensor / module state differs between ranks (a checksum per tensor)."""
    if not active():
        return
    tensors = []
    for item in items:
        if isinstance(item, nn.Module):
            tensors += [t.detach() for t in item.state_dict().values() if torch.is_tensor(t)]
        elif torch.is_tensor(item):
            tensors.append(item.detach())
    sums = torch.stack([t.double().sum() for t in tensors] + [t.double().abs().sum() for t in tensors])
    sums = sums.to(device())
    ref = broadcast_tensor(sums.clone())
    bad = all_reduce_sum((ref != sums).any().to(torch.int32).reshape(1))  # every rank raises
    if int(bad.item()):
        raise RuntimeError(f"{what} differs between ranks (checksums of rank 0 and of another rank differ)")


def prepare_model(model: nn.Module) -> nn.Module:
    """Make ``model``'s batch-coupled layers global (see the module doc); in place where the
    model itself is not a BN / dropout layer. Identity with one process. Call BEFORE the EMA
    teacher copies the student and before the optimiser is built (same parameter objects are
    kept, so either order works)."""
    if not active():
        return model
    from .global_batch_layers import make_global  # the layers use this module's collectives

    return make_global(model, device().type == "cuda")


__all__ = [
    "Context", "init", "shutdown", "run_script", "context", "world_size", "rank", "is_main", "active", "device",
    "barrier", "threads_per_rank", "add_workers_argument", "loader_workers", "local_batch", "rank_slice",
    "global_rand", "all_reduce_sum",
    "all_reduce_mean", "sum_over_ranks", "all_gather_cat", "global_mean", "reduce_logs", "average_gradients",
    "broadcast_module", "broadcast_tensor", "assert_same", "prepare_model", "add_launch_arguments", "launch",
]

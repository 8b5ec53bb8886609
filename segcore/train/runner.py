"""The one training loop. A method brings its parts and its step; the runner brings the rest.

A method's ``run(job)`` builds a ``Training`` (networks, optimisers, extra state such as
prototypes, a memory or a discriminator, the batches and one step) and hands it to
``run_training``, which does what every loop does:

1. start-up (``common.start_run``): the processes must divide the global batch (one-line error
   before any work), device and precision, rank-0 log, every RNG seeded;
2. ``build(accel, log)``: the method's parts;
3. the rolling resume state (``resume.RollingState`` under ``workdir``, fingerprinted by the
   job's settings): restored when it belongs to this job, then the parts are broadcast from
   rank 0 (DDP) and optionally ``torch.compile``d;
4. the loop: the LR schedule (``schedule.lr_factor``) on every optimiser, one ``step`` per
   iteration, progress lines with rate / elapsed / ETA (``segcore.progress``), a rolling
   snapshot every ``checkpoint_every`` iterations; with ``best`` (``segcore.train.best``),
   validation on the evaluation split every ``val_every`` iterations and at the end, keeping
   the best checkpoint;
5. the end: the parts checked identical on every rank, ``save`` on rank 0 (the declared outputs,
   written atomically), the best checkpoint and its metrics, the resume state removed.

Data order and views are pure functions of (seed, iteration) (``datasets.infinite_loader``) and
the snapshot holds the RNG states, so a resumed run continues bit-identically on the CPU.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..progress import Meter
from . import distributed as D
from .best_checkpoint import BestCheckpoint
from .common import Accel, freeze_bn, start_run
from .resume import RollingState, fingerprint
from .rng import get_rng_state, set_rng_state
from .schedule import lr_factor, set_lr

#: part of every resume fingerprint: a state written by another version of this loop is not reused
RUNNER_VERSION = 2


@dataclasses.dataclass
class Training:
    """What a method hands the runner."""

    model: torch.nn.Module                   # the network being trained (train mode, ``freeze_bn``, validation)
    parts: dict                              # resumable state: name -> object with state_dict() / load_state_dict()
    optimizers: list                         # each param group's lr = its ``initial_lr`` x the schedule factor
    batches: Callable[[int], Iterator]       # batches(start) -> the step's inputs from iteration ``start`` on
    step: Callable[[Any], dict]              # one iteration on one item of ``batches``; detached loss tensors
    save: Callable[[Finished], None]       # writes the declared outputs (rank 0, once, at the end)
    # modules / tensors made identical on every rank after restore, and checked identical at the
    # end; either may be a function returning them (for state that restore or a step replaces)
    broadcast: tuple | Callable[[], tuple] = ()
    same: tuple | Callable[[], tuple] = ()
    compile: tuple = ()                      # modules to torch.compile (``compile`` option)
    # checkpoint(path, meta): writes ``model`` now as a checkpoint with ``meta`` added (best-on-val)
    checkpoint: Callable[[str, dict], None] | None = None
    lr_factor: Callable[[int], float] | None = None  # the schedule; default: ``schedule.lr_factor(options)``


@dataclasses.dataclass
class Finished:
    """What the loop leaves for ``save``: the iteration count and the logged history."""

    iterations: int
    history: list        # [[iteration, {name: mean over the logging window}], ...]
    validations: list    # [[iteration, metrics], ...]


class LogWindow:
    """Means of the step's losses over a logging window, kept on the device (no host sync per
    step); under DDP the means are averaged over the ranks when a line is due."""

    def __init__(self):
        self.sums: dict = {}
        self.count = 0

    def add(self, logs: dict) -> None:
        for k, v in logs.items():
            v = torch.as_tensor(v).detach()
            if k not in self.sums:
                self.sums[k] = torch.zeros((), dtype=torch.float64, device=v.device)
            self.sums[k] += v
        self.count += 1

    def state_dict(self) -> dict:
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "count": self.count}

    def load_state_dict(self, state: dict, device) -> None:
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.count = int(state["count"])

    def means(self) -> dict:
        means = D.reduce_logs({k: s / max(self.count, 1) for k, s in self.sums.items()})
        self.sums, self.count = {}, 0
        return {k: float(v) for k, v in means.items()}


def _items(items) -> tuple:
    return tuple(items()) if callable(items) else tuple(items)


def train_mode(model: torch.nn.Module, options: dict) -> None:
    """Train mode, with BatchNorm frozen when the stage says so (the official warm-up)."""
    model.train()
    if options.get("freeze_bn"):
        freeze_bn(model)


def run_training(build: Callable[[Accel, Callable], Training], *, options: dict, seed: int, workdir: str,
                 settings, device=None, log=print, on_iteration=None, best=None) -> Finished:
    """Train what ``build`` makes. ``settings`` (JSON-able: the job without its machine fields)
    fingerprints the resume state; ``on_iteration(done, logs)`` is called after each iteration,
    once that iteration's snapshot is written (tests stop a run there); ``best``, a
    ``segcore.train.best.BestOnVal`` (not imported here: only the stages that validate depend on
    the evaluation code): validate and keep the best checkpoint (``Training.checkpoint`` writes it)."""
    accel, log = start_run(options, seed, device, log)
    selector = BestCheckpoint(workdir, best.key, best.val["split"]) if best is not None else None
    tr = build(accel, log)
    if selector is not None and tr.checkpoint is None:
        raise TypeError("best-on-val needs the method's Training.checkpoint")
    state = RollingState(Path(workdir) / "resume.pt", options["checkpoint_every"],
                         fingerprint([settings, {"runner": RUNNER_VERSION}]))
    start, history, validations, window = 0, [], [], LogWindow()
    saved = state.load()
    if saved is not None:
        for name, part in tr.parts.items():
            part.load_state_dict(saved[name])
        set_rng_state(saved["rng"])
        start, history, validations = int(saved["iteration"]), saved["history"], saved["validations"]
        window.load_state_dict(saved["log_window"], accel.device)  # (rank 0's: only the log lines differ)
        log(f"resumed from {state.path} at iteration {start}")
    if selector is not None:
        selector.load_state_dict(saved.get("best") if saved is not None else None)
    for part in _items(tr.broadcast):
        if isinstance(part, torch.Tensor):
            D.broadcast_tensor(part)
        else:
            D.broadcast_module(part)
    accel.compiled(*tr.compile)

    batches = tr.batches(start)
    total = int(options["iterations"])
    factor = tr.lr_factor or (lambda it: lr_factor(it, options))
    train_mode(tr.model, options)
    meter = Meter(total, start, every=options["log_every"])
    val_every = best.val_every if best is not None else 0  # 0: the last iteration only
    for it in range(start, total):
        f = factor(it)
        for opt in tr.optimizers:
            set_lr(opt, f)
        logs = tr.step(next(batches))
        window.add(logs)
        done = it + 1
        if meter.due(done):
            means = window.means()
            history.append([done, means])
            lr = tr.optimizers[0].param_groups[0]["lr"]
            log(meter.line(done, " ".join([f"lr {lr:.2e}"] + [f"{k} {v:.4f}" for k, v in means.items()])))
        if selector is not None and ((val_every and done % val_every == 0) or done == total):
            metrics = best.validate(tr.model, accel.device)
            validations.append([done, {k: metrics[k] for k in (selector.key, "mIoU13") if k in metrics}])
            new = selector.consider(done, metrics, tr.checkpoint)
            log(f"validation at {done}: {selector.key} {metrics[selector.key] or float('nan'):.2f}"
                + (" (best so far)" if new else f" (best {selector.iteration})"))
            train_mode(tr.model, options)
        if state.due(done) and done < total:
            if D.is_main():
                state.save({"iteration": done, "rng": get_rng_state(), "history": history,
                            "validations": validations, "log_window": window.state_dict(),
                            "best": selector.state_dict() if selector is not None else None,
                            **{k: p.state_dict() for k, p in tr.parts.items()}})
            if selector is not None:
                selector.prune()  # the snapshot now names the current best file
        if on_iteration is not None:
            on_iteration(done, logs)

    finished = Finished(total, history, validations)
    D.assert_same(*_items(tr.same), what=", ".join(tr.parts))
    if D.is_main():
        tr.save(finished)
        if selector is not None:
            selector.finish(best.model_out, best.metrics_out)
        state.clear()
    return finished

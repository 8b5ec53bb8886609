"""The best validated checkpoint of a training job, kept under its workdir until the end
(best-on-val: ``segcore.train.best``). Apart from the validation so that the runner, which every
training job imports, does not depend on the evaluation code (``segcore.metrics``): only the
stages that validate do.

Each new best goes to ``<workdir>/best_<iteration>.pt``. The rolling resume state records which
file is the current one, so a job killed after a new best resumes from its snapshot with the
file that snapshot knew (files the killed run wrote later are removed); at the end the current
file is copied into the declared output and the rest removed.
"""
from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

from ..atomic import atomic_path, write_json
from . import distributed as D


class BestCheckpoint:
    """The best validated checkpoint so far, kept under ``workdir`` until the end."""

    def __init__(self, workdir, key: str, split: str):
        self.dir = Path(workdir)
        self.key, self.split = key, split
        self.iteration: int | None = None
        self.metrics: dict | None = None
        self.validated: list[int] = []

    def _path(self, iteration: int) -> Path:
        return self.dir / f"best_{iteration:08d}.pt"

    def _score(self, metrics: dict) -> float:
        value = metrics.get(self.key)
        return -math.inf if value is None else float(value)

    def consider(self, iteration: int, metrics: dict, write: Callable[[str, dict], None]) -> bool:
        """Keep the model now if ``metrics`` are at least the best so far (the official
        ``>=``: a tie goes to the later checkpoint). ``write(path, meta)`` saves it (rank 0)."""
        self.validated.append(iteration)
        if self.metrics is not None and self._score(metrics) < self._score(self.metrics):
            return False
        if D.is_main():
            self.dir.mkdir(parents=True, exist_ok=True)
            write(str(self._path(iteration)), {"iterations": iteration, "selected": self.selection(iteration)})
        self.iteration, self.metrics = iteration, metrics
        return True

    def selection(self, iteration: int | None = None) -> dict:
        """How the checkpoint was chosen (in its meta and its metrics file)."""
        return {"on": f"the evaluation split ({self.split})", "metric": self.key,
                "iteration": self.iteration if iteration is None else iteration,
                "validated_at": list(self.validated)}

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "metrics": self.metrics, "validated": list(self.validated)}

    def load_state_dict(self, state: dict | None) -> None:
        """Resume with the snapshot's best (None: a fresh start); every other file is removed."""
        state = state or {"iteration": None, "metrics": None, "validated": []}
        self.iteration, self.metrics = state["iteration"], state["metrics"]
        self.validated = list(state["validated"])
        self.prune()

    def prune(self) -> None:
        """Remove the files no snapshot refers to (rank 0)."""
        if not D.is_main():
            return
        keep = self._path(self.iteration) if self.iteration is not None else None
        for f in self.dir.glob("best_*.pt"):
            if f != keep:
                f.unlink()

    def finish(self, model_out: str, metrics_out: str) -> None:
        """Move the best file into ``model_out`` and write its metrics (rank 0)."""
        if not D.is_main():
            return
        src = self._path(self.iteration)
        with atomic_path(model_out) as tmp:  # a copy: the workdir may be on another file system
            shutil.copyfile(src, tmp)
        write_json(metrics_out, {**self.metrics, "checkpoint": {"path": model_out, "iterations": self.iteration},
                                 "selected": self.selection()})
        self.iteration = None
        self.prune()

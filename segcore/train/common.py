"""Small pieces every training loop shares."""
from __future__ import annotations

import time

import torch

from ..data.datasets import SegmentationDataset
from ..data.transforms import WeakView
from ..models.deeplabv2 import param_groups
from .rng import get_rng_state, set_rng_state


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


def weak_view(opts) -> WeakView:
    return WeakView(base_width=opts["base_width"], crop=tuple(opts["crop"]), scale_range=tuple(opts["scale_range"]),
                    flip_p=opts["flip"])


def labelled_set(spec: dict, num_classes: int, opts) -> SegmentationDataset:
    """A labelled set ({"manifest", "split", "resize"}) seen through the weak view."""
    return SegmentationDataset(spec["manifest"], spec["split"], num_classes, resize=spec.get("resize"),
                               transform=weak_view(opts))


def image_set(spec: dict, num_classes: int) -> SegmentationDataset:
    """The images of a set without labels or view (target sets; the views come later)."""
    return SegmentationDataset(spec["manifest"], spec["split"], num_classes, resize=spec.get("resize"),
                               with_labels=False)


def restore(state, parts: dict, log=print) -> int:
    """Load a rolling resume state into ``parts`` (name -> object with load_state_dict) and the
    RNGs; return the iteration to start from (0 when there is nothing to resume)."""
    saved = state.load()
    if saved is None:
        return 0
    for name, part in parts.items():
        part.load_state_dict(saved[name])
    set_rng_state(saved["rng"])
    log(f"resumed from {state.path} at iteration {saved['iteration']}")
    return saved["iteration"]


def snapshot(state, iteration: int, parts: dict) -> None:
    state.save({"iteration": iteration, "rng": get_rng_state(), **{k: p.state_dict() for k, p in parts.items()}})

"""Small pieces every training loop shares: optimiser, BN freezing, data sets, the job's
settings, and the device side (``Accel``: device placement, bf16 autocast, channels_last,
torch.compile)."""
from __future__ import annotations

import contextlib
import dataclasses

import torch

from ..data.datasets import SegmentationDataset, infinite_loader, open_sets
from ..data.transforms import WeakView
from ..models.checkpoint import load_model
from ..models.deeplabv2 import sgd
from . import distributed as D
from .ema import EMATeacher
from .rng import seed_everything


def make_sgd(model, opts) -> torch.optim.SGD:
    return sgd(model, opts["lr"], opts["head_lr_mult"], momentum=opts["momentum"],
               weight_decay=opts["weight_decay"], repeat_params_official=opts.get("repeat_params_official", False))


def freeze_bn(model) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


def main_log(log):
    """``log`` on rank 0, a no-op on the other ranks."""
    return log if D.is_main() else (lambda *a, **k: None)


@dataclasses.dataclass
class Accel:
    """Where and how the step runs. ``amp`` (bf16 autocast) and ``channels_last`` act on CUDA
    only (no-ops on the CPU); ``compile`` (torch.compile of the networks) on any device."""

    device: torch.device
    amp: bool = False
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def from_options(cls, opts: dict, device=None) -> Accel:
        dev = torch.device(device) if device is not None else D.device()
        cuda = dev.type == "cuda"
        return cls(dev, amp=cuda and bool(opts.get("amp", True)),
                   channels_last=cuda and bool(opts.get("channels_last", True)),
                   compile=bool(opts.get("compile", False)))

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        """bf16 autocast of the forward passes and losses (no GradScaler needed for bf16);
        the prototype distances and class means run in float32 inside it by construction."""
        if self.amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def place(self, *modules):
        """Move modules to the device (channels_last weights on CUDA when enabled)."""
        for m in modules:
            m.to(self.device)
            if self.channels_last:
                m.to(memory_format=torch.channels_last)
        return modules[0] if len(modules) == 1 else modules

    def compiled(self, *modules) -> None:
        """torch.compile the modules in place (same parameters and state_dict keys)."""
        if self.compile:
            for m in modules:
                m.compile()

    def batch(self, batch: dict) -> dict:
        """The batch's tensors on the device (asynchronous from the loader's pinned memory);
        nested dicts (view parameters, read on the host by the warps) stay on the CPU."""
        out = {}
        for k, v in batch.items():
            if torch.is_tensor(v) and v.device != self.device:
                v = v.to(self.device, non_blocking=True)
                if self.channels_last and v.dim() == 4 and v.is_floating_point():
                    v = v.contiguous(memory_format=torch.channels_last)
            out[k] = v
        return out

    def loader_kwargs(self, num_workers: int) -> dict:
        return {"num_workers": num_workers, "pin_memory": self.cuda, "rank": D.rank(), "world_size": D.world_size()}


def weak_view(opts) -> WeakView:
    return WeakView(base_width=opts["base_width"], crop=tuple(opts["crop"]), scale_range=tuple(opts["scale_range"]),
                    flip_p=opts["flip"])


def labelled_set(spec, num_classes: int, opts):
    """A labelled set ({"manifest", "split", "resize"}, or a list of them: a multi-source
    chain's union) seen through the weak view."""
    return open_sets(spec, num_classes, transform=weak_view(opts))


def image_set(spec: dict, num_classes: int) -> SegmentationDataset:
    """The images of a set without labels or view (target sets; the views come later)."""
    return SegmentationDataset(spec["manifest"], spec["split"], num_classes, resize=spec.get("resize"),
                               with_labels=False)


def job_settings(job) -> dict:
    """A job's fields without its machine settings (where it writes its rolling state, loader
    workers, device): what fingerprints its resume state."""
    return dataclasses.asdict(job) | {"workdir": None, "num_workers": None, "device": None}


def source_target_batches(src, tgt, opts, seed: int, start: int, accel, num_workers=None):
    """The source and target iterators of a self-training loop (seeds ``seed`` and ``seed + 1``),
    resumed at iteration ``start``."""
    loader = accel.loader_kwargs(num_workers)
    return (infinite_loader(src, opts["batch_size"], seed, start=start, **loader),
            infinite_loader(tgt, opts["batch_size"], seed + 1, start=start, **loader))


def start_run(opts, seed: int, device=None, log=print):
    """What every training loop does first: check that the processes divide the global batch
    (one-line error before any work), pick the device and precision, keep the log to rank 0,
    seed every RNG. Returns ``(accel, log)``."""
    D.local_batch(opts["batch_size"])
    accel = Accel.from_options(opts, device)
    log = main_log(log)
    seed_everything(seed)
    return accel, log


def student_with_ema_teacher(init: str, num_classes: int, opts, accel):
    """The self-training student loaded from ``init`` (made DDP-ready and placed BEFORE the EMA
    teacher copies it) and its EMA teacher. Returns ``(student, meta, teacher)``."""
    student, meta = load_model(init, expect_num_classes=num_classes)
    student = accel.place(D.prepare_model(student))
    teacher = EMATeacher(student, momentum=opts["ema_momentum"], train_mode=opts["ema_train_mode"])
    return student, meta, teacher

"""Self-supervised SimCLR pretraining of the DeepLabV2 backbone (the ``simclr`` rule).

ProDA stages 2 and 3 start the student from SimCLRv2 ResNet-101 weights (a file in
torchvision key names, read as ``torch.load(path)["state_dict"]``, plus ``bn_pretrain``;
docs/methods/proda.md). When no such file is configured (the CPU demo), this loop
makes one: it trains conv1 .. layer4 + ``bn_pretrain`` of a ``build_deeplabv2(num_classes,
arch, bn_clr=True)`` model with the NT-Xent loss on two SimCLR views of the target (and
source) images, and writes

    {"state_dict": <backbone tensors in the DeepLabV2 key names: conv1.*, bn1.*,
                    layer1-4.*, bn_pretrain.*>,
     "meta": {<plain Python values>}}

atomically, readable with ``torch.load(weights_only=True)`` and by
``segcore.models.weights.load_simclr_backbone``. The projection head and ``layer5`` are not
written.

Optimiser: AdamW (no LARS) with a linear warm-up and cosine decay. On the demo (the "small"
preset, 64x128 images, batch 16, a few hundred iterations, one CPU thread) it lowers the
loss much faster than SGD with momentum at small batch sizes, where SimCLR's LARS + large
batch recipe does not apply; ``optimizer: sgd`` is available (momentum ``momentum``).

Initialisation: the backbone starts from the official DeepLabV2 init, N(0, 0.01) convs
(``init: official``), like every other network of the demo, with a peak AdamW lr of 2e-4
(1e-3 moves these small weights by a tenth per step and the loss stalls). Scale matters
downstream: behind BatchNorm a conv's effective learning rate goes as lr / |w|^2, and the
distillation stages use one lr for students from SimCLR and from checkpoints. torchvision's
kaiming init (``init: kaiming``) leaves weights ~8x larger (rms 0.17 against 0.02), so with
the stage-2 lr such a student barely moves: on the demo (GTA5 chain, seed 1337, same teacher
and labels) stage 2 / stage 3 reached 23.3 / 22.9 mIoU from a kaiming SimCLR and 25.5 / 25.4
from an official-init one, against 24.4 for the stage-1 teacher.

Options: ``DEFAULT_OPTIONS`` below; ``job.options`` overrides them, and an unknown key is an
error (a misspelt option would otherwise be silently ignored).

Data order and views are pure functions of (seed, iteration) (``infinite_loader`` hands each
sample a view seed), and the rolling resume state in ``workdir`` holds the model, head,
optimiser, RNG states and loss history, so a resumed run continues exactly where the
interrupted one stopped.

Data parallel (``segcore.train.distributed``): each rank takes its slice of the global batch
(``batch_size`` is global); the projections of all ranks are all-gathered (differentiably)
so that the NT-Xent negatives are the whole global batch, as with one process; BN uses the
global batch's statistics (SimCLR's "global BN"); gradients are averaged; rank 0 logs and
writes. bf16 autocast / channels_last on CUDA (``amp``, ``channels_last``), optional
``compile``.
"""
from __future__ import annotations

import dataclasses
import math
import numbers

import torch

from ..atomic import save_torch
from ..data.datasets import SegmentationDataset, infinite_loader
from ..methods.simclr import Backbone, SimCLRAugment, SimCLRNet, nt_xent
from ..models.deeplabv2 import build_deeplabv2
from . import distributed as D
from .common import job_settings
from .runner import Training, run_training

DEFAULT_OPTIONS: dict = {
    "iterations": 300,
    "batch_size": 16,
    "optimizer": "adamw",         # "adamw" | "sgd"
    "lr": 2e-4,                   # peak learning rate (after warm-up)
    "weight_decay": 1e-4,
    "momentum": 0.9,              # sgd only
    "warmup": 0.05,               # fraction of the iterations with a linear warm-up
    "temperature": 0.2,
    "crop": [128, 64],            # (W, H) of the views
    "scale_range": [0.2, 1.0],    # random resized crop: fraction of the image area
    "strength": 0.8,              # colour jitter strength s
    "blur_p": 0.5,
    "proj_layers": 3,             # SimCLRv2: 3
    "proj_hidden": None,          # None: the backbone width
    "proj_dim": 128,
    "bn_clr": True,               # train (and write) bn_pretrain after layer4
    "init": "official",           # backbone init: "kaiming" (torchvision ResNet) | "official" (N(0, 0.01))
    "checkpoint_every": 100,
    "log_every": 10,
    "amp": True,                  # bf16 autocast on CUDA (no-op on the CPU)
    "channels_last": True,        # channels_last on CUDA (no-op on the CPU)
    "compile": False,             # torch.compile the network
}


@dataclasses.dataclass
class SimCLRJob:
    images: list              # [{"manifest", "split", "resize"}, ...]: target (and source) images
    arch: str
    num_classes: int          # only to build the DeepLabV2 whose backbone is trained
    options: dict             # overrides of DEFAULT_OPTIONS
    seed: int
    out: str
    workdir: str
    num_workers: int = 0
    device: str | None = None     # None: the process's device (distributed.device())


def merged_options(options: dict) -> dict:
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(f"unknown SimCLR option(s): {', '.join(unknown)} (known: {', '.join(DEFAULT_OPTIONS)})")
    opts = dict(DEFAULT_OPTIONS, **options)
    if opts["init"] not in ("kaiming", "official"):
        raise ValueError(f"SimCLR init must be 'kaiming' or 'official', got {opts['init']!r}")
    if opts["optimizer"] not in ("adamw", "sgd"):
        raise ValueError(f"SimCLR optimizer must be 'adamw' or 'sgd', got {opts['optimizer']!r}")
    return opts


class TwoViewImages(torch.utils.data.Dataset):
    """The images of several manifests/splits as one dataset; item ``(index, view_seed)`` ->
    ``{"view1", "view2", "index"}``, the views drawn from a generator seeded with ``view_seed``."""

    def __init__(self, specs: list, num_classes: int, augment: SimCLRAugment):
        if not specs:
            raise ValueError("SimCLR pretraining needs at least one image set")
        self.sets = [SegmentationDataset(s["manifest"], s.get("split"), num_classes, resize=s.get("resize"),
                                         with_labels=False) for s in specs]
        self.offsets = [0]
        for ds in self.sets:
            self.offsets.append(self.offsets[-1] + len(ds))
        self.augment = augment

    def __len__(self) -> int:
        return self.offsets[-1]

    def load_image(self, index: int) -> torch.Tensor:
        for k, ds in enumerate(self.sets):
            if index < self.offsets[k + 1]:
                return ds.load_image(index - self.offsets[k])
        raise IndexError(index)

    def __getitem__(self, item):
        index, view_seed = (int(item[0]), int(item[1])) if isinstance(item, (tuple, list)) else (int(item), None)
        gen = None if view_seed is None else torch.Generator().manual_seed(view_seed)
        v1, v2 = self.augment.pair(self.load_image(index), gen)
        return {"view1": v1, "view2": v2, "index": index}


def lr_factor(iteration: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` iterations, then cosine decay to 0 at ``total``."""
    if iteration < warmup:
        return (iteration + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (iteration - warmup) / span)))


@torch.no_grad()
def kaiming_init(model: torch.nn.Module) -> None:
    """torchvision's ResNet init for the backbone: conv weights kaiming-normal (fan_out, ReLU),
    BatchNorm 1/0. The official N(0, 0.01) conv init makes every BN-normalised layer's weights
    tiny, so any optimiser step is a huge relative change and the contrastive loss diverges."""
    for m in Backbone(model).modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)


def build_optimizer(net: torch.nn.Module, opts: dict) -> torch.optim.Optimizer:
    params = [p for p in net.parameters() if p.requires_grad]
    if opts["optimizer"] == "sgd":
        opt = torch.optim.SGD(params, lr=opts["lr"], momentum=opts["momentum"], weight_decay=opts["weight_decay"])
    else:
        opt = torch.optim.AdamW(params, lr=opts["lr"], weight_decay=opts["weight_decay"])
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    return opt


def augment_from(opts: dict) -> SimCLRAugment:
    return SimCLRAugment(tuple(opts["crop"]), scale=tuple(opts["scale_range"]), strength=opts["strength"],
                         blur_p=opts["blur_p"])


def backbone_state_dict(net: SimCLRNet) -> dict:
    """The backbone tensors in the DeepLabV2 key names, detached CPU copies."""
    return {k: v.detach().to("cpu", copy=True) for k, v in net.backbone.state_dict().items()}


def train_step(net, optimizer, batch: dict, opts: dict, accel) -> dict:
    """One NT-Xent step on a batch of view pairs (on the device)."""
    x = torch.cat([batch["view1"], batch["view2"]])
    with accel.autocast():
        z1, z2 = net(x).chunk(2)
    # the global batch's projections (rank order = global order), in float32: every rank
    # computes the single-process loss; the gather's backward sums the ranks' gradients
    loss = nt_xent(D.all_gather_cat(z1.float()), D.all_gather_cat(z2.float()), opts["temperature"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    D.average_gradients(net.parameters())
    optimizer.step()
    return {"nt_xent": loss.detach()}


def run(job: SimCLRJob, log=print, on_iteration=None) -> dict:
    """Pretrain, write ``job.out`` and return its meta. ``on_iteration(done, logs)`` is called
    after every iteration (after the resume state of that iteration was written)."""
    opts = merged_options(job.options)
    total = int(opts["iterations"])
    warmup = int(round(opts["warmup"] * total))
    out = {}

    def build(accel, log) -> Training:
        model = build_deeplabv2(job.num_classes, job.arch, bn_clr=bool(opts["bn_clr"]))
        if opts["init"] == "kaiming":
            kaiming_init(model)
        net = SimCLRNet(model, hidden=opts["proj_hidden"], out_dim=opts["proj_dim"], layers=opts["proj_layers"])
        net = accel.place(D.prepare_model(net))
        optimizer = build_optimizer(net, opts)
        data = TwoViewImages(job.images, job.num_classes, augment_from(opts))
        out["num_images"] = len(data)
        return Training(
            model=net, parts={"net": net, "optimizer": optimizer}, optimizers=[optimizer],
            batches=lambda start: infinite_loader(data, opts["batch_size"], job.seed, start=start,
                                                  **accel.loader_kwargs(job.num_workers)),
            step=lambda batch: train_step(net, optimizer, accel.batch(batch), opts, accel),
            save=lambda done: save_torch(job.out, {"state_dict": backbone_state_dict(net), "meta": meta(done)}),
            lr_factor=lambda it: lr_factor(it, total, warmup), broadcast=(net,), compile=(net,), same=(net,))

    def meta(finished) -> dict:
        history = [[done, logs["nt_xent"]] for done, logs in finished.history]
        return _plain({
            "stage": "simclr", "arch": job.arch, "num_classes": int(job.num_classes), "bn_clr": bool(opts["bn_clr"]),
            "iterations": total, "seed": int(job.seed), "images": [dict(s) for s in job.images],
            "num_images": out["num_images"], "options": opts, "loss_history": history,
            "loss_first": history[0][1] if history else None, "loss_last": history[-1][1] if history else None,
        })

    finished = run_training(build, options=opts, seed=job.seed, workdir=job.workdir,
                            settings=job_settings(job) | {"options": opts}, device=job.device, log=log,
                            on_iteration=on_iteration)
    return meta(finished)


def _plain(value):
    """Meta as plain Python values (what ``torch.load(weights_only=True)`` reads): tuples ->
    lists, numpy numbers -> int / float, anything else (e.g. a Path) -> str."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return str(value)


__all__ = ["DEFAULT_OPTIONS", "SimCLRJob", "TwoViewImages", "run", "merged_options", "lr_factor",
           "backbone_state_dict"]

"""Best-on-val: validation during training and the checkpoint it selects (``val_every``).

The official ProDA and CPSL stages validate every few thousand iterations on Cityscapes val
and keep ``best_model.pkl``, the checkpoint with the highest mIoU there; that file teaches the
next stage and gives the published number. Cityscapes val is also the split every result is
reported on, so this is selection on the evaluation split: we keep that checkpoint as its
own artifact next to the last one (``model_best.pt`` with ``metrics_best.json``), labelled as
selected on that split, and the config says which of the two the next stage reads.

The runner keeps the best file while training (``segcore.train.best_checkpoint``).
"""
from __future__ import annotations

import dataclasses
import functools
import json

import torch

from ..data.datasets import SegmentationDataset
from ..methods.warmup import upsample
from ..metrics import ConfusionMatrix, summarize
from . import distributed as D


@dataclasses.dataclass
class BestOnVal:
    """Where a job validates and what it writes: ``val`` is the evaluation split's spec
    ({"manifest", "split", "resize"}); ``model_out`` / ``metrics_out`` the declared outputs."""

    val: dict
    num_classes: int
    model_out: str
    metrics_out: str
    val_every: int = 0        # iterations between validations; 0: the last iteration only
    batch_size: int = 4

    @property
    def key(self) -> str:
        """The metric that selects (the table's main one): mIoU19, or mIoU16 on SYNTHIA chains."""
        return f"mIoU{self.num_classes}"

    @functools.cached_property
    def dataset(self) -> SegmentationDataset:
        """The split, opened at the first validation."""
        return SegmentationDataset(self.val["manifest"], self.val["split"], self.num_classes,
                                   resize=self.val.get("resize"), resize_label=False)

    def validate(self, model: torch.nn.Module, device) -> dict:
        """The metrics of ``model`` on the split."""
        return validate(model, self.dataset, self.num_classes, device, self.batch_size)


@torch.no_grad()
def validate(model: torch.nn.Module, dataset: SegmentationDataset, num_classes: int, device,
             batch_size: int = 4) -> dict:
    """The metrics of ``model`` on ``dataset`` as ``segcore.evaluate`` computes them (eval mode,
    float32, logits upsampled to the label's size, one confusion matrix); each rank takes every
    world-size-th image and the matrices are summed over the ranks. No DataLoader: starting one
    draws from the global RNG, and validating must not change the training that follows."""
    model.eval()
    mine = range(D.rank(), len(dataset), D.world_size())
    cm = ConfusionMatrix(num_classes, device=device)
    for i in range(0, len(mine), batch_size):
        items = [dataset[j] for j in mine[i:i + batch_size]]
        images = torch.stack([x["image"] for x in items]).to(device)
        labels = torch.stack([x["label"] for x in items]).to(device)
        logits = model(images)["out"]
        cm.update(upsample(logits.float(), labels.shape[-2:]).argmax(1), labels)
    cm.all_reduce()
    out = summarize(cm.matrix.cpu(), num_classes)
    out["images"] = len(dataset)
    return out


def add_arguments(parser) -> None:
    """The best-on-val arguments of a training script (all or none of them)."""
    parser.add_argument("--val", default=None,
                        help="JSON: manifest, split, resize of the evaluation split to validate on")
    parser.add_argument("--val-every", type=int, default=0,
                        help="validate every this many iterations (0: at the last iteration only)")
    parser.add_argument("--best-out", default=None, help="the best validated checkpoint to write (model_best.pt)")
    parser.add_argument("--best-metrics", default=None, help="its metrics to write (metrics_best.json)")


def from_arguments(args, num_classes: int) -> BestOnVal | None:
    """The ``BestOnVal`` of ``add_arguments``' values (None without ``--val``), its split checked
    before any work."""
    given = [n for n in ("val", "best_out", "best_metrics") if getattr(args, n)]
    if not given:
        return None
    if len(given) < 3:
        raise ValueError("--val, --best-out and --best-metrics go together")
    if args.val_every < 0:
        raise ValueError(f"--val-every {args.val_every}: must be 0 or more")
    from ..preflight import check_data

    spec = json.loads(args.val)
    check_data(spec, "--val")
    return BestOnVal(spec, num_classes, args.best_out, args.best_metrics, val_every=args.val_every)

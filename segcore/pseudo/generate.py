"""Generate pseudo-label stores with a trained model (the official ``generate_pseudo_label.py``).

* ``generate_soft``: the softmax of ``model(x)["out"]`` at the network's output resolution
  (not upsampled), the official ``--soft`` mode (docs/protocol.md, Pseudo-label files).
* ``generate_hard``: the official ``--flip`` mode,
  ``p = (up(softmax(logits(x))) + flip(up(softmax(logits(flip(x)))))) / 2`` with ``up``
  bilinear, ``align_corners=True``, to the image's full resolution (or ``output_size``);
  label = argmax, conf = max.

Both run the model in eval mode under ``torch.inference_mode`` (its previous mode is restored
afterwards), in dataset order with no shuffling and no dropped last batch, and write through a
``SoftWriter`` / ``HardWriter`` that the caller opened: the store appears under its final name
only when every image is written, so an interrupted run leaves no finished-looking file.
The model must already be on ``device``; inputs are moved there. Progress (images done,
rate, elapsed, ETA, timestamp, CUDA peak memory) goes to ``log`` every ``log_every`` images,
at least every 30 s and at the end.
"""
from __future__ import annotations

import contextlib
import json

import torch
import torch.nn.functional as F

from .. import preflight
from ..data.datasets import SegmentationDataset, inference_loader
from ..methods.warmup import upsample
from ..models.checkpoint import load_model
from ..progress import image_meter


def _print(line: str) -> None:
    print(line, flush=True)


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _batches(dataset, writer, batch_size: int, num_workers: int, device):
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    keys = getattr(dataset, "keys", None)
    if keys is not None and list(keys) != list(writer.keys):
        raise ValueError(f"{writer.path}: the writer's keys are not the dataset's keys in dataset order")
    if len(dataset) != len(writer.keys):
        raise ValueError(f"{writer.path}: the dataset has {len(dataset)} images, the writer {len(writer.keys)} keys")
    for batch in inference_loader(dataset, batch_size, num_workers, device):
        if "view" in batch:
            raise ValueError(f"{writer.path}: the dataset applies a random view; pseudo-labels need the plain images")
        yield batch["image"], batch["index"]


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    out = out["out"] if isinstance(out, dict) else out
    return out.float()


def generate_soft(model, dataset, writer, batch_size: int = 4, device="cpu", num_workers: int = 0, log=_print,
                  log_every: int = 100) -> None:
    """Write ``softmax(model(x)["out"])`` at output resolution for every image of ``dataset``."""
    device = torch.device(device)
    meter, done = image_meter(len(dataset), batch_size, log_every), 0
    with _eval_mode(model), torch.inference_mode():
        for images, index in _batches(dataset, writer, batch_size, num_workers, device):
            probs = F.softmax(_logits(model, images.to(device, non_blocking=True)), dim=1)
            if tuple(probs.shape[-2:]) != tuple(writer.size_hw) or probs.shape[1] != writer.num_classes:
                raise ValueError(f"{writer.path}: the model gives {tuple(probs.shape[1:])}, the writer expects "
                                 f"{(writer.num_classes, *writer.size_hw)}")
            writer.write(index, probs.cpu())
            done += len(index)
            if meter.due(done):
                log(meter.line(done, f"soft pseudo-labels -> {writer.path}"))


def flip_averaged_probs(model, images: torch.Tensor, size, flip: bool = True) -> torch.Tensor:
    """``(up(softmax(logits(x))) + flip(up(softmax(logits(flip(x)))))) / 2`` at ``size`` (H, W)."""
    p = upsample(F.softmax(_logits(model, images), dim=1), size)
    if flip:
        p = p + upsample(F.softmax(_logits(model, images.flip(-1)), dim=1), size).flip(-1)
        p = p / 2
    return p


def generate_hard(model, dataset, writer, batch_size: int = 4, flip: bool = True, device="cpu",
                  output_size=None, num_workers: int = 0, log=_print, log_every: int = 100) -> None:
    """Write the flip-averaged argmax label and max probability at full resolution.

    ``output_size`` (H, W) defaults to each batch's image size; it must equal the writer's
    ``size_hw``.
    """
    device = torch.device(device)
    meter, done = image_meter(len(dataset), batch_size, log_every), 0
    with _eval_mode(model), torch.inference_mode():
        for images, index in _batches(dataset, writer, batch_size, num_workers, device):
            size = tuple(output_size) if output_size is not None else tuple(images.shape[-2:])
            if size != tuple(writer.size_hw):
                raise ValueError(f"{writer.path}: output size {size}, the writer expects {tuple(writer.size_hw)}")
            p = flip_averaged_probs(model, images.to(device, non_blocking=True), size, flip)
            conf, label = p.max(dim=1)
            writer.write(index, label.cpu(), conf.cpu())
            done += len(index)
            if meter.due(done):
                log(meter.line(done, f"hard pseudo-labels -> {writer.path}"))


def open_model_and_images(model_path: str, target: str, num_classes: int):
    """For the scripts that run a checkpoint over the target train images: check both before
    any work, load them, and pick the device. ``target`` is the JSON {"manifest", "split",
    "resize"} of ``--target``. Returns ``(model, dataset, device)``; the model stays on the CPU."""
    spec = json.loads(target)
    preflight.check_checkpoint(model_path, num_classes=num_classes)
    preflight.check_data(spec, "--target", labels=False)
    model, _ = load_model(model_path, expect_num_classes=num_classes)
    ds = SegmentationDataset(spec["manifest"], spec["split"], num_classes, resize=spec["resize"], with_labels=False)
    return model, ds, "cuda" if torch.cuda.is_available() else "cpu"

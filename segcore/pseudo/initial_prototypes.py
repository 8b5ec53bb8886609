"""Initial prototypes (calc_prototype.py of the official code, docs/methods/proda.md, Initial prototypes):
the warm-up model in eval mode over the target train images, per-image class means of its
256-d features over its own argmax (>= 10 pixels), averaged image by image with the count
capped at 3000. One pass: the official four identical passes add nothing. Progress goes to
``log`` every ``log_every`` images (whole batches), at least every 30 s and at the end."""
from __future__ import annotations

import torch

from ..data.datasets import inference_loader
from ..progress import image_meter
from .prototypes import PrototypeBank, class_means


def _print(line: str) -> None:
    print(line, flush=True)


@torch.no_grad()
def initial_prototypes(model, dataset, batch_size: int = 4, device="cpu", min_pixels: int = 10, log=_print,
                       log_every: int = 100, num_workers: int = 0) -> PrototypeBank:
    model.eval().to(device)
    bank = None
    loader = inference_loader(dataset, batch_size, num_workers, device)
    meter = image_meter(len(dataset), batch_size, log_every)
    done = 0
    for batch in loader:
        out = model(batch["image"].to(device))
        means, valid = class_means(out["feat"], out["out"].argmax(1), out["out"].shape[1], min_pixels)
        if bank is None:
            bank = PrototypeBank(out["out"].shape[1], out["feat"].shape[1], device=device)
        bank.add_image_means(means, valid)
        done += len(batch["image"])
        if meter.due(done):
            log(meter.line(done, "initial prototypes"))
    return bank

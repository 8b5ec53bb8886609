"""SeCo's SCC on the shared runner: train the connectivity classifier on the PSA components
(label-smoothed CE, stopped early), score every component, apply the decision rule and write
the SCC labels (``segcore.seco.refined_store``).

The classifier's schedule is the released one, ``lr0 * (1 + 10 t / T) ** -0.75`` with
``T = epochs`` passes over the components; training stops at ``iterations`` (the released
run uses the checkpoint of iteration 5,000: "early learning", before the network memorises
the noisy components). The score and the rule run on rank 0, in ``save``.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..data.datasets import infinite_loader
from ..seco.classifier import ComponentSet, build_classifier, param_groups
from ..seco.components import components, render
from ..seco.refined_store import RefinedStore, RefinedWriter
from ..seco.scc import decide, score
from . import distributed as D
from .common import image_set
from .runner import Training, run_training

#: the released settings (SCC/configs/Cityscapes/train_src_base.py and run.sh)
OFFICIAL = {"arch": "resnet101", "window": [256, 512], "crop": [256, 512], "batch_size": 64,
            "iterations": 5000, "epochs": 20, "lr": 0.001, "fc_lr": 0.01, "momentum": 0.9,
            "weight_decay": 1e-3, "nesterov": True, "label_smoothing": 0.1, "min_pixels": 1,
            "rule": "gmm", "noise_threshold": 0.6, "relabel_threshold": 0.95, "median_mode": "both_loss"}


@dataclasses.dataclass
class SCCJob:
    target: dict              # {"manifest", "split", "resize"} of the target train images
    num_classes: int
    psa_labels: str           # the PSA store of the base
    options: dict             # OFFICIAL's keys + imagenet (file or null), checkpoint_every, log_every
    seed: int
    out: str                  # the SCC store
    workdir: str
    num_workers: int = 0
    device: str | None = None


def classifier_step(model, optimizer, batch: dict, smoothing: float, accel) -> dict:
    optimizer.zero_grad(set_to_none=True)
    with accel.autocast():
        loss = F.cross_entropy(model(batch["image"], batch["mask"]), batch["label"], label_smoothing=smoothing)
    loss.backward()
    D.average_gradients(model.parameters())
    optimizer.step()
    return {"ce": loss.detach()}


def schedule(horizon: int):
    """The released classifier schedule: ``(1 + 10 t / horizon) ** -0.75``."""
    return lambda it: (1.0 + 10.0 * it / horizon) ** -0.75


def write_scc(out, psa: RefinedStore, table: np.ndarray, labels: np.ndarray, min_pixels: int, rule: str) -> float:
    """Paint each image's kept components with their decided labels; returns the coverage."""
    with RefinedWriter(out, psa.keys, psa.size_hw, psa.num_classes, "scc", psa.proposer, psa.base, rule) as w:
        for i in range(len(psa)):
            comps = components(psa.label(i), min_pixels=min_pixels)
            rows = np.flatnonzero(table[:, 0] == i)
            if len(rows) != len(comps):
                raise RuntimeError(f"{out}: image {i} has {len(comps)} components, the table {len(rows)}")
            w.write(i, render(comps, labels[rows[np.argsort(table[rows, 1])]]))
    return RefinedStore(out).coverage


def run(job: SCCJob, log=print):
    opts = {**OFFICIAL, **job.options}
    images = image_set(job.target, job.num_classes)
    psa = RefinedStore(job.psa_labels, expect_keys=images.keys, expect_classes=job.num_classes, expect_stage="psa")
    window, crop, min_px = opts["window"], opts["crop"], int(opts["min_pixels"])
    comps = ComponentSet(images, psa, window, crop, min_px, train=True)
    if len(comps) < opts["batch_size"]:
        raise ValueError(f"{job.psa_labels}: {len(comps)} components, fewer than the classifier's batch size "
                         f"{opts['batch_size']}")
    horizon = int(opts["epochs"]) * math.ceil(len(comps) / opts["batch_size"])
    log(f"SCC: {len(comps)} components of {len(images)} images; classifier {opts['arch']}, "
        f"{opts['iterations']} iterations (schedule horizon {horizon})")

    def build(accel, log):
        model = accel.place(D.prepare_model(build_classifier(job.num_classes, opts["arch"], opts.get("imagenet"))))
        opt = torch.optim.SGD(param_groups(model, opts["lr"], opts["fc_lr"]), lr=opts["lr"], momentum=opts["momentum"],
                              weight_decay=opts["weight_decay"], nesterov=bool(opts["nesterov"]))

        def batches(start):
            return infinite_loader(comps, opts["batch_size"], job.seed, start=start,
                                   **accel.loader_kwargs(job.num_workers))

        def save(finished):
            scoring = ComponentSet(images, psa, window, crop, min_px, train=False)
            probs, loss = score(model, scoring, opts["batch_size"], accel.device)
            labels = decide(opts["rule"], loss, probs, scoring.classes, opts)
            kept = labels != 255
            coverage = write_scc(job.out, psa, scoring.table, labels, min_px, opts["rule"])
            log(f"SCC {opts['rule']}: kept {int(kept.sum())} of {len(labels)} components "
                f"({int((kept & (labels != scoring.classes)).sum())} relabelled); "
                f"coverage {psa.coverage:.3f} -> {coverage:.3f}")

        return Training(model=model, parts={"model": model, "optimizer": opt}, optimizers=[opt],
                        batches=lambda start: (accel.batch(b) for b in batches(start)),
                        step=lambda b: classifier_step(model, opt, b, opts["label_smoothing"], accel),
                        save=save, broadcast=(model,), same=(model,), lr_factor=schedule(horizon))

    settings = dataclasses.asdict(job) | {"workdir": None, "num_workers": None, "device": None}
    return run_training(build, options=opts, seed=job.seed, workdir=job.workdir, settings=settings,
                        device=job.device, log=log)

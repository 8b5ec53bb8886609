"""ProDA/CPSL stages 2 and 3: self-distillation into a student on the strong view
(docs/methods/proda.md, Stages 2 and 3). The student learns the teacher's thresholded hard
labels (moved into the strong view) plus a KL term to the frozen teacher's soft output."""
from __future__ import annotations

import torch

from . import losses as L
from .warmup import upsample


def distill_target_loss(student, teacher, batch, opts):
    size_q = batch["hard"].shape[-2:]
    logits = upsample(student(batch["strong"])["out"], size_q)
    loss_pl = L.cross_entropy(logits, batch["hard"])
    with torch.no_grad():
        t_logits = upsample(teacher(batch["strong"])["out"], size_q)
    loss_kd = L.kd_loss(logits, t_logits, official=opts["kd_official"])
    return loss_pl + opts["distillation"] * loss_kd, {"pl": loss_pl.detach(), "kd": loss_kd.detach()}

"""ProDA stage 1 (prototypical denoising + target structure learning), one iteration's
losses as pure functions of the batch, the networks and the prototypes
(docs/methods/proda.md, Stage 1). The loop that calls them is ``segcore.train.proda_stage1``.
"""
from __future__ import annotations

import torch

from ..data.strong_view import warp_to_strong
from ..data.transforms import apply_view
from ..pseudo.prototypes import class_means
from . import losses as L
from .rectify import prototype_distances, prototype_weights, rectify
from .warmup import upsample


def rectified_labels(teacher_feat_w, soft_pl_w, protos, temperature: float, threshold: float = 0.0):
    """Soft pseudo-labels weighted by the softmax of prototype distances; returns
    (hard labels, distances) on the weak crop's grid."""
    dist = prototype_distances(teacher_feat_w, protos)
    labels = rectify(soft_pl_w, prototype_weights(dist, temperature), threshold)
    return labels, dist


def self_training_loss(logits_w, labels, opts) -> torch.Tensor:
    """CE (or alpha*CE + beta*RCE) on the rectified labels, plus the MRKLD regulariser."""
    if opts["rce"]:
        loss = L.ce_rce(logits_w, labels, opts["rce_alpha"], opts["rce_beta"])
    else:
        loss = L.cross_entropy(logits_w, labels)
    if opts["regular_w"] > 0:
        loss = loss + opts["regular_w"] * L.mrkld(logits_w)
    return loss


def consistency_loss(teacher_dist_w, student_feat_s, strong_view, protos, temperature: float,
                     geometry: str = "direct"):
    """KL between prototype assignments of the teacher (moved into the strong view, with the
    strong view's label ``geometry``) and of the student on the strong view. Distances are >= 0,
    so -1 marks pixels with no source."""
    dist_t = warp_to_strong(teacher_dist_w, strong_view, "nearest", fill=-1.0, geometry=geometry)
    mask = dist_t[:, 0] >= 0
    dist_s = prototype_distances(student_feat_s, protos)
    return L.proto_consistency_kl(dist_t, dist_s, mask, temperature)


def stage1_target_losses(student, teacher, protos, batch, opts):
    """Target-side losses of one iteration and the teacher outputs the prototype update needs."""
    stride = opts["label_stride"]
    size_q = batch["soft"].shape[-2:]
    with torch.no_grad():
        t = teacher(batch["full"])
        # float32: under bf16 autocast the sampling coordinates must not be rounded to bf16
        feat_w = apply_view(t["feat"].float(), batch["view"], "bilinear", stride=stride)
        labels, dist = rectified_labels(feat_w, batch["soft"], protos, opts["proto_temperature"], opts["train_thred"])
    logits_w = upsample(student(batch["weak"])["out"], size_q)
    loss_st = self_training_loss(logits_w, labels, opts)
    feat_s = upsample(student(batch["strong"])["feat"], size_q)
    loss_kl = consistency_loss(dist, feat_s, batch["strong_view"], protos, opts["proto_temperature"],
                               opts["label_geometry"])
    logs = {"st": loss_st.detach(), "kl": loss_kl.detach()}
    return loss_st + opts["proto_consistW"] * loss_kl, logs, t


@torch.no_grad()
def teacher_class_means(teacher_out, num_classes: int, stride: int, full_size, min_pixels: int = 10):
    """Per-image class means of the teacher's features over its own argmax, at 1/stride of the
    full image (the official moving-prototype update uses 1/4)."""
    size = (full_size[0] // stride, full_size[1] // stride)
    feat = upsample(teacher_out["feat"], size)
    pred = upsample(teacher_out["out"], size).argmax(1)
    return class_means(feat, pred, num_classes, min_pixels)

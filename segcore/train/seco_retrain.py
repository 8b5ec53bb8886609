"""Re-training on SeCo's labels, on the shared runner. Two recipes:

* ``self_training`` (the UDA setting): the base's network (started from ``init``) trained on
  source labels (weak crop, CE) plus the SCC labels of the target on the strong view
  (``TargetViews`` moves the labels exactly as the pixels): ``L = L_src + target_weight * L_tgt``.
* ``unimatch`` (the semi-supervised recipe of SeCo's release, source-free): the target set split
  into a labelled subset with the SCC labels and an unlabelled rest (``segcore.seco.split``).
  Per step: OHEM CE on the labelled weak crops; for the unlabelled ones the weak view's argmax
  (no gradient; confidence threshold ``conf_thresh``, 0 in UniMatch's Cityscapes setting)
  supervises two strong views (colour jitter, grey, blur, CutMix with a second unlabelled batch)
  and the feature-perturbed weak view (Dropout2d(0.5) on the backbone features):
  ``L = (L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2``. The CutMix partner's prediction is taken
  in eval mode, the rest in train mode, as UniMatch does.

Schedule: poly 0.9 (UniMatch; ``schedule: poly`` of the runner).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..data.strong_view import StrongView
from ..data.target_views import TargetViews
from ..methods.warmup import segmentation_loss, upsample
from ..models.checkpoint import load_model, save_model
from ..models.deeplabv2 import unwrap
from ..pseudo.store_base import IGNORE
from ..seco.refined_store import RefinedStore
from ..seco.split import split
from ..seco.unimatch_views import UnlabelledViews
from . import distributed as D
from .common import image_set, labelled_set, make_sgd, weak_view
from .runner import Training, run_training

RECIPES = ("self_training", "unimatch")


@dataclasses.dataclass
class RetrainJob:
    recipe: str
    target: dict               # the target train images
    num_classes: int
    refined: str               # the SCC store
    init: str                  # the checkpoint the network starts from (the base stage's model)
    options: dict
    seed: int
    out: str
    workdir: str
    source: dict | None = None  # self_training only
    num_workers: int = 0
    device: str | None = None


class Subset(torch.utils.data.Dataset):
    """``dataset`` restricted to ``indices``, passing ``(index, view_seed)`` items through."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, [int(i) for i in indices]

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, item):
        i, seed = item
        return self.dataset[(self.indices[int(i)], seed)]


def self_training_step(model, optimizer, s: dict, t: dict, opts: dict, accel) -> dict:
    optimizer.zero_grad(set_to_none=True)
    with accel.autocast():
        loss_src = segmentation_loss(model(s["image"])["out"], s["label"])
    loss_src.backward()
    with accel.autocast():
        loss_tgt = segmentation_loss(model(t["strong"])["out"], t["hard"]) * opts["target_weight"]
    loss_tgt.backward()
    D.average_gradients(model.parameters())
    optimizer.step()
    return {"src": loss_src.detach(), "tgt": loss_tgt.detach()}


def ohem_ce(logits: torch.Tensor, labels: torch.Tensor, thresh: float = 0.7, min_kept: int = 200000) -> torch.Tensor:
    """UniMatch's OHEM cross-entropy: the pixels whose true-class probability is at most
    ``max(thresh, the min_kept-th smallest)``; all valid pixels when there are fewer than min_kept."""
    up = upsample(logits, labels.shape[-2:])
    valid = labels != IGNORE
    n = int(valid.sum())
    keep = valid
    if n > min_kept > 0:
        with torch.no_grad():
            p = F.softmax(up.float(), 1).gather(1, labels.clamp(max=up.shape[1] - 1)[:, None])[:, 0]
            p = torch.where(valid, p, torch.ones_like(p))
            kth = p[valid].kthvalue(min(n, min_kept)).values
            keep = valid & (p <= torch.maximum(kth, torch.tensor(thresh, device=p.device)))
    loss = F.cross_entropy(up, torch.where(keep, labels, torch.full_like(labels, IGNORE)), ignore_index=IGNORE,
                           reduction="sum")
    return loss / keep.sum().clamp(min=1)


def forward_fp(model, x: torch.Tensor, p: float = 0.5):
    """(logits, logits with Dropout2d(p) on the backbone features) of one forward through the backbone."""
    net = unwrap(model)
    f = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))
    if net.bn_pretrain is not None:
        f = net.bn_pretrain(f)
    out = net.layer5(torch.cat([f, F.dropout2d(f, p, training=True)]))["out"]
    return out.chunk(2)


def _pseudo(logits, size):
    prob = F.softmax(upsample(logits.float(), size), 1)
    conf, label = prob.max(1)
    return conf, label


def _weighted_ce(logits, label, conf, thresh):
    up = upsample(logits, label.shape[-2:])
    loss = F.cross_entropy(up, label, reduction="none")
    w = (conf >= thresh).float()
    return (loss * w).sum() / w.numel()  # UniMatch: mean over all pixels of the batch


def unimatch_step(model, optimizer, x: dict, u: dict, mix: dict, opts: dict, accel) -> dict:
    size = u["weak"].shape[-2:]
    with torch.no_grad():
        model.eval()
        conf_m, label_m = _pseudo(model(mix["weak"])["out"], size)
        model.train()
    optimizer.zero_grad(set_to_none=True)
    b1, b2 = u["box1"][:, None] > 0, u["box2"][:, None] > 0
    s1 = torch.where(b1, mix["strong1"], u["strong1"])
    s2 = torch.where(b2, mix["strong2"], u["strong2"])
    with accel.autocast():
        nx = x["weak"].shape[0]
        out, out_fp = forward_fp(model, torch.cat([x["weak"], u["weak"]]), opts["fp_dropout"])
        pred_x, pred_w, pred_fp = out[:nx], out[nx:], out_fp[nx:]
        pred_s1, pred_s2 = model(torch.cat([s1, s2]))["out"].chunk(2)
        conf_w, label_w = _pseudo(pred_w.detach(), size)
        lab1 = torch.where(b1[:, 0], label_m, label_w)
        cf1 = torch.where(b1[:, 0], conf_m, conf_w)
        lab2 = torch.where(b2[:, 0], label_m, label_w)
        cf2 = torch.where(b2[:, 0], conf_m, conf_w)
        t = opts["conf_thresh"]
        loss_x = ohem_ce(pred_x, x["hard"], opts["ohem_thresh"], opts["ohem_min_kept"])
        loss_s1 = _weighted_ce(pred_s1, lab1, cf1, t)
        loss_s2 = _weighted_ce(pred_s2, lab2, cf2, t)
        loss_fp = _weighted_ce(pred_fp, label_w, conf_w, t)
        loss = (loss_x + 0.25 * loss_s1 + 0.25 * loss_s2 + 0.5 * loss_fp) / 2
    loss.backward()
    D.average_gradients(model.parameters())
    optimizer.step()
    return {"x": loss_x.detach(), "s": ((loss_s1 + loss_s2) / 2).detach(), "fp": loss_fp.detach()}


def run(job: RetrainJob, log=print):
    from ..data.datasets import infinite_loader

    if job.recipe not in RECIPES:
        raise ValueError(f"unknown SeCo re-training recipe {job.recipe!r} (choose from {', '.join(RECIPES)})")
    if job.recipe == "self_training" and job.source is None:
        raise ValueError("the self_training recipe needs the source set")
    opts = job.options
    base = image_set(job.target, job.num_classes)
    refined = RefinedStore(job.refined, expect_keys=base.keys, expect_classes=job.num_classes, expect_stage="scc")

    def build(accel, log):
        model, meta = load_model(job.init, expect_num_classes=job.num_classes)
        model = accel.place(D.prepare_model(model))
        opt = make_sgd(model, opts)
        loader = accel.loader_kwargs(job.num_workers)
        bs = opts["batch_size"]
        if job.recipe == "self_training":
            src = labelled_set(job.source, job.num_classes, opts)
            strong = StrongView(n_ops=opts["strong_ops"], magnitude=opts["strong_magnitude"], cutout=opts["cutout"])
            tgt = TargetViews(base, weak_view(opts), strong, hard_store=refined, label_stride=1, keep_full=False)

            def batches(start):
                si = infinite_loader(src, bs, job.seed, start=start, **loader)
                ti = infinite_loader(tgt, bs, job.seed + 1, start=start, **loader)
                while True:
                    yield accel.batch(next(si)), accel.batch(next(ti))

            step = lambda b: self_training_step(model, opt, b[0], b[1], opts, accel)  # noqa: E731
        else:
            lab_idx, unl_idx = split(refined, opts["split"], opts["labelled_fraction"], job.seed)
            log(f"UniMatch split ({opts['split']}): {len(lab_idx)} labelled, {len(unl_idx)} unlabelled images")
            xs = Subset(TargetViews(base, weak_view(opts), None, hard_store=refined, label_stride=1, keep_full=False),
                        lab_idx)
            us = Subset(UnlabelledViews(base, weak_view(opts)), unl_idx)

            def batches(start):
                xi = infinite_loader(xs, bs, job.seed, start=start, **loader)
                ui = infinite_loader(us, bs, job.seed + 1, start=start, **loader)
                mi = infinite_loader(us, bs, job.seed + 2, start=start, **loader)
                while True:
                    yield accel.batch(next(xi)), accel.batch(next(ui)), accel.batch(next(mi))

            step = lambda b: unimatch_step(model, opt, b[0], b[1], b[2], opts, accel)  # noqa: E731

        def save(finished):
            save_model(job.out, model, dict(meta, stage=f"seco_{job.recipe}", iterations=finished.iterations,
                                            seco_proposer=refined.proposer, seco_base=refined.base))

        return Training(model=model, parts={"model": model, "optimizer": opt}, optimizers=[opt], batches=batches,
                        step=step, save=save, broadcast=(model,), same=(model,))

    settings = dataclasses.asdict(job) | {"workdir": None, "num_workers": None, "device": None}
    return run_training(build, options=opts, seed=job.seed, workdir=job.workdir, settings=settings,
                        device=job.device, log=log)

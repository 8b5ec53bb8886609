"""One step of each SeCo re-training recipe on tiny inputs: the gradient it applies is the one of
the loss the recipe states, re-derived here from the network's plain forward passes."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from segcore.methods.warmup import upsample
from segcore.models.deeplabv2 import build_deeplabv2
from segcore.pseudo.store_base import IGNORE
from segcore.train import seco_retrain as R
from segcore.train.common import Accel

C = 5


def _net(seed=0):
    """The small network in train mode (batch-statistics BN) without its head's Dropout2d(0.1),
    so that a forward pass is a function of its batch."""
    torch.manual_seed(seed)
    net = build_deeplabv2(C, "small").train()
    for m in net.modules():
        if isinstance(m, torch.nn.Dropout2d):
            m.p = 0.0
    return net


def _grads_of_step(model, step):
    """The gradients a step leaves (lr 0: the weights stay put)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    out = step(model, opt)
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _grads_of(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _close(a: dict, b: dict):
    assert a.keys() == b.keys() and a
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-4, atol=1e-6, msg=n)


def _labels(g, n, h, w, ignore_share=0.2):
    lab = torch.randint(0, C, (n, h, w), generator=g)
    return torch.where(torch.rand(n, h, w, generator=g) < ignore_share, torch.full_like(lab, IGNORE), lab)


def test_self_training_step_is_source_ce_plus_weighted_target_ce():
    g = torch.Generator().manual_seed(1)
    s = {"image": torch.randn(2, 3, 16, 16, generator=g), "label": _labels(g, 2, 16, 16)}
    t = {"strong": torch.randn(2, 3, 16, 16, generator=g), "hard": _labels(g, 2, 16, 16)}
    opts = {"target_weight": 0.3}
    model = _net()
    ref = copy.deepcopy(model)
    out, grads = _grads_of_step(model, lambda m, o: R.self_training_step(m, o, s, t, opts, Accel(torch.device("cpu"))))

    def ce(net, x, y):
        return F.cross_entropy(upsample(net(x)["out"], y.shape[-2:]), y, ignore_index=IGNORE)

    src, tgt = ce(ref, s["image"], s["label"]), ce(ref, t["strong"], t["hard"])
    assert float(out["src"].detach()) == pytest.approx(src.item(), rel=1e-5)
    assert float(out["tgt"]) == pytest.approx(0.3 * tgt.item(), rel=1e-5)
    _close(grads, _grads_of(ref, src + 0.3 * tgt))


def test_ohem_keeps_the_pixels_at_most_the_threshold_or_the_kth_probability():
    g = torch.Generator().manual_seed(2)
    logits, labels = torch.randn(1, C, 6, 6, generator=g), _labels(g, 1, 6, 6)
    p = F.softmax(logits, 1).gather(1, labels.clamp(max=C - 1)[:, None])[:, 0]
    valid = labels != IGNORE
    for thresh, kept in ((0.7, 5), (0.01, 5), (0.7, 10**6)):  # the threshold, the 5th probability, all
        if kept >= int(valid.sum()):
            keep = valid  # fewer valid pixels than min_kept: all of them
        else:
            kth = p[valid].sort().values[kept - 1]
            keep = valid & (p <= max(float(kth), thresh))
        ce = F.cross_entropy(logits, labels.clamp(max=C - 1), reduction="none")
        expected = ce[keep].sum() / keep.sum()
        assert float(R.ohem_ce(logits, labels, thresh, kept)) == pytest.approx(float(expected), rel=1e-5)


def test_unimatch_step_is_the_released_loss_composition():
    """(L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2 with the CutMix labels taken from the mixing
    batch inside the boxes; fp_dropout 0 makes the perturbed branch the weak one."""
    g = torch.Generator().manual_seed(3)
    n, hw = 2, (16, 16)
    x = {"weak": torch.randn(n, 3, *hw, generator=g), "hard": _labels(g, n, *hw)}
    u = {"weak": torch.randn(n, 3, *hw, generator=g), "strong1": torch.randn(n, 3, *hw, generator=g),
         "strong2": torch.randn(n, 3, *hw, generator=g)}
    box = torch.zeros(n, *hw)
    box[:, 2:10, 4:14] = 1
    u["box1"], u["box2"] = box, torch.flip(box, dims=[-1])
    mix = {"weak": torch.randn(n, 3, *hw, generator=g), "strong1": torch.randn(n, 3, *hw, generator=g),
           "strong2": torch.randn(n, 3, *hw, generator=g)}
    opts = {"fp_dropout": 0.0, "conf_thresh": 0.0, "ohem_thresh": 0.7, "ohem_min_kept": 10**6}
    model = _net()
    ref = copy.deepcopy(model)
    out, grads = _grads_of_step(model, lambda m, o: R.unimatch_step(m, o, x, u, mix, opts, Accel(torch.device("cpu"))))

    with torch.no_grad():
        ref.eval()
        label_m = upsample(ref(mix["weak"])["out"], hw).argmax(1)
        ref.train()
    both = ref(torch.cat([x["weak"], u["weak"]]))["out"]
    pred_x, pred_w = both[:n], both[n:]
    label_w = upsample(pred_w.detach(), hw).argmax(1)
    b1, b2 = u["box1"] > 0, u["box2"] > 0
    s1 = torch.where(b1[:, None], mix["strong1"], u["strong1"])
    s2 = torch.where(b2[:, None], mix["strong2"], u["strong2"])
    pred_s1, pred_s2 = ref(torch.cat([s1, s2]))["out"].chunk(2)

    def ce(pred, y, **kw):
        return F.cross_entropy(upsample(pred, hw), y, **kw)

    loss_x = ce(pred_x, x["hard"], ignore_index=IGNORE)
    loss_s1 = ce(pred_s1, torch.where(b1, label_m, label_w))
    loss_s2 = ce(pred_s2, torch.where(b2, label_m, label_w))
    loss_fp = ce(pred_w, label_w)
    assert float(out["x"]) == pytest.approx(loss_x.item(), rel=1e-5)
    assert float(out["s"]) == pytest.approx(((loss_s1 + loss_s2) / 2).item(), rel=1e-5)
    assert float(out["fp"]) == pytest.approx(loss_fp.item(), rel=1e-5)
    _close(grads, _grads_of(ref, (loss_x + 0.25 * loss_s1 + 0.25 * loss_s2 + 0.5 * loss_fp) / 2))

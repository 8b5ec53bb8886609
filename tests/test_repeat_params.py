"""The official optimiser update with repeated parameters (``repeat_params_official``).

The official ``get_1x_lr_params`` is a generator that walks ``m.modules()`` of every backbone
module and yields ``j.parameters()`` of each, so a parameter comes once per module on its path;
``torch.optim.SGD`` turns the generator into a list with those repeats and updates the same tensor
once per occurrence. ``RepeatedParamSGD`` must give exactly that update (momentum buffer and
weight decay included); it is checked against a literal loop over the official list and against
what torch itself does with such a list.
"""
from __future__ import annotations

import collections
import copy
import warnings

import pytest
import torch

from segcore.models.deeplabv2 import ArchSpec, DeepLabV2, RepeatedParamSGD, official_repeats, param_groups, sgd
from segcore.train.common import make_sgd

LR, MOMENTUM, WD = 0.05, 0.9, 0.1


def official_1x_list(net):
    """The official ``get_1x_lr_params``, written out: the list SGD builds from it."""
    out = []
    for b in (net.conv1, net.bn1, net.layer1, net.layer2, net.layer3, net.layer4):
        for j in b.modules():
            for k in j.parameters():
                if k.requires_grad:
                    out.append(k)
    return out


def official_10x_list(net):
    out = list(net.bn_pretrain.parameters()) if net.bn_pretrain is not None else []
    return out + list(net.layer5.parameters())


def simulate_official_sgd(param_lists, lrs, grads_per_step, state):
    """One literal SGD step per entry of ``grads_per_step`` over lists that may hold a tensor
    several times, as torch's single-tensor SGD loop runs it: the buffers are collected before
    the loop (empty ones as None), every occurrence applies weight decay to the current value,
    starts a buffer if its entry is None or else accumulates into it, and moves the parameter;
    the buffers are written back to the state afterwards (the last one wins)."""
    for grads in grads_per_step:
        for plist, lr in zip(param_lists, lrs):
            bufs = [state.get(id(p)) for p in plist]
            for i, p in enumerate(plist):
                d = grads[id(p)] + WD * p.detach()
                if bufs[i] is None:
                    bufs[i] = d.clone()
                else:
                    bufs[i].mul_(MOMENTUM).add_(d)
                with torch.no_grad():
                    p.sub_(lr * bufs[i])
            for p, b in zip(plist, bufs):
                state[id(p)] = b


# the official structure, tiny: two blocks in layer3 so that non-first blocks are covered too
TINY = ArchSpec(layers=(1, 1, 2, 1), stem_width=4, planes=(2, 4, 4, 4), head_width=8, gn_groups=2,
                aspp_dilations=(1, 2), se_reduction=4)


def _model(bn_clr=False):
    torch.manual_seed(0)
    return DeepLabV2(3, TINY, bn_clr=bn_clr).double()


def _grads(model, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{id(p): torch.randn(p.shape, generator=g, dtype=p.dtype) for p in model.parameters()}
            for _ in range(steps)]


def _run_ours(model, grads_per_step, opt):
    for grads in grads_per_step:
        for p in model.parameters():
            p.grad = grads[id(p)].clone()
        opt.step()


def test_repeat_counts_are_the_official_generator_counts():
    net = _model()
    official = collections.Counter(id(p) for p in official_1x_list(net))
    groups = param_groups(net, LR, 10.0, repeat_params_official=True)
    backbone, head = groups
    assert [official[id(p)] for p in backbone["params"]] == backbone["repeats"]
    assert head["repeats"] == [1] * len(head["params"])
    # by hand: the stem once; a bottleneck conv 3 times (layer, block, conv); a downsample conv 4
    assert official_repeats([net.conv1])[id(net.conv1.weight)] == 1
    assert official[id(net.layer1[0].conv1.weight)] == 3
    assert official[id(net.layer1[0].downsample[0].weight)] == 4
    assert official[id(net.bn1.weight)] == 1
    assert param_groups(net, LR, 10.0)[0].get("repeats") is None  # default: no repeats


@pytest.mark.parametrize("bn_clr", [False, True])
def test_update_equals_literal_simulation_over_three_steps(bn_clr):
    ours, ref = _model(bn_clr), _model(bn_clr)
    grads_ours = _grads(ours, 3)
    # the same gradients, keyed by the reference model's tensors
    by_name = dict(zip([n for n, _ in ours.named_parameters()], ours.parameters()))
    grads_ref = [{id(p): g[id(by_name[n])] for n, p in ref.named_parameters()} for g in grads_ours]
    opt = sgd(ours, LR, 10.0, MOMENTUM, WD, repeat_params_official=True)
    assert isinstance(opt, RepeatedParamSGD)
    _run_ours(ours, grads_ours, opt)
    simulate_official_sgd([official_1x_list(ref), official_10x_list(ref)], [LR, 10 * LR], grads_ref, {})
    for (n, a), b in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=n)
    # the repeats matter: a plain SGD over each parameter once ends elsewhere in the backbone
    plain = _model(bn_clr)
    _run_ours(plain, [{id(p): g[id(q)] for p, q in zip(plain.parameters(), ours.parameters())}
                      for g in grads_ours], sgd(plain, LR, 10.0, MOMENTUM, WD))
    assert not torch.allclose(plain.layer1[0].conv1.weight, ours.layer1[0].conv1.weight)
    torch.testing.assert_close(plain.conv1.weight, ours.conv1.weight, rtol=0, atol=1e-12)  # listed once
    torch.testing.assert_close(plain.layer5.head[1].weight, ours.layer5.head[1].weight, rtol=0, atol=1e-12)


def test_update_equals_torch_sgd_over_the_repeated_list():
    """What torch itself does with the official list (its single-tensor loop; torch warns that
    duplicate parameters may become an error one day)."""
    ours, ref = _model(), _model()
    grads = _grads(ours, 3)
    _run_ours(ours, grads, sgd(ours, LR, 10.0, MOMENTUM, WD, repeat_params_official=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = torch.optim.SGD([{"params": official_1x_list(ref), "lr": LR},
                               {"params": official_10x_list(ref), "lr": 10 * LR}],
                              lr=LR, momentum=MOMENTUM, weight_decay=WD, foreach=False)
    _run_ours(ref, [{id(q): g[id(p)] for p, q in zip(ours.parameters(), ref.parameters())} for g in grads], opt)
    for (n, a), b in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=n)


def test_make_sgd_switch_and_resume():
    opts = {"lr": LR, "head_lr_mult": 10.0, "momentum": MOMENTUM, "weight_decay": WD}
    assert type(make_sgd(_model(), opts)) is torch.optim.SGD
    model = _model()
    opt = make_sgd(model, dict(opts, repeat_params_official=True))
    assert isinstance(opt, RepeatedParamSGD)
    grads = _grads(model, 4)
    _run_ours(model, grads[:2], opt)
    # resume from the state dicts: the same end point as an uninterrupted run
    resumed = copy.deepcopy(model)
    opt2 = make_sgd(resumed, dict(opts, repeat_params_official=True))
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    _run_ours(model, grads[2:], opt)
    _run_ours(resumed, [{id(q): g[id(p)] for p, q in zip(model.parameters(), resumed.parameters())}
                        for g in grads[2:]], opt2)
    for a, b in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_extra_group_without_repeats_and_bad_repeats():
    model = _model()
    opt = sgd(model, LR, 5.0, MOMENTUM, WD, repeat_params_official=True)
    w = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt.add_param_group({"params": [w], "lr": 0.5, "name": "prototypes"})  # as CPSL stage 1 adds P
    w.grad = torch.ones(2, dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((2,), 1 - 0.5 * (1 + WD), dtype=torch.float64))
    with pytest.raises(ValueError, match="repeats"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))], "repeats": [0]})

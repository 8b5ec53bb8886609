"""Uni-UVPT's method pieces: losses, the pseudo-label correction, one adaptation step, the
frozen encoder, and the training modules on the runner (resume with the correction state)."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segcore.methods import uvpt_losses as L
from segcore.methods.uvpt_correction import PseudoLabelCorrection, class_quantiles, flattened


# ------------------------------------------------------------------ losses
def lovasz_brute_force(probs, labels, ignore=255):
    """The Lovasz extension from its definition: errors sorted, the Jaccard loss of each
    prefix SET computed with set operations, the loss the sum of errors times the increments."""
    c = probs.shape[1]
    p = probs.permute(0, 2, 3, 1).reshape(-1, c)
    y = labels.reshape(-1)
    keep = y != ignore
    p, y = p[keep], y[keep]
    losses = []
    for k in sorted(set(y.tolist())):
        fg = {i for i in range(len(y)) if y[i] == k}
        err = (torch.tensor([1.0 if i in fg else 0.0 for i in range(len(y))], dtype=p.dtype) - p[:, k]).abs()
        order = torch.argsort(err, descending=True, stable=True).tolist()
        prev, total, chosen = 0.0, 0.0, set()
        for i in order:
            chosen.add(i)
            jac = 1.0 - len(fg - chosen) / len(fg | chosen)
            total = total + err[i] * (jac - prev)
            prev = jac
        losses.append(total)
    return torch.stack(losses).mean()


def test_lovasz_softmax_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    probs = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64).softmax(1)
    labels = torch.randint(0, 3, (2, 3, 5), generator=g)        # class 3 absent: not counted ('present')
    labels[0, 0, :2] = 255
    assert torch.allclose(L.lovasz_softmax(probs, labels), lovasz_brute_force(probs, labels), atol=1e-12)
    perfect = F.one_hot(labels.clamp_max(2), 4).permute(0, 3, 1, 2).double()
    assert float(L.lovasz_softmax(perfect, labels)) == 0.0
    assert float(L.lovasz_softmax(probs, torch.full_like(labels, 255))) == 0.0


def test_robust_entropy_formula():
    z = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, -1.0]]).T.reshape(1, 3, 1, 2)
    p = z.softmax(1)
    h = -(p * p.log()).sum(1) / math.log(3)
    assert torch.allclose(L.robust_entropy(z), ((h**2 + 1e-8) ** 2).mean())
    assert float(L.robust_entropy(z[:, :, :, :1])) == pytest.approx(1.0, abs=1e-6)  # uniform: H = ln C


def test_mixture_and_confidence_mask_on_hand_made_probabilities():
    # three scales, 2 classes, one image of 1 x 3 pixels
    p1 = torch.tensor([[0.9, 0.5, 1.0], [0.1, 0.5, 0.0]]).view(1, 2, 1, 3)
    p2 = torch.tensor([[0.8, 0.6, 1.0], [0.2, 0.4, 0.0]]).view(1, 2, 1, 3)
    p3 = torch.tensor([[0.9, 0.2, 1.0], [0.1, 0.8, 0.0]]).view(1, 2, 1, 3)
    w = torch.tensor([0.0, math.log(2.0), 0.0])                      # softmax: 1/4, 1/2, 1/4
    mix = L.scale_mixture([p1, p2, p3], w)
    want = torch.tensor([[0.85, 0.475, 0.999], [0.15, 0.525, 0.001]]).view(1, 2, 1, 3)
    assert torch.allclose(mix, want)                                  # 1.0 / 0.0 clamped to 0.999 / 0.001
    labels = torch.tensor([[[0, 1, 255]]])
    assert L.confidence_mask(mix, labels, 0.8).tolist() == [[[1.0, 0.0, 0.0]]]   # the ignored pixel never counts
    assert L.confidence_mask(mix, labels, 0.9).tolist() == [[[0.0, 0.0, 0.0]]]
    # the official mask takes the max over the batch as well
    two = torch.cat([mix, mix.flip(-1)])
    lab2 = torch.tensor([[[0, 1, 255]], [[255, 1, 0]]])
    assert L.confidence_mask(two, lab2, 0.8).tolist() == [[[1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0]]]
    assert L.confidence_mask(two, lab2, 0.8, over_batch=True).tolist() == [[[1.0, 0.0, 1.0]]] * 2
    mask = L.confidence_mask(mix, labels, 0.8)
    kl = sum((p * (p.clamp_min(1e-12).log() - mix.log())).sum(1) for p in (p1, p2, p3))
    assert torch.allclose(L.consistency_loss([p1, p2, p3], mix, mask), (kl * mask).mean())


def test_prompt_consistency_and_its_clamp():
    a = torch.full((1, 2, 2, 2), 2.0)
    b = torch.zeros(1, 2, 1, 1)                                        # resized to 2 x 2 (constant)
    assert float(L.prompt_consistency([[a], [b], [a]])) == pytest.approx((2 * (2 / 3) ** 2 + (4 / 3) ** 2) / 3)
    # clamped to [1e-3, 1 - 1e-3]: both become constant maps 0.999 / 0.001
    lo, hi = 1e-3, 1 - 1e-3
    m = (2 * hi + lo) / 3
    assert float(L.prompt_consistency([[a], [b], [a]], clamp=True)) == pytest.approx(
        (2 * (hi - m) ** 2 + (lo - m) ** 2) / 3, rel=1e-5)


# ------------------------------------------------------------------ correction
def test_cubic_fit_detects_a_flattening_curve():
    x = np.arange(1, 21)
    t = (x - 1) / 19
    assert flattened(1 - (1.05 - t) ** 3, 0.95)                       # saturating: r = 1 - (0.05 / 1.05)^2
    assert not flattened(1 - (1.3 - t) ** 3, 0.95)                    # slowing, not flat yet: r = 0.947
    assert not flattened(0.01 * x, 0.95)                              # still rising linearly
    assert not flattened(np.full(20, 0.5), 0.95)                      # flat from the start: f'(1) = 0
    assert not flattened((1 - (1.05 - t) ** 3)[:3], 0.95)             # fewer than 4 points


def test_class_quantiles_are_numpys_on_the_float16_confidences():
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 4, (3, 5, 7), generator=g).to(torch.uint8)
    pred[0, 0] = 255                                                  # no prediction stored
    conf = torch.rand(3, 5, 7, generator=g).half()
    got = class_quantiles(pred, conf, 5, 0.8)
    for c in range(4):
        vals = conf[pred == c].double().numpy()
        assert float(got[c]) == pytest.approx(np.quantile(vals, 0.8), abs=1e-7)
    assert float(got[4]) == 0.0                                       # never predicted


def _planted():
    labels = torch.zeros(2, 4, 4, dtype=torch.uint8)
    labels[0, :, 2:] = 1                                              # image 0 holds class 1
    labels[1] = 2                                                     # image 1 only class 2
    corr = PseudoLabelCorrection(labels, (4, 4), 3, epoch_iters=1, queue=1, interval=1)
    x = torch.arange(1, 21, dtype=torch.float64)
    corr.history = torch.stack([0.01 * x, 1 - (1.05 - (x - 1) / 19) ** 3, 0.02 * x], dim=1)  # class 1 flattens
    pred = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1], [2, 1, 1, 1], [2, 2, 1, 1]], dtype=torch.uint8)
    conf = torch.tensor([[.99, .95, .60, .90], [.99, .85, .70, .97], [.99, .65, .75, .80], [.99, .99, .55, .91]])
    corr.pred[:] = pred
    corr.conf[:] = conf.half()
    corr.seen[:] = True
    corr.box[:] = torch.tensor([0, 4, 0, 4])
    return corr, labels, pred, conf


def test_correction_relabels_flattened_classes_above_their_quantile_only():
    corr, labels, pred, conf = _planted()
    corr.update_classes(done=5)
    assert corr.in_update.tolist() == [False, True, False] and int(corr.entered[1]) == 5
    corr.thresholds = class_quantiles(corr.pred[corr.seen], corr.conf[corr.seen], 3, 0.8)
    t1 = float(corr.thresholds[1])
    assert t1 == pytest.approx(np.quantile(conf.half()[pred == 1].double().numpy(), 0.8), abs=1e-7)
    corr.relabel(torch.tensor([0, 1]))
    take = (pred == 1) & (conf.half().float() >= t1)
    assert 0 < int(take.sum()) < int((pred == 1).sum())               # some of class 1, not all
    want = torch.where(take, torch.ones_like(labels[0]), labels[0])
    assert torch.equal(corr.labels[0], want)                          # only confident class-1 pixels changed
    assert torch.equal(corr.labels[1], labels[1])                     # its region holds no class of U: untouched
    assert int(corr.relabelled) == int((take & (labels[0] != 1)).sum())
    # one epoch after entering, the class leaves the update set; its curve restarts after the update
    corr.update_classes(done=6)
    assert corr.in_update.tolist() == [False, False, False] and int(corr.curve_start[1]) == 20


def test_correction_records_crops_unflipped_and_round_trips_its_state():
    labels = torch.randint(0, 3, (3, 6, 8), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    corr = PseudoLabelCorrection(labels, (4, 4), 3, epoch_iters=2, queue=2, interval=2)
    box, flip = torch.tensor([[1, 5, 2, 6], [2, 6, 4, 8]]), torch.tensor([True, False])
    got = corr.labels_for(torch.tensor([0, 2]), box, flip)
    assert torch.equal(got[0], labels[0, 1:5, 2:6].flip(-1).long()) and torch.equal(got[1], labels[2, 2:6, 4:8].long())
    pred = got.clone().to(torch.uint8)
    pred[0, 0, 0] = (pred[0, 0, 0] + 1) % 3                           # one wrong pixel in the flipped view
    conf = torch.rand(2, 4, 4)
    corr.record(torch.tensor([0, 2]), box, flip, pred, conf, got, done=2)
    assert torch.equal(corr.pred[0], pred[0].flip(-1)) and torch.equal(corr.conf[0], conf[0].flip(-1).half())
    assert corr.history.shape == (1, 3) and int(corr.fifo_size) == 2
    iou = corr.history[0]
    assert float(iou.min()) < 1.0 and float(iou.max()) <= 1.0
    fresh = PseudoLabelCorrection(labels, (4, 4), 3, epoch_iters=2, queue=2, interval=2)
    fresh.load_state_dict(corr.state_dict())
    for k, v in corr.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    for c in (corr, fresh):
        c.record(torch.tensor([1, 0]), box, ~flip, pred, conf, got, done=4)
    for k, v in corr.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k


# ------------------------------------------------------------------ one adaptation step
OPTS = dict(lr=1e-3, weight_decay=0.01, betas=[0.9, 0.999], head_lr_mult=10.0, prompt_lr_mult=5.0,
            entropy_weight=0.005, consistency_weight=1.0, confidence_threshold=0.8, prompt_weight=0.001,
            released=False)


def _step_inputs(seed=0, n=2, size=64):  # MiT: the 0.5 scale needs >= 32 pixels (8x8 sr conv)
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g)
    labels = torch.randint(0, 4, (n, size, size + 4), generator=g).to(torch.uint8)
    labels[0, :2] = 255
    box = torch.tensor([[0, size, 2, size + 2], [0, size, 4, size + 4]])[:n]
    flip = torch.tensor([False, True])[:n]
    batch = {"image": images, "index": torch.arange(n), "view": {"crop": box, "flip": flip}}
    return batch, labels


def _net(seed=0):
    from segcore.models.uvpt import build_uvpt, set_backbone_frozen
    torch.manual_seed(seed)
    net = build_uvpt("mit_small", 4, adapter=True)
    set_backbone_frozen(net)
    with torch.no_grad():  # confident predictions: the consistency mask and the scale weights take part
        net.head.classifier.bias.copy_(torch.tensor([4.0, 0.0, 0.0, 0.0]))
    return net.train()


def _golden_loss(net, images, labels):
    """The objective written out literally, independently of segcore.methods.uvpt_*."""
    size = images.shape[-2:]
    probs, logits, prompts = [], [], []
    for s in (1.0, 0.5, 2.0):
        x = images if s == 1.0 else F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=True)
        out = net(x)
        z = F.interpolate(out["out"], size=size, mode="bilinear", align_corners=True)
        logits.append(z)
        probs.append(z.softmax(1))
        prompts.append(out["prompts"])
    w = net.scale_weights.softmax(0)
    mix = (w[0] * probs[0] + w[1] * probs[1] + w[2] * probs[2]).clamp(1e-3, 1 - 1e-3)
    top = mix.detach().max(1).values * (labels != 255)
    mask = (top >= 0.8).float()
    cons = sum(F.kl_div(mix.log(), p, reduction="none").sum(1) * mask for p in probs).mean()
    p1 = probs[0]
    ent = -(p1 * p1.log()).sum(1) / math.log(4)
    # Lovasz: segcore's (checked against its definition above; the brute force is too slow at 64 x 64)
    seg = L.lovasz_softmax(p1, labels) + 0.005 * ((ent**2 + 1e-8) ** 2).mean()
    prompt = 0.0
    for i in range(4):
        fs = [F.interpolate(p[i], size=prompts[0][i].shape[-2:], mode="bilinear", align_corners=True)
              for p in prompts]
        m = (fs[0] + fs[1] + fs[2]) / 3
        prompt = prompt + sum(((f - m) ** 2).mean() for f in fs) / 3
    return seg + cons + 0.001 * prompt


def test_one_adaptation_step_matches_a_literal_re_derivation():
    from segcore.train.common import Accel
    from segcore.train.uvpt_adapt import train_step
    from segcore.train.uvpt_source import make_adamw

    batch, maps = _step_inputs()
    net = _net()
    ref = copy.deepcopy(net)
    corr = PseudoLabelCorrection(maps, (64, 64), 4, epoch_iters=10, queue=4, interval=10)
    labels = corr.labels_for(batch["index"], batch["view"]["crop"], batch["view"]["flip"])
    opt = make_adamw(net, OPTS, prompt_mult=OPTS["prompt_lr_mult"])
    torch.manual_seed(7)
    train_step(net, opt, corr, batch, OPTS, Accel(torch.device("cpu")), done=1)

    # the reference: the literal loss, AdamW over the trainable parameters with the official rule
    groups = {}
    for name, p in ref.named_parameters():
        if not p.requires_grad:
            continue
        mult = 10.0 if name.startswith("head.") else 5.0 if name.startswith("adapter.") else 1.0
        wd = 0.0 if "norm" in name else 0.01
        groups.setdefault((mult, wd), []).append(p)
    ref_opt = torch.optim.AdamW([{"params": ps, "lr": 1e-3 * m, "weight_decay": wd} for (m, wd), ps in groups.items()],
                                betas=(0.9, 0.999))
    torch.manual_seed(7)
    _golden_loss(ref, batch["image"], labels).backward()
    ref_opt.step()
    init = _net().state_dict()
    gmax = max(float(p.grad.abs().max()) for p in ref.parameters() if p.grad is not None)
    moved = 0
    for (name, a), b in zip(net.named_parameters(), ref.parameters()):
        if a.requires_grad:  # the same gradients, then the same AdamW update (where |g| >> Adam's eps)
            assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-6 * gmax), name
            sure = b.grad.abs() > 1e-6
            assert torch.allclose(a[sure], b[sure], atol=1e-6, rtol=0), name
            assert float((a - b).abs().max()) <= 2e-2, name                # at most 2 x the head's lr elsewhere
        else:
            assert torch.equal(a, b), name
        moved += int(not torch.equal(a, init[name]))
    # (at equal scale weights the consistency gradient on them is exactly 0: sum_s w_s (p_s - mix) = 0)
    assert moved > 0 and float(ref.scale_weights.grad.abs().max()) < 1e-9
    for name, buf in net.named_buffers():                             # BN statistics of the same forwards
        assert torch.allclose(buf.float(), dict(ref.named_buffers())[name].float(), atol=1e-6), name


def test_frozen_encoder_gets_no_gradient_and_does_not_move():
    from segcore.train.common import Accel
    from segcore.train.uvpt_adapt import train_step
    from segcore.train.uvpt_source import make_adamw

    batch, maps = _step_inputs(seed=1, n=1)
    net = _net(1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    corr = PseudoLabelCorrection(maps, (64, 64), 4, epoch_iters=10, queue=4, interval=10)
    opt = make_adamw(net, OPTS, prompt_mult=5.0)
    assert not any(p is q for g in opt.param_groups for p in g["params"] for q in net.backbone.parameters())
    train_step(net, opt, corr, batch, OPTS, Accel(torch.device("cpu")), done=1)
    assert all(p.grad is None for p in net.backbone.parameters())
    for k, v in net.backbone.state_dict().items():
        assert torch.equal(v, before["backbone." + k]), k
    assert not torch.equal(net.adapter.interactions[0].gamma, before["adapter.interactions.0.gamma"])
    assert not torch.equal(net.head.classifier.weight, before["head.classifier.weight"])


# ------------------------------------------------------------------ the training modules
COMMON = dict(amp=False, channels_last=False, compile=False, freeze_bn=False, log_every=1, checkpoint_every=2,
              betas=[0.9, 0.999], weight_decay=0.01, head_lr_mult=10.0)


@pytest.fixture(scope="module")
def tiny_uvpt(tmp_path_factory):
    from segcore.data import demo
    from segcore.data.convert import convert_dataset
    from segcore.data.datasets import SegmentationDataset
    from segcore.models.checkpoint import load_model
    from segcore.pseudo.generate import generate_hard
    from segcore.pseudo.store import HardWriter
    from segcore.train import uvpt_source

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("uvpt")
    demo.make_gta5(base / "gta", 4, size=(80, 44))
    demo.make_cityscapes(base / "cs", 4, 1, size=(128, 64))
    convert_dataset("gta5", base / "gta", base / "gta_c", workers=1, progress=False)
    convert_dataset("cityscapes", base / "cs", base / "cs_c", workers=1, progress=False)
    source = {"manifest": str(base / "gta_c/manifest.csv"), "split": "train", "resize": [80, 44]}
    opts = dict(COMMON, iterations=3, batch_size=2, lr=1e-3, schedule="warmup_poly", warmup_iterations=1,
                warmup_ratio=1e-6, poly_power=1.0, crop=[32, 32], base_width=80, scale_range=[1.0, 1.0], flip=0.5)
    meta = uvpt_source.run(uvpt_source.UVPTSourceJob(source=source, num_classes=19, backbone="mit_small", options=opts,
                                                     seed=0, out=str(base / "source.pt"), workdir=str(base / "w")),
                           log=lambda s: None)
    assert meta["stage"] == "uvpt_source" and meta["trainable_params"] == meta["total_params"]
    target = {"manifest": str(base / "cs_c/manifest.csv"), "split": "train", "resize": [128, 64]}
    model, _ = load_model(base / "source.pt")
    ds = SegmentationDataset(target["manifest"], "train", 19, resize=(128, 64), with_labels=False)
    with HardWriter(base / "hard.h5", ds.keys, (64, 128), num_classes=19, conf_encoding="float16") as w:
        generate_hard(model, ds, w, batch_size=2, flip=False)
    return base, target


def _adapt_job(base, target, out, **over):
    from segcore.train.uvpt_adapt import UVPTAdaptJob

    opts = dict(COMMON, **OPTS, iterations=6, batch_size=2, schedule="cosine", min_lr_ratio=1e-5, crop=[64, 64],
                flip=0.5, correction=dict(enabled=True, queue=2, interval=1, slope_threshold=0.0, quantile=0.5))
    opts.update(over)
    return UVPTAdaptJob(target=target, num_classes=19, options=opts, seed=0, init=str(base / "source.pt"),
                        pseudo_labels=str(base / "hard.h5"), out=str(out / "adapted.pt"), workdir=str(out / "work"))


class _Stop(Exception):
    pass


def test_adaptation_resumes_after_a_kill_with_the_same_corrected_labels(tiny_uvpt, tmp_path):
    from segcore.train import uvpt_adapt

    base, target = tiny_uvpt
    seen = {}

    def keep(done, logs):
        seen[done] = float(logs["relabelled"])

    meta = uvpt_adapt.run(_adapt_job(base, target, tmp_path / "ref"), log=lambda s: None, on_iteration=keep)
    ref = torch.load(tmp_path / "ref/adapted.pt", weights_only=True)
    assert meta["adapter"] and meta["frozen_backbone"] and meta["trainable_params"] < meta["total_params"]
    assert meta["relabelled_pixels"] > 0                              # the correction really ran and relabelled

    def stop_at_3(done, logs):
        if done == 3:
            raise _Stop
    with pytest.raises(_Stop):
        uvpt_adapt.run(_adapt_job(base, target, tmp_path / "cut"), log=lambda s: None, on_iteration=stop_at_3)
    saved = torch.load(tmp_path / "cut/work/resume.pt", weights_only=True)
    assert saved["iteration"] == 2 and "correction" in saved and saved["correction"]["seen"].any()
    lines = []
    got_meta = uvpt_adapt.run(_adapt_job(base, target, tmp_path / "cut"), log=lines.append)
    assert any("resumed from" in ln and "at iteration 2" in ln for ln in lines)
    got = torch.load(tmp_path / "cut/adapted.pt", weights_only=True)
    assert got_meta["relabelled_pixels"] == meta["relabelled_pixels"]
    assert got_meta["update_classes"] == meta["update_classes"]
    for k, v in ref["model"].items():
        assert torch.equal(v, got["model"][k]), k


def test_released_switch_trains_the_encoder(tiny_uvpt, tmp_path):
    from segcore.train import uvpt_adapt

    base, target = tiny_uvpt
    meta = uvpt_adapt.run(_adapt_job(base, target, tmp_path, iterations=1, released=True), log=lambda s: None)
    assert not meta["frozen_backbone"] and meta["trainable_params"] == meta["total_params"]


# ------------------------------------------------------------------ data parallel

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, base: str, target: dict, out: str) -> None:
    import os
    from pathlib import Path

    from segcore.train import distributed as D
    from segcore.train import uvpt_adapt

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    D.init(device="cpu")
    try:
        relabelled = []
        uvpt_adapt.run(_adapt_job(Path(base), target, Path(out)), log=lambda s: None,
                       on_iteration=lambda done, logs: relabelled.append(float(logs["relabelled"])))
        torch.save(relabelled, Path(out) / f"rank{rank}.pt")
    finally:
        D.shutdown()


def test_two_processes_share_one_correction_state(tiny_uvpt, tmp_path):
    """Two gloo processes, one image each of the global batch: each rank records the
    all-gathered predictions, boxes and flips of the whole batch, so the label maps, FIFO, IoU
    curves, update set and thresholds stay the same on both (the runner's end-of-run check
    compares them across ranks and raises otherwise)."""
    import torch.multiprocessing as mp

    base, target = tiny_uvpt
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(base), target, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0][-1] > 0 and ranks[0] == ranks[1]  # it relabelled, the same pixels on both ranks
    saved = torch.load(tmp_path / "adapted.pt", weights_only=True)
    assert saved["meta"]["relabelled_pixels"] == ranks[0][-1]


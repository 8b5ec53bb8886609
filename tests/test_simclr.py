"""SimCLR pretraining: NT-Xent, the views, the backbone view of DeepLabV2, the loop and its
output file (read by load_simclr_backbone), rolling resume and the CLI."""
from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segcore.data.io import write_png
from segcore.methods.simclr import Backbone, ProjectionHead, SimCLRAugment, SimCLRNet, nt_xent
from segcore.models.deeplabv2 import build_deeplabv2
from segcore.models.weights import BACKBONE_PREFIXES, load_simclr_backbone
from segcore.train import simclr_loop
from segcore.train.simclr_loop import SimCLRJob, TwoViewImages

ROOT = Path(__file__).resolve().parents[1]


def make_images(folder: Path, n=16, size=(64, 32), split="train", seed=0) -> Path:
    """``n`` random-texture images (smooth random colour fields + rectangles + noise) and a
    manifest.csv whose labels all point at one dummy PNG."""
    rng = np.random.default_rng(seed)
    w, h = size
    folder.mkdir(parents=True, exist_ok=True)
    dummy = folder / "dummy_label.png"
    write_png(dummy, np.zeros((h, w), np.uint8))
    rows = []
    for i in range(n):
        grid = rng.integers(0, 256, (4, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC)).astype(np.float64)
        for _ in range(3):
            x0, y0 = rng.integers(0, w - w // 4), rng.integers(0, h - h // 4)
            img[y0:y0 + rng.integers(h // 8, h // 2), x0:x0 + rng.integers(w // 8, w // 3)] = rng.integers(0, 256, 3)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        path = folder / f"{split}_{i}.png"
        write_png(path, img)
        rows.append((f"{split}/{i}", str(path), str(dummy), split, w, h))
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([("key", "image", "label", "split", "width", "height"), *rows])
    return manifest


# ----------------------------------------------------------------------------- loss

def nt_xent_loop(z1, z2, t):
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1).double()
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for a in range(n2):
        pos = (a + n) % n2
        den = sum(math.exp(float(z[a] @ z[k]) / t) for k in range(n2) if k != a)
        total += -math.log(math.exp(float(z[a] @ z[pos]) / t) / den)
    return total / n2


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_nt_xent_matches_brute_force(t):
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert nt_xent(z1, z2, t).item() == pytest.approx(nt_xent_loop(z1, z2, t), rel=1e-5)
    # scale-invariant (the embeddings are normalised); symmetric in the two views
    assert nt_xent(3 * z1, z2, t).item() == pytest.approx(nt_xent(z1, z2, t).item(), rel=1e-5)
    assert nt_xent(z2, z1, t).item() == pytest.approx(nt_xent(z1, z2, t).item(), rel=1e-5)


def test_nt_xent_prefers_matching_pairs():
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(16, 32, generator=g)
    z2 = z1 + 0.3 * torch.randn(16, 32, generator=g)
    shuffled = z2[torch.randperm(16, generator=g)]
    assert nt_xent(z1, z2).item() < nt_xent(z1, shuffled).item() - 1.0
    assert nt_xent(z1, z1).item() < nt_xent(z1, z2).item()
    with pytest.raises(ValueError):
        nt_xent(z1[:1], z2[:1])
    with pytest.raises(ValueError):
        nt_xent(z1, z2[:4])


def test_nt_xent_gradient_flows():
    z1 = torch.randn(4, 8, requires_grad=True)
    z2 = torch.randn(4, 8, requires_grad=True)
    nt_xent(z1, z2).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- views

def test_augment_views():
    aug = SimCLRAugment((24, 16))
    img = torch.rand(3, 40, 60)
    v1, v2 = aug.pair(img, torch.Generator().manual_seed(0))
    assert v1.shape == v2.shape == (3, 16, 24) and v1.dtype == torch.float32
    assert 0 <= v1.min() and v1.max() <= 1 and not torch.equal(v1, v2)
    again = aug.pair(img, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], v1) and torch.equal(again[1], v2)   # all draws from the generator
    other = aug.pair(img, torch.Generator().manual_seed(1))
    assert not torch.equal(other[0], v1)
    # batches: a tensor or a list of images of different sizes
    a, b = aug([torch.rand(3, 30, 50), torch.rand(3, 12, 20)], torch.Generator().manual_seed(0))
    assert a.shape == b.shape == (2, 3, 16, 24)
    a, _ = aug(torch.rand(3, 3, 20, 20))
    assert a.shape == (3, 3, 16, 24)
    with pytest.raises(ValueError):
        aug.view(torch.rand(1, 20, 20))


def test_augment_crop_box_and_probabilities():
    aug = SimCLRAugment((32, 16), scale=(0.2, 1.0))
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = aug.crop_box(30, 70, g)
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 70 and h > 0 and w > 0
    # an impossible scale range falls back to a centred box of the output's aspect ratio
    assert SimCLRAugment((32, 16), scale=(1.0, 1.0), ratio=(4.0, 4.0)).crop_box(30, 70) == (0, 5, 30, 60)
    # no colour change at all with every probability at 0 and full-image crops: identity (up to flip)
    plain = SimCLRAugment((20, 10), scale=(1.0, 1.0), ratio=(1.0, 1.0),
                          flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    img = torch.rand(3, 10, 20)
    torch.testing.assert_close(plain.view(img), img)
    gray = SimCLRAugment((20, 10), scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0.0, gray_p=1.0, blur_p=0.0).view(img)
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])


# ----------------------------------------------------------------------------- networks

def test_projection_head():
    for layers in (1, 2, 3):
        head = ProjectionHead(16, 32, out_dim=8, layers=layers)
        assert head(torch.randn(5, 16)).shape == (5, 8)
        assert sum(isinstance(m, torch.nn.Linear) for m in head.modules()) == layers


@pytest.mark.parametrize("bn_clr", [True, False])
def test_backbone_shares_model_modules(bn_clr):
    torch.manual_seed(0)
    model = build_deeplabv2(19, "small", bn_clr=bn_clr)
    bb = Backbone(model)
    assert bb.conv1 is model.conv1 and bb.layer4 is model.layer4
    assert (bb.bn_pretrain is model.bn_pretrain) if bn_clr else bb.bn_pretrain is None
    prefixes = BACKBONE_PREFIXES + (("bn_pretrain.",) if bn_clr else ())
    want = [k for k in model.state_dict() if k.startswith(prefixes)]
    assert sorted(bb.state_dict()) == sorted(want)
    assert {id(p) for p in bb.parameters()} <= {id(p) for p in model.parameters()}
    # the pooled output is the model's own backbone output (what layer5 sees), pooled
    model.eval()
    seen = {}
    model.layer5.register_forward_hook(lambda m, inp, out: seen.setdefault("x", inp[0]))
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        model(x)
        torch.testing.assert_close(bb(x), seen["x"].mean(dim=(2, 3)))
    net = SimCLRNet(model, out_dim=16)
    assert net(x).shape == (2, 16)


# ----------------------------------------------------------------------------- loop

FAST = {"batch_size": 16, "crop": [48, 24], "lr": 1e-3, "temperature": 0.2, "warmup": 0.0,
        "strength": 0.4, "scale_range": [0.5, 1.0], "blur_p": 0.0, "log_every": 5, "checkpoint_every": 100}


def _job(tmp_path, manifest, name, **options):
    return SimCLRJob(images=[{"manifest": str(manifest), "split": "train", "resize": None}], arch="small",
                     num_classes=19, options=dict(FAST, **options), seed=3,
                     out=str(tmp_path / name / "simclr.pt"), workdir=str(tmp_path / name / "work"))


def test_pretraining_reduces_loss_and_writes_loadable_backbone(tmp_path):
    torch.set_num_threads(1)
    manifest = make_images(tmp_path / "data")
    # mild views (no colour jitter, large crops) so that 30 iterations show a clear drop; the
    # mean loss of iterations 1-10 vs 21-30 (about 2.6-3.0 -> 1.7-2.2 over seeds 3-5)
    job = _job(tmp_path, manifest, "run", iterations=30, strength=0.0, scale_range=[0.6, 1.0], log_every=10)
    meta = simclr_loop.run(job, log=lambda s: None)
    first, last = meta["loss_history"][0][1], meta["loss_history"][-1][1]
    assert [i for i, _ in meta["loss_history"]] == [10, 20, 30]
    assert last < first - 0.4, meta["loss_history"]

    obj = torch.load(job.out, map_location="cpu", weights_only=True)
    assert set(obj) == {"state_dict", "meta"}
    sd = obj["state_dict"]
    model = build_deeplabv2(19, "small", bn_clr=True)
    want = [k for k in model.state_dict() if k.startswith(BACKBONE_PREFIXES + ("bn_pretrain.",))]
    assert sorted(sd) == sorted(want)                       # backbone only, DeepLabV2 key names
    assert obj["meta"]["stage"] == "simclr" and obj["meta"]["arch"] == "small" and obj["meta"]["bn_clr"] is True
    assert obj["meta"]["iterations"] == 30 and obj["meta"]["loss_last"] == last
    copied = load_simclr_backbone(model, job.out)
    assert sorted(copied) == sorted(sd)                     # every key copied
    msd = model.state_dict()
    assert all(torch.equal(msd[k], sd[k]) for k in sd)
    assert not any(k.startswith("layer5.") for k in sd)
    assert not Path(job.workdir, "resume.pt").exists()      # resume state cleared at the end
    # a model built without bn_clr takes the backbone and ignores bn_pretrain
    plain = build_deeplabv2(19, "small", bn_clr=False)
    assert sorted(load_simclr_backbone(plain, job.out)) == sorted(k for k in sd if not k.startswith("bn_pretrain."))


class Stop(Exception):
    pass


def test_resume_continues_from_saved_iteration(tmp_path):
    torch.set_num_threads(1)
    manifest = make_images(tmp_path / "data", n=8, size=(32, 16))
    opts = dict(iterations=6, checkpoint_every=3, log_every=3, batch_size=4, crop=[24, 16])
    ref = _job(tmp_path, manifest, "ref", **opts)
    ref_meta = simclr_loop.run(ref, log=lambda s: None)

    job = _job(tmp_path, manifest, "cut", **opts)
    seen = []

    def crash(done, loss):
        seen.append(done)
        if done == 5:
            raise Stop

    with pytest.raises(Stop):
        simclr_loop.run(job, log=lambda s: None, on_iteration=crash)
    assert seen == [1, 2, 3, 4, 5] and not Path(job.out).exists()
    state = torch.load(Path(job.workdir) / "resume.pt", weights_only=True)
    assert state["iteration"] == 3

    logs, seen = [], []
    meta = simclr_loop.run(job, log=logs.append, on_iteration=lambda d, l: seen.append(d))
    assert any("at iteration 3" in s for s in logs) and seen == [4, 5, 6]
    assert meta["loss_history"] == ref_meta["loss_history"]
    a = torch.load(ref.out, weights_only=True)["state_dict"]
    b = torch.load(job.out, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)   # same as uninterrupted

    # a resume state written under other settings is not reused
    other = _job(tmp_path, manifest, "cut", **dict(opts, lr=5e-4))
    with pytest.raises(Stop):
        simclr_loop.run(other, log=lambda s: None, on_iteration=crash)
    logs = []
    again = simclr_loop.run(_job(tmp_path, manifest, "cut", **opts), log=logs.append)
    assert not any("resumed" in s for s in logs) and again["loss_history"] == ref_meta["loss_history"]


def test_two_image_sets_of_different_sizes(tmp_path):
    src = make_images(tmp_path / "src", n=5, size=(40, 24), seed=1)
    tgt = make_images(tmp_path / "tgt", n=4, size=(32, 16), seed=2)
    aug = SimCLRAugment((16, 8))
    ds = TwoViewImages([{"manifest": str(tgt), "split": "train"},
                        {"manifest": str(src), "split": "train", "resize": [20, 12]}], 19, aug)
    assert len(ds) == 9
    assert ds.load_image(3).shape == (3, 16, 32) and ds.load_image(4).shape == (3, 12, 20)
    item = ds[(6, 123)]
    assert item["view1"].shape == item["view2"].shape == (3, 8, 16) and item["index"] == 6
    assert torch.equal(ds[(6, 123)]["view1"], item["view1"])
    with pytest.raises(ValueError, match="unknown SimCLR option"):
        simclr_loop.merged_options({"iters": 3})


def test_cli(tmp_path, monkeypatch):
    manifest = make_images(tmp_path / "data", n=4, size=(32, 16))
    spec = importlib.util.spec_from_file_location("train_simclr", ROOT / "workflow_scripts" / "train_simclr.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "out" / "simclr.pt"
    import json
    cli.main(["--images", json.dumps([{"manifest": str(manifest), "split": "train", "resize": None}]),
              "--arch", "small", "--num-classes", "16", "--seed", "0", "--out", str(out),
              "--workdir", str(tmp_path / "work"), "--threads", "1",
              "--options", json.dumps({"iterations": 2, "batch_size": 4, "crop": [16, 8], "log_every": 1})])
    obj = torch.load(out, weights_only=True)
    assert obj["meta"]["num_classes"] == 16 and obj["meta"]["iterations"] == 2
    assert len(load_simclr_backbone(build_deeplabv2(16, "small", bn_clr=True), out)) == len(obj["state_dict"])

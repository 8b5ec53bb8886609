"""generate_soft / generate_hard against a brute-force computation with a tiny stand-in model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from segcore.pseudo.generate import generate_hard, generate_soft
from segcore.pseudo.store import HardStore, HardWriter, SoftStore, SoftWriter

C, H, W = 5, 20, 30  # images [3, 20, 30]; the model's output stride is 2 -> [5, 10, 15]


class TinyNet(nn.Module):
    """Stride-2 conv + dropout (so eval mode matters); returns {"out": logits, "feat": ...}."""

    def __init__(self, fail_at_call=None):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, C, 3, stride=2, padding=1)
        with torch.no_grad():
            self.conv.weight.mul_(8)  # confident enough that some pixels pass 0.95
        self.drop = nn.Dropout2d(0.5)
        self.calls, self.fail_at_call = 0, fail_at_call

    def forward(self, x):
        self.calls += 1
        if self.fail_at_call is not None and self.calls >= self.fail_at_call:
            raise RuntimeError("crash during generation")
        out = self.drop(self.conv(x))
        return {"out": out, "feat": out}


class Images(torch.utils.data.Dataset):
    def __init__(self, n=7, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, H, W, generator=g)
        self.images[:, :, :, : W // 3] *= 0.2  # left-right asymmetric, so the flip matters
        self.keys = [f"city/img{i}" for i in range(n)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "index": i}


def brute_soft(model, x):
    return F.softmax(model(x[None])["out"], 1)[0]


def brute_hard(model, x, size, flip=True):
    up = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=True)  # noqa: E731
    p = up(F.softmax(model(x[None])["out"], 1))
    if flip:
        p = (p + up(F.softmax(model(x[None].flip(-1))["out"], 1)).flip(-1)) / 2
    return p[0]


def test_generate_soft_matches_brute_force(tmp_path):
    ds, model = Images(), TinyNet()
    model.train()
    with SoftWriter(tmp_path / "soft.h5", ds.keys, C, (H // 2, W // 2)) as w:
        generate_soft(model, ds, w, batch_size=3)
    assert model.training  # mode restored
    store = SoftStore(tmp_path / "soft.h5", expect_keys=ds.keys, expect_classes=C)
    model.eval()
    with torch.no_grad():
        for i in range(len(ds)):
            ref = brute_soft(model, ds.images[i])
            torch.testing.assert_close(store[i], ref.half().float(), rtol=0, atol=1e-3)


@pytest.mark.parametrize("flip", [True, False])
def test_generate_hard_matches_brute_force(tmp_path, flip):
    ds, model = Images(), TinyNet()
    with HardWriter(tmp_path / "hard.h5", ds.keys, (H, W), num_classes=C, conf_encoding="float16") as w:
        generate_hard(model, ds, w, batch_size=4, flip=flip)
    store = HardStore(tmp_path / "hard.h5", expect_keys=ds.keys, expect_classes=C)
    model.eval()
    n_confident = 0
    with torch.no_grad():
        for i in range(len(ds)):
            p = brute_hard(model, ds.images[i], (H, W), flip)
            conf, label = p.max(0)
            other = brute_hard(model, ds.images[i], (H, W), not flip).argmax(0)
            lab, cf = store.get(i)
            top2 = p.topk(2, 0).values
            clear = top2[0] - top2[1] > 1e-4
            assert torch.equal(lab[clear], label[clear])
            torch.testing.assert_close(cf, conf, rtol=0, atol=1e-3)
            if flip:
                assert not torch.equal(lab, other)  # the flip average changes labels
            ref = label.clone()
            ref[torch.from_numpy(conf.numpy().astype(np.float16) <= 0.95)] = 255
            assert torch.equal(store.thresholded(i, 0.95)[clear], ref[clear])
            n_confident += int((ref != 255).sum())
    assert n_confident > 0


def test_generate_hard_output_size_and_grid_store(tmp_path):
    ds, model = Images(3), TinyNet()
    size = (2 * H, 2 * W)
    with HardWriter(tmp_path / "hard.h5", ds.keys, size, num_classes=C) as w:
        generate_hard(model, ds, w, batch_size=2, output_size=size)
    store = HardStore(tmp_path / "hard.h5")
    model.eval()
    with torch.no_grad():
        p = brute_hard(model, ds.images[1], size)
    conf, label = p.max(0)
    ref = label.clone()
    ref[torch.from_numpy(conf.numpy().astype(np.float16) <= 0.95)] = 255
    top2 = p.topk(2, 0).values
    clear = (top2[0] - top2[1] > 1e-4) & ((conf - 0.95).abs() > 1e-3)
    assert torch.equal(store.thresholded(1, 0.95)[clear], ref[clear])
    with pytest.raises(ValueError, match="output size"):
        with HardWriter(tmp_path / "bad.h5", ds.keys, (H, W)) as w:
            generate_hard(model, ds, w, output_size=size)


def test_crash_during_generation_leaves_no_store(tmp_path):
    ds = Images()
    for make, run in (
        (lambda: SoftWriter(tmp_path / "soft.h5", ds.keys, C, (H // 2, W // 2)), generate_soft),
        (lambda: HardWriter(tmp_path / "hard.h5", ds.keys, (H, W)), generate_hard),
    ):
        with pytest.raises(RuntimeError, match="crash during generation"):
            with make() as w:
                run(TinyNet(fail_at_call=3), ds, w, batch_size=2)
    assert not any(tmp_path.iterdir())


def test_generation_checks_keys_and_sizes(tmp_path):
    ds, model = Images(3), TinyNet()
    with pytest.raises(ValueError, match="not the dataset's keys"):
        with SoftWriter(tmp_path / "s.h5", ds.keys[::-1], C, (H // 2, W // 2)) as w:
            generate_soft(model, ds, w)
    with pytest.raises(ValueError, match="the model gives"):
        with SoftWriter(tmp_path / "s.h5", ds.keys, C, (H, W)) as w:
            generate_soft(model, ds, w)
    assert not any(tmp_path.iterdir())

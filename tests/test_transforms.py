"""WeakView (recorded parameters) and apply_view (replay on other maps)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import default_collate

from segcore.data.transforms import WeakView, apply_view

H, W = 53, 97


def _smooth(h=H, w=W):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return (torch.sin(3 * xx + 1) + torch.cos(2 * yy)) / 4 + 0.5


def _label(seed=0, h=H, w=W):
    return torch.randint(0, 19, (h, w), generator=torch.Generator().manual_seed(seed))


def _full2weak(x, p, stride):
    """The official full2weak on one sample (interpolate + slicing), as an oracle."""
    h, w = p["size"].tolist()
    y1, y2, x1, x2 = p["crop"].tolist()
    out = F.interpolate(x[None], size=[int(h / stride), int(w / stride)], mode="bilinear", align_corners=True)
    y1, th, x1, tw = int(y1 / stride), int((y2 - y1) / stride), int(x1 / stride), int((x2 - x1) / stride)
    out = out[:, :, y1:y1 + th, x1:x1 + tw]
    return (out.flip(3) if bool(p["flip"]) else out)[0]


def test_params_recorded_and_consistent():
    view = WeakView(base_width=120, crop=(48, 24))
    gen = torch.Generator().manual_seed(0)
    img = _smooth()[None].repeat(3, 1, 1)
    flips = []
    for _ in range(40):
        out, lab, p = view(img, _label(), gen)
        assert set(p) == {"size", "crop", "flip"}
        assert p["size"].dtype == p["crop"].dtype == torch.int64 and p["flip"].dtype == torch.bool
        h, w = p["size"].tolist()
        y1, y2, x1, x2 = p["crop"].tolist()
        assert 60 <= w <= 180 and h == int(w / (W / H))
        assert (y2 - y1, x2 - x1) == (24, 48) and 0 <= y1 and y2 <= h and 0 <= x1 and x2 <= w
        assert out.shape == (3, 24, 48) and lab.shape == (24, 48) and lab.dtype == torch.int64
        flips.append(bool(p["flip"]))
    assert 5 < sum(flips) < 35
    batch = default_collate([view(img, None, gen)[2] for _ in range(3)])
    assert batch["size"].shape == (3, 2) and batch["crop"].shape == (3, 4) and batch["flip"].shape == (3,)


def test_label_view_is_pil_nearest_and_apply_view_reproduces_it():
    view = WeakView(base_width=150, crop=(64, 32))
    gen = torch.Generator().manual_seed(1)
    img, label = _smooth()[None].repeat(3, 1, 1), _label()
    for _ in range(20):
        _, lab, p = view(img, label, gen)
        assert torch.equal(apply_view(label, p, "nearest"), lab)
        h, w = p["size"].tolist()
        y1, y2, x1, x2 = p["crop"].tolist()
        pil = np.asarray(Image.fromarray(label.numpy().astype(np.uint8)).resize((w, h), Image.NEAREST))[y1:y2, x1:x2]
        if p["flip"]:
            pil = pil[:, ::-1]
        np.testing.assert_array_equal(lab.numpy(), pil)


def test_apply_view_bilinear_matches_image_warp_on_smooth_map():
    view = WeakView(base_width=150, crop=(64, 32))
    gen = torch.Generator().manual_seed(2)
    m = _smooth()
    for _ in range(20):
        out, _, p = view(m[None].repeat(3, 1, 1), None, gen)
        warped = apply_view(m[None], p, "bilinear")
        # the image is resized like PIL (half-pixel centres, antialiased), the map with
        # align_corners=True like the official code: equal up to sub-pixel interpolation
        assert (warped[0] - out[0]).abs().max() < 0.02
        np.testing.assert_allclose(warped[0], out[1], atol=0.02)


def test_apply_view_matches_official_full2weak_at_stride():
    view = WeakView(base_width=200, crop=(96, 48))
    gen = torch.Generator().manual_seed(3)
    feat = torch.randn(5, 27, 48, generator=gen)  # e.g. features at 1/4 of a 108x192 image
    for _ in range(10):
        p = view.sample(108, 192, gen)
        torch.testing.assert_close(apply_view(feat, p, "bilinear", stride=4), _full2weak(feat, p, 4),
                                   atol=1e-4, rtol=1e-4)
        assert apply_view(feat, p, "bilinear", stride=4).shape == (5, 12, 24)


def test_apply_view_batch_equals_per_sample():
    view = WeakView(base_width=150, crop=(64, 32))
    gen = torch.Generator().manual_seed(4)
    ps = [view.sample(H, W, gen) for _ in range(4)]
    batch = default_collate(ps)
    soft = torch.rand(4, 19, 14, 25, generator=gen)  # soft labels at 1/4 resolution
    labels = torch.stack([_label(s) for s in range(4)])
    out_soft = apply_view(soft, batch, "bilinear", stride=2)
    out_lab = apply_view(labels, batch, "nearest")
    assert out_soft.shape == (4, 19, 16, 32) and out_lab.shape == (4, 32, 64)
    for i, p in enumerate(ps):
        torch.testing.assert_close(out_soft[i], apply_view(soft[i], p, "bilinear", stride=2))
        torch.testing.assert_close(out_soft[i], _full2weak(soft[i], p, 2), atol=1e-4, rtol=1e-4)
        assert torch.equal(out_lab[i], apply_view(labels[i], p, "nearest"))


def test_flip():
    m = _smooth()
    img = m[None].repeat(3, 1, 1)
    label = _label()
    a = WeakView(100, (40, 20), scale_range=(1.0, 1.0), flip_p=0.0)
    b = WeakView(100, (40, 20), scale_range=(1.0, 1.0), flip_p=1.0)
    ia, la, pa = a(img, label, torch.Generator().manual_seed(5))
    ib, lb, pb = b(img, label, torch.Generator().manual_seed(5))
    assert not pa["flip"] and pb["flip"]
    assert torch.equal(pa["crop"], pb["crop"]) and torch.equal(pa["size"], pb["size"])
    assert torch.equal(ib, ia.flip(-1)) and torch.equal(lb, la.flip(-1))
    assert torch.equal(apply_view(m[None], pb, "bilinear"), apply_view(m[None], pa, "bilinear").flip(-1))


def test_determinism_with_seeded_generator():
    view = WeakView(150, (64, 32))
    img, label = torch.rand(3, H, W), _label()
    r1 = [view(img, label, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(r1[0][0], r1[1][0]) and torch.equal(r1[0][1], r1[1][1])
    assert all(torch.equal(r1[0][2][k], r1[1][2][k]) for k in ("size", "crop", "flip"))
    gen = torch.Generator().manual_seed(7)
    seq = [view.sample(H, W, gen)["crop"] for _ in range(5)]
    assert len({tuple(c.tolist()) for c in seq}) > 1
    torch.manual_seed(0)  # without a generator: torch's global RNG
    a = view(img, label)[2]
    torch.manual_seed(0)
    b = view(img, label)[2]
    assert torch.equal(a["crop"], b["crop"])


def test_small_scaled_image_is_padded():
    view = WeakView(base_width=60, crop=(80, 40), scale_range=(1.0, 1.0), flip_p=0.0)
    img, label = torch.rand(3, 30, 60) + 0.5, _label(h=30, w=60)
    out, lab, p = view(img, label, torch.Generator().manual_seed(0))
    assert p["size"].tolist() == [30, 60] and p["crop"].tolist() == [0, 40, 0, 80]
    assert out.shape == (3, 40, 80) and lab.shape == (40, 80)
    assert (out[:, 30:] == 0).all() and (out[:, :, 60:] == 0).all() and (out[:, :30, :60] > 0).all()
    assert (lab[30:] == 255).all() and (lab[:, 60:] == 255).all() and torch.equal(lab[:30, :60], label)
    soft = apply_view(torch.ones(2, 30, 60), p, "bilinear")
    assert (soft[:, 30:] == 0).all() and (soft[:, :30, :60] == 1).all()
    flipped = WeakView(60, (80, 40), (1.0, 1.0), flip_p=1.0)
    _, lab_f, p_f = flipped(img, label, torch.Generator().manual_seed(0))
    assert torch.equal(lab_f, lab.flip(-1)) and torch.equal(apply_view(label, p_f, "nearest"), lab_f)


def test_bad_mode():
    p = WeakView(100, (40, 20)).sample(H, W)
    with pytest.raises(ValueError):
        apply_view(torch.rand(1, H, W), p, "bicubic")
    with pytest.raises(ValueError):
        apply_view(_label(), p, "bilinear")

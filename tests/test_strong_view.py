"""StrongView (RandAugmentMC + cutout with recorded params) and warp_to_strong (replay on other maps)."""
from __future__ import annotations

import numpy as np
import PIL.ImageDraw
import PIL.ImageEnhance
import PIL.ImageFilter
import PIL.ImageOps
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import default_collate

from segcore.data.strong_view import (
    GEOMETRIC_OPS,
    OPS,
    PHOTOMETRIC_OPS,
    StrongView,
    apply_strong,
    op_value,
    strong_params,
    warp_to_strong,
)

H, W = 128, 224  # the aspect ratio of the official 512x896 crop
SQ = 32  # checkerboard square: a whole number of pixels at 1/8
LO, HI = 0.1, 0.9
GREY = 127 / 255
GEOM = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


def _checker_label(stride: int = 1, h: int = H, w: int = W) -> torch.Tensor:
    s = SQ // stride
    r = torch.arange(h // stride) // s
    c = torch.arange(w // stride) // s
    return ((r[:, None] + c[None, :]) % 2).long()


def _checker_image(h: int = H, w: int = W) -> torch.Tensor:
    lab = _checker_label(1, h, w).float()
    return (LO + (HI - LO) * lab)[None].repeat(3, 1, 1)


def _smooth_image(h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([torch.sin(5 * xx + 1) * 0.4 + 0.5, torch.cos(4 * yy) * 0.4 + 0.5, xx * yy])
    return (img.clamp(0, 1) * 255).round() / 255  # exactly representable in uint8


def _assert_label_matches_image(params, min_pure=0.3):
    """Warp the checkerboard image and labels at strides 1, 4, 8 and compare them block-wise."""
    img = apply_strong(_checker_image(), params)[0]
    for stride in (1, 4, 8):
        lab = warp_to_strong(_checker_label(stride), params, "nearest", fill=255)
        assert lab.shape == (H // stride, W // stride)
        mx = F.max_pool2d(img[None, None], stride)[0, 0]
        mn = -F.max_pool2d(-img[None, None], stride)[0, 0]
        pure0, pure1 = mx < 0.3, mn > 0.7  # blocks well inside one square
        grey = (mx - GREY).abs().lt(1e-4) & (mn - GREY).abs().lt(1e-4)  # blocks all fill
        pure = pure0 | pure1
        assert pure.float().mean() > min_pure, "the test would be vacuous"
        agree = ((lab == 0) & pure0) | ((lab == 1) & pure1)
        assert agree.sum() >= 0.99 * pure.sum(), f"stride {stride}: {agree.sum()}/{pure.sum()} pure blocks agree"
        if grey.any():
            assert ((lab == 255) & grey).sum() >= 0.99 * grey.sum(), f"stride {stride}: fill pixels disagree"
        # the label is never fill where the image shows content
        assert ((lab == 255) & pure).sum() <= 0.01 * pure.sum()


# ----------------------------------------------------------------------------------------------
# geometric ops one by one, and composed


@pytest.mark.parametrize("flip", [False, True])
def test_flip_alone(flip):
    p = strong_params(H, W, flip=flip)
    _assert_label_matches_image(p, min_pure=0.9)
    lab = _checker_label(4)
    out = warp_to_strong(lab, p)
    assert torch.equal(out, lab.flip(-1) if flip else lab)


@pytest.mark.parametrize("name", GEOM)
@pytest.mark.parametrize("negative", [False, True])
def test_each_geometric_op_alone(name, negative):
    for v in (3, 9):
        value = op_value(name, v, H, W, negative)
        _assert_label_matches_image(strong_params(H, W, [(name, value)]))
    _assert_label_matches_image(strong_params(H, W, [(name, value)], flip=True))


def test_random_compositions():
    view = StrongView(n_ops=3, cutout=True, pool=GEOM)
    gen = torch.Generator().manual_seed(1)
    n_applied = 0
    for _ in range(8):
        p = view.sample(H, W, gen)
        n_applied += int(p["op_applied"].sum())
        _assert_label_matches_image(p, min_pure=0.15)
    assert n_applied >= 6


def test_replay_follows_the_order_applied():
    a = strong_params(H, W, [("Rotate", 21.0), ("TranslateX", 0.25)])
    b = strong_params(H, W, [("TranslateX", 0.25), ("Rotate", 21.0)])
    la, lb = warp_to_strong(_checker_label(4), a), warp_to_strong(_checker_label(4), b)
    assert (la != lb).float().mean() > 0.05  # the two orders differ ...
    _assert_label_matches_image(a)  # ... and each label follows its own image
    _assert_label_matches_image(b)


def test_intermediate_fill_is_tracked():
    # translating right then back left leaves the official grey strip: the image lost it at step 1
    f = 64 / W
    p = strong_params(H, W, [("TranslateX", -f), ("TranslateX", f)])
    img = apply_strong(_checker_image(), p)
    lab = warp_to_strong(_checker_label(1), p)
    grey = (img[0] - GREY).abs() < 1e-6
    assert torch.equal(grey, lab == 255)
    assert grey[:, W - 64:].all() and not grey[:, : W - 64].any()
    assert torch.equal(lab[:, : W - 64], _checker_label(1)[:, : W - 64])


def test_duplicate_op_is_warped_twice():
    f = 0.125  # 28 px of 224, 7 px of 56
    p = strong_params(H, W, [("TranslateX", f), ("TranslateX", f)])
    for stride in (1, 4):
        w = W // stride
        cols = torch.arange(w).expand(H // stride, w)
        out = warp_to_strong(cols, p, fill=-1)
        shift = round(2 * f * w)
        assert torch.equal(out[:, : w - shift], cols[:, shift:])
        assert (out[:, w - shift:] == -1).all()
    _assert_label_matches_image(p)


@pytest.mark.parametrize("axis", ["x", "y"])
def test_translate_moves_the_label_by_the_image_fraction(axis):
    # the official label warp normalised TranslateX by the height: on a 128x224 map the label
    # moved 1.75 times further than the image; here the fraction is the same at every resolution
    f = 0.25
    name = "TranslateX" if axis == "x" else "TranslateY"
    p = strong_params(H, W, [(name, -f)])
    img = apply_strong(_checker_image(), p)
    for stride in (1, 4, 8):
        h, w = H // stride, W // stride
        idx = torch.arange(w).expand(h, w) if axis == "x" else torch.arange(h)[:, None].expand(h, w)
        out = warp_to_strong(idx, p, fill=-1)
        n = w if axis == "x" else h
        shift = round(f * n)
        if axis == "x":
            assert torch.equal(out[:, shift:], idx[:, : w - shift]) and (out[:, :shift] == -1).all()
        else:
            assert torch.equal(out[shift:], idx[: h - shift]) and (out[:shift] == -1).all()
    # and the image moved by the same fraction of its size
    grey = (img[0] - GREY).abs() < 1e-6
    if axis == "x":
        assert grey[:, : round(f * W)].all() and not grey[:, round(f * W):].any()
    else:
        assert grey[: round(f * H)].all() and not grey[round(f * H):].any()


def test_cutout_pixels_are_fill():
    p = strong_params(H, W, cutout=(100, 40, 185, 125))
    img = apply_strong(_checker_image(), p)
    lab = warp_to_strong(_checker_label(1), p)
    grey = (img - GREY).abs().lt(1e-6).all(0)
    assert torch.equal(grey, lab == 255)
    assert grey.sum() == 86 * 86  # PIL's rectangle includes its end pixels
    assert grey[40:126, 100:186].all()
    for stride in (4, 8):
        lab = warp_to_strong(_checker_label(stride), p)
        cut = (lab == 255).nonzero()
        # the pixels whose centre lies in the box
        assert cut[:, 0].min() * stride + stride / 2 >= 40 and cut[:, 0].max() * stride + stride / 2 < 126
        assert cut[:, 1].min() * stride + stride / 2 >= 100 and cut[:, 1].max() * stride + stride / 2 < 186
    # a float map: the caller's fill marks the dropped pixels
    dist = torch.rand(5, H // 4, W // 4)
    out = warp_to_strong(dist, p, "bilinear", fill=-1.0)
    assert torch.equal(out == -1, (warp_to_strong(_checker_label(4), p) == 255)[None].expand_as(out))


def test_sampled_cutout_follows_the_official_formula():
    view = StrongView(n_ops=0)
    gen = torch.Generator().manual_seed(0)
    side = min(H, W) // 3
    for _ in range(50):
        p = view.sample(H, W, gen)
        assert bool(p["has_cutout"])
        x0, y0, x1, y1 = p["cutout"].tolist()
        wpx, hpx = (x1 - x0) * W / 2, (y1 - y0) * H / 2
        assert 1 <= round(wpx) <= side + 1 and 1 <= round(hpx) <= side + 1
        assert round(wpx) == side + 1 or x1 == pytest.approx(1.0)  # clipped at the right only
        assert round(hpx) == side + 1 or y1 == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------
# the official image ops (PIL) as an oracle


def _pil(img: torch.Tensor) -> Image.Image:
    return Image.fromarray((img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())


def _from_pil(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255


def test_image_ops_match_pil():
    h, w = 60, 100
    img = _smooth_image(h, w)
    pil = _pil(img)
    bil, grey = Image.BILINEAR, (127, 127, 127)
    cases = []
    for s in (0.21, -0.27):
        cases += [
            ("ShearX", s, pil.transform(pil.size, Image.AFFINE, (1, s, 0, 0, 1, 0), resample=bil, fillcolor=grey)),
            ("ShearY", s, pil.transform(pil.size, Image.AFFINE, (1, 0, 0, s, 1, 0), resample=bil, fillcolor=grey)),
            ("TranslateX", int(s * w) / w,
             pil.transform(pil.size, Image.AFFINE, (1, 0, int(s * w), 0, 1, 0), resample=bil, fillcolor=grey)),
            ("TranslateY", int(s * h) / h,
             pil.transform(pil.size, Image.AFFINE, (1, 0, 0, 0, 1, int(s * h)), resample=bil, fillcolor=grey)),
        ]
    for a in (27, -12):
        cases.append(("Rotate", a, pil.rotate(a, resample=bil, fillcolor=grey)))
    cases += [
        ("AutoContrast", 0, PIL.ImageOps.autocontrast(pil)),
        ("Equalize", 0, PIL.ImageOps.equalize(pil)),
        ("Posterize", 5, PIL.ImageOps.posterize(pil, 5)),
        ("Solarize", 128, PIL.ImageOps.solarize(pil, 128)),
        ("Brightness", 0.5, PIL.ImageEnhance.Brightness(pil).enhance(0.5)),
        ("Color", 0.23, PIL.ImageEnhance.Color(pil).enhance(0.23)),
        ("Contrast", 0.32, PIL.ImageEnhance.Contrast(pil).enhance(0.32)),
        ("Sharpness", 0.14, PIL.ImageEnhance.Sharpness(pil).enhance(0.14)),
        ("Sharpness", 0.86, PIL.ImageEnhance.Sharpness(pil).enhance(0.86)),
    ]
    for name, value, ref in cases:
        ours = apply_strong(img, strong_params(h, w, [(name, value)]))
        diff = (ours - _from_pil(ref)).abs() * 255
        assert diff.max() <= 1.5, f"{name}({value}): max diff {diff.max():.2f}/255 from PIL"
    hflip = apply_strong(img, strong_params(h, w, flip=True))
    assert torch.equal(hflip, img.flip(-1))
    cut = pil.copy()
    PIL.ImageDraw.Draw(cut).rectangle((80, 50, 100, 60), grey)  # clipped at the corner
    ours = apply_strong(img, strong_params(h, w, cutout=(80, 50, 100, 60)))
    assert torch.allclose(ours, _from_pil(cut), atol=1e-6)
    blur = apply_strong(img, strong_params(h, w, blur=True))
    assert ((blur - _from_pil(pil.filter(PIL.ImageFilter.GaussianBlur(1.0)))).abs() * 255).max() <= 2.0


def test_sampled_magnitudes_follow_the_official_pool():
    view = StrongView()
    gen = torch.Generator().manual_seed(3)
    ps = [view.sample(512, 896, gen) for _ in range(600)]
    mags = torch.stack([p["op_magnitude"] for p in ps]).flatten()
    assert set(mags.tolist()) == set(range(1, 10))  # np.random.randint(1, 10)
    applied = torch.stack([p["op_applied"] for p in ps]).float().mean()
    assert 0.45 < applied < 0.55
    flips = torch.stack([p["flip"] for p in ps]).float().mean()
    assert 0.43 < flips < 0.57
    ids = torch.stack([p["op_id"] for p in ps]).flatten()
    assert set(ids.tolist()) == set(range(len(OPS)))
    for p in ps:
        for i, v, val in zip(p["op_id"].tolist(), p["op_magnitude"].tolist(), p["op_value"].tolist()):
            name = OPS[i]
            if name == "Rotate":
                assert abs(val) == int(v * 30 / 10)
            elif name in ("ShearX", "ShearY"):
                assert abs(val) == pytest.approx(v * 0.3 / 10)
            elif name == "TranslateX":
                assert abs(val) * 896 == pytest.approx(int(v * 0.3 / 10 * 896))
            elif name == "TranslateY":
                assert abs(val) * 512 == pytest.approx(int(v * 0.3 / 10 * 512))
            elif name in ("Brightness", "Color", "Contrast", "Sharpness"):
                assert val == pytest.approx(v * 0.9 / 10 + 0.05)
            elif name == "Posterize":
                assert val == int(v * 4 / 10) + 4
            elif name == "Solarize":
                assert val == 256 - int(v * 256 / 10)


# ----------------------------------------------------------------------------------------------
# determinism, collation, batches


def test_deterministic_under_a_seeded_generator():
    img = torch.rand(3, 64, 112, generator=torch.Generator().manual_seed(0))
    view = StrongView(blur_p=0.5, jitter=0.4)
    for seed in range(6):
        a, pa = view(img, torch.Generator().manual_seed(seed))
        b, pb = view(img, torch.Generator().manual_seed(seed))
        assert torch.equal(a, b)
        assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    outs = [view(img, torch.Generator().manual_seed(s))[0] for s in range(4)]
    assert not all(torch.equal(outs[0], o) for o in outs[1:])


def test_params_collate_and_batch_warp_equals_per_sample():
    view = StrongView()
    gen = torch.Generator().manual_seed(5)
    ps = [view.sample(512, 896, gen) for _ in range(6)]
    expected = {
        "size": ((2,), torch.int64), "flip": ((), torch.bool), "affine_steps": ((3, 2, 3), torch.float32),
        "affine": ((2, 3), torch.float32), "cutout": ((4,), torch.float32), "has_cutout": ((), torch.bool),
        "op_id": ((2,), torch.int64), "op_magnitude": ((2,), torch.int64), "op_value": ((2,), torch.float32),
        "op_applied": ((2,), torch.bool), "blur": ((), torch.bool), "jitter": ((4,), torch.float32),
        "jitter_order": ((4,), torch.int64),
    }
    for p in ps:
        assert {k: (tuple(v.shape), v.dtype) for k, v in p.items()} == expected
    batch = default_collate(ps)
    assert batch["affine_steps"].shape == (6, 3, 2, 3)
    labels = torch.randint(0, 19, (6, 128, 224), generator=gen)
    soft = torch.rand(6, 4, 65, 113, generator=gen)  # an OS8-like map
    out_l = warp_to_strong(labels, batch)
    out_s = warp_to_strong(soft, batch, "bilinear", fill=-1.0)
    for i, p in enumerate(ps):
        assert torch.equal(out_l[i], warp_to_strong(labels[i], p))
        assert torch.equal(out_l[i][None], warp_to_strong(labels[i:i + 1], batch_of(p)))
        assert torch.allclose(out_s[i], warp_to_strong(soft[i], p, "bilinear", fill=-1.0), atol=1e-6)
    assert out_l.dtype == labels.dtype and out_s.dtype == soft.dtype
    # the composed matrix is the product of the steps
    a = batch["affine_steps"].double()
    comp = a[:, 0]
    for k in (1, 2):
        comp = torch.cat([comp[..., :2] @ a[:, k, :, :2], comp[..., :2] @ a[:, k, :, 2:] + comp[..., 2:]], -1)
    assert torch.allclose(comp.float(), batch["affine"], atol=1e-6)


def batch_of(p):
    return default_collate([p])


# ----------------------------------------------------------------------------------------------
# photometric ops


@pytest.mark.parametrize("name", sorted(PHOTOMETRIC_OPS))
def test_photometric_ops_keep_range_and_do_not_move_pixels(name):
    gen = torch.Generator().manual_seed(0)
    img = torch.rand(3, 48, 80, generator=gen)
    for v in (1, 5, 9):
        p = strong_params(48, 80, [(name, op_value(name, v, 48, 80))])
        out = apply_strong(img, p)
        assert out.shape == img.shape and out.dtype == img.dtype
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert torch.equal(p["affine"], torch.tensor([[1.0, 0, 0], [0, 1, 0]]))
        lab = torch.randint(0, 19, (12, 20), generator=gen)
        assert torch.equal(warp_to_strong(lab, p), lab)
        # two flat regions stay flat and in place
        two = torch.zeros(3, 48, 80)
        two[:, :, :40] = torch.tensor([0.2, 0.5, 0.7])[:, None, None]
        two[:, :, 40:] = torch.tensor([0.8, 0.3, 0.6])[:, None, None]
        o = apply_strong(two, p)
        assert torch.allclose(o[:, :, :39], o[:, :1, :1].expand(3, 48, 39), atol=1e-6)
        assert torch.allclose(o[:, :, 41:], o[:, :1, -1:].expand(3, 48, 39), atol=1e-6)


def test_cpsl_extras_keep_range_and_geometry():
    img = torch.rand(3, 40, 70, generator=torch.Generator().manual_seed(0))
    view = StrongView(n_ops=0, cutout=False, flip_p=0.0, blur_p=1.0, jitter=0.4, jitter_p=1.0)
    out, p = view(img, torch.Generator().manual_seed(0))
    assert bool(p["blur"]) and not torch.equal(p["jitter"], torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert sorted(p["jitter_order"].tolist()) == [0, 1, 2, 3]
    assert out.min() >= 0 and out.max() <= 1 and not torch.equal(out, img)
    lab = torch.randint(0, 19, (10, 17))
    assert torch.equal(warp_to_strong(lab, p), lab)
    # off by default: the ProDA view never blurs or jitters
    ps = [StrongView().sample(40, 70, torch.Generator().manual_seed(s)) for s in range(20)]
    assert not any(bool(q["blur"]) for q in ps)
    assert all(torch.equal(q["jitter"], torch.tensor([1.0, 1.0, 1.0, 0.0])) for q in ps)


def test_full_view_on_an_image():
    img = torch.rand(3, 64, 112, generator=torch.Generator().manual_seed(1))
    view = StrongView()
    gen = torch.Generator().manual_seed(2)
    for _ in range(10):
        out, p = view(img, gen)
        assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
        assert bool(p["has_cutout"])
        lab = warp_to_strong(torch.zeros(16, 28, dtype=torch.long), p)
        assert (lab == 255).any() and (lab == 0).any()
    assert set(GEOMETRIC_OPS) | set(PHOTOMETRIC_OPS) == set(OPS)

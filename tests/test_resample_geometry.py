"""Sampling positions of the pseudo-label / teacher-feature resamplings (docs/geometry.md).

``geometry="official"`` must read exactly where a literal re-implementation of the official
chain reads (coordinate maps pushed through both); the default ``geometry="direct"`` must stay
within the displacement documented in docs/geometry.md."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from segcore.data.strong_view import op_value, strong_params, warp_to_strong
from segcore.data.target_views import TargetViews
from segcore.data.transforms import WeakView, apply_view

H, W = 1024, 2048
OS8 = (129, 257)
CROP = (896, 512)
S = 4
NO = 1e4


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: threads only contend
    yield
    torch.set_num_threads(n)


def views(n, seed=0, crop=CROP, base_width=2200, h=H, w=W):
    g = torch.Generator().manual_seed(seed)
    wv = WeakView(base_width, crop, (0.5, 1.5), 0.5)
    return [wv.sample(h, w, g) for _ in range(n)]


def numbers(p):
    h, w = (int(v) for v in p["size"])
    y1, y2, x1, x2 = (int(v) for v in p["crop"])
    return h, w, y1, y2, x1, x2, bool(p["flip"])


# --- literal official chains ---------------------------------------------------------------


def literal_soft(p0, p, full=(H, W), stride=S):
    h, w, y1, y2, x1, x2, flip = numbers(p)
    x = F.interpolate(p0[None], size=full, mode="bilinear", align_corners=True)
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)[:, :, y1:y2, x1:x2]
    if flip:
        x = x.flip(-1)
    return F.interpolate(x, scale_factor=1 / stride, mode="bilinear", align_corners=True)[0]


def literal_hard(label, p, stride=S):
    h, w, y1, y2, x1, x2, flip = numbers(p)
    img = Image.fromarray(label.astype(np.int32)).resize((w, h), Image.NEAREST).crop((x1, y1, x2, y2))
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    t = torch.from_numpy(np.array(img, dtype=np.int64)).double()[None, None]
    return F.interpolate(t, scale_factor=1 / stride, mode="nearest")[0, 0].long()


def literal_full2weak(feat, p, full=(H, W)):
    h, w, y1, y2, x1, x2, flip = numbers(p)
    f = F.interpolate(feat[None], size=(full[0] // 4, full[1] // 4), mode="bilinear", align_corners=True)
    f = F.interpolate(f, size=[int(h / 4), int(w / 4)], mode="bilinear", align_corners=True)
    f = f[:, :, int(y1 / 4):int(y1 / 4) + int((y2 - y1) / 4), int(x1 / 4):int(x1 / 4) + int((x2 - x1) / 4)]
    return (f.flip(-1) if flip else f)[0]


def literal_affine(t, v, kind, x_norm="W"):
    if kind == "Rotate":
        a = v / 180 * np.pi
        th = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0]])
    else:
        th = {"ShearX": [[1, v, 0], [0, 1, 0]], "ShearY": [[1, 0, 0], [v, 1, 0]],
              "TranslateX": [[1, 0, v], [0, 1, 0]], "TranslateY": [[1, 0, 0], [0, 1, v]]}[kind]
        th = np.array(th, dtype=np.float64)
    hh, ww = t.shape[2:]
    th[0, 1] *= hh / ww
    th[1, 0] *= ww / hh
    if kind != "Rotate":
        th[0, 2] = th[0, 2] * 2 / (hh if x_norm == "H" else ww) + th[0, 0] + th[0, 1] - 1
        th[1, 2] = th[1, 2] * 2 / hh + th[1, 0] + th[1, 1] - 1
    grid = F.affine_grid(torch.tensor(th, dtype=torch.float32)[None], list(t.shape), align_corners=False)
    return F.grid_sample(t, grid, mode="nearest", align_corners=False)


def literal_label_strong_T(label, aug, padding, scale=S, x_norm="W"):
    """label_strong_T on [1, 1, h, w] float32, its TranslateX normalisation fixed by default."""
    label = label + 1
    if aug["Hflip"]:
        label = label.flip(-1)
    for kind in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        if aug[kind] != NO:
            v = int(aug[kind] // scale) if kind.startswith("Translate") else aug[kind]
            label = literal_affine(label.clone(), v, kind, x_norm)
    if aug["CutoutAbs"] is not None:
        x0, y0, x1, y1 = (int(c // scale) for c in aug["CutoutAbs"])
        label[:, :, y0:y1, x0:x1] = 0
    label[label == 0] = padding + 1
    return label - 1


def strong_view(ops, flip=False, cutout=None, size=(CROP[1], CROP[0])):
    """ops: (name, magnitude, negative) in the fixed order -> (our params, the official dict)."""
    hc, wc = size
    aug = {"Hflip": flip, "ShearX": NO, "ShearY": NO, "TranslateX": NO, "TranslateY": NO, "Rotate": NO,
           "CutoutAbs": cutout}
    pairs = []
    for name, v, neg in ops:
        val = op_value(name, v, hc, wc, neg)
        aug[name] = round(val * (wc if name == "TranslateX" else hc)) if name.startswith("Translate") else val
        pairs.append((name, val))
    return strong_params(hc, wc, pairs, flip=flip, cutout=cutout, n_ops=2), aug


def cutout_box(rng, size=(CROP[1], CROP[0])):
    hc, wc = size
    side = min(wc, hc) // 3
    x0 = int(max(0, rng.uniform(0, wc) - side / 2.0))
    y0 = int(max(0, rng.uniform(0, hc) - side / 2.0))
    return (x0, y0, int(min(wc, x0 + side)), int(min(hc, y0 + side)))


def coords_os8():
    yy = torch.arange(OS8[0], dtype=torch.float64) * (H - 1) / (OS8[0] - 1)
    xx = torch.arange(OS8[1], dtype=torch.float64) * (W - 1) / (OS8[1] - 1)
    return torch.stack(torch.broadcast_tensors(xx[None, :], yy[:, None]))


def index_map(h=H, w=W):
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return xx, yy


# --- (a) official mode == literal official chain --------------------------------------------


def test_official_soft_reads_where_the_literal_chain_reads():
    c = coords_os8()
    for p in views(4, seed=1):
        lit = literal_soft(c, p)
        off = apply_view(c, p, "bilinear", stride=S, geometry="official")
        assert off.shape == lit.shape == (2, 128, 224)
        torch.testing.assert_close(off, lit, rtol=0, atol=1e-9)


def test_official_soft_values_close_to_the_literal_chain_on_a_smooth_map():
    # one resampling at the official positions vs the official three: equal on linear maps,
    # close on a smooth one (the kinks of the intermediate linear interpolations)
    g = torch.Generator().manual_seed(3)
    p0 = torch.softmax(F.interpolate(torch.randn(1, 5, 17, 33, generator=g), size=OS8, mode="bilinear",
                                     align_corners=True)[0], 0).double()
    for p in views(2, seed=2):
        torch.testing.assert_close(apply_view(p0, p, "bilinear", stride=S, geometry="official"), literal_soft(p0, p),
                                   rtol=0, atol=1e-2)


def test_official_hard_reads_every_index_the_pil_chain_reads():
    xx, yy = index_map()
    idx = torch.from_numpy(np.stack([xx, yy]).astype(np.int64))
    for p in views(4, seed=4):
        off = apply_view(idx, p, "nearest", stride=S, geometry="official")
        assert torch.equal(off[0], literal_hard(xx, p)) and torch.equal(off[1], literal_hard(yy, p))


def test_official_hard_at_stride_1_is_pil_nearest_including_its_ties():
    # PIL accumulates the source coordinate in double: at exact ties it can read the pixel below
    xx, yy = index_map()
    idx = torch.from_numpy(np.stack([xx, yy]).astype(np.int64))
    ties = 0
    for p in views(4, seed=5):
        off = apply_view(idx, p, "nearest", geometry="official")
        assert torch.equal(off[0], literal_hard(xx, p, 1)) and torch.equal(off[1], literal_hard(yy, p, 1))
        direct = apply_view(idx, p, "nearest")
        assert int((direct - off).abs().max()) <= 1  # the default: at most one pixel, at ties only
        ties += int((direct != off).any(0).sum())
    assert ties < 0.05 * 4 * CROP[0] * CROP[1]  # a few rows and columns per view


def test_teacher_features_direct_is_the_official_full2weak_geometry():
    c = coords_os8()
    for p in views(4, seed=6):
        torch.testing.assert_close(apply_view(c, p, "bilinear", stride=S), literal_full2weak(c, p), rtol=0, atol=1e-9)


def test_official_batched_equals_per_sample():
    vs = views(3, seed=7)
    batch = {k: torch.stack([v[k] for v in vs]) for k in vs[0]}
    soft = torch.rand(3, 19, *OS8, dtype=torch.float64)
    lab = torch.randint(0, 19, (3, H, W))
    out_s = apply_view(soft, batch, "bilinear", stride=S, geometry="official")
    out_l = apply_view(lab, batch, "nearest", stride=S, geometry="official")
    for i, p in enumerate(vs):
        torch.testing.assert_close(out_s[i], apply_view(soft[i], p, "bilinear", stride=S, geometry="official"))
        assert torch.equal(out_l[i], apply_view(lab[i], p, "nearest", stride=S, geometry="official"))


FIXED_ORDER_VIEWS = [
    [("TranslateY", 9, False)], [("TranslateY", 7, True)], [("TranslateY", 3, True)],
    [("TranslateX", 9, True)], [("TranslateX", 5, False)],
    [("ShearX", 4, True), ("Rotate", 8, False)], [("ShearY", 9, False), ("TranslateY", 5, True)],
    [("ShearX", 2, False), ("TranslateX", 6, True)], [("Rotate", 9, True)], [],
]


@pytest.mark.parametrize("ops", FIXED_ORDER_VIEWS)
def test_official_strong_reads_where_label_strong_T_reads(ops):
    rng = np.random.default_rng(len(ops) * 31 + sum(v for _, v, _ in ops))
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(224.0), indexing="ij")
    coords = torch.stack([xx, yy])
    for k in range(6):
        ps, aug = strong_view(ops, flip=bool(k % 2), cutout=cutout_box(rng) if k < 4 else None)
        lit = literal_label_strong_T(coords[None].clone(), aug, -1)[0]
        off = warp_to_strong(coords, ps, "nearest", fill=-1.0, geometry="official")
        assert torch.equal(off, lit), ops


def test_official_strong_cutout_at_the_border_and_batched():
    coords = torch.arange(128 * 224, dtype=torch.float32).reshape(1, 128, 224)
    boxes = [(726, 400, 896, 512), (725, 341, 895, 511), (0, 0, 170, 170), (3, 5, 173, 175)]
    pss, lits = [], []
    for b in boxes:
        ps, aug = strong_view([("TranslateY", 6, True)], cutout=b)
        pss.append(ps)
        lits.append(literal_label_strong_T(coords[None].clone(), aug, -1)[0])
    batch = {k: torch.stack([p[k] for p in pss]) for k in pss[0]}
    out = warp_to_strong(coords.expand(4, -1, -1, -1).clone(), batch, "nearest", fill=-1.0, geometry="official")
    for i in range(4):
        assert torch.equal(out[i], lits[i]), boxes[i]


# --- (b) the default's displacement stays as documented --------------------------------------


def _soft_positions(p, official):
    h, w, y1, _, x1, _, flip = numbers(p)
    i, j = np.arange(128.0)[:, None], np.arange(224.0)[None, :]
    if official:
        q = j * 895 / 223
        return ((x1 + np.where(flip, 895 - q, q)) * (W - 1) / (w - 1) + 0 * i,
                (y1 + i * 511 / 127) * (H - 1) / (h - 1) + 0 * j)
    c = x1 // 4 + np.where(flip, 223 - j, j)
    return c * (W - 1) / (w // 4 - 1) + 0 * i, (y1 // 4 + i) * (H - 1) / (h // 4 - 1) + 0 * j


def test_direct_soft_displacement_within_documented_bounds():
    # docs/geometry.md: mean ~2 px, at most 6.7 px in x and 6.0 px in y (worst case over
    # every view size and crop corner)
    c = coords_os8()
    ds, ax, ay = [], 0.0, 0.0
    for k, p in enumerate(views(400, seed=8)):
        ox, oy = _soft_positions(p, True)
        if k < 3:  # the analytic official positions are the literal chain's
            lit = literal_soft(c, p)
            assert np.allclose(lit[0].numpy(), ox, atol=1e-6) and np.allclose(lit[1].numpy(), oy, atol=1e-6)
            d = apply_view(c, p, "bilinear", stride=S)
            dx, dy = _soft_positions(p, False)
            assert np.allclose(d[0].numpy(), dx, atol=1e-6) and np.allclose(d[1].numpy(), dy, atol=1e-6)
        dx, dy = _soft_positions(p, False)
        ds.append(np.hypot(dx - ox, dy - oy))
        ax, ay = max(ax, np.abs(dx - ox).max()), max(ay, np.abs(dy - oy).max())
    d = np.stack(ds)
    assert 1.2 < d.mean() < 2.6 and ax <= 6.7 and ay <= 6.0, (d.mean(), ax, ay)
    assert d.max() > 1.0  # more than a pixel: hence the switch


def test_direct_hard_displacement_within_documented_bounds():
    # docs/geometry.md: mean ~2.2 px, at most 9 px on each axis
    xx, yy = index_map()
    idx = torch.from_numpy(np.stack([xx, yy]).astype(np.int64))
    ds, axis = [], 0
    for p in views(12, seed=9):
        off = apply_view(idx, p, "nearest", stride=S, geometry="official")
        d = apply_view(idx, p, "nearest", stride=S)
        ds.append(torch.hypot(*(d - off).double()).numpy())
        axis = max(axis, int((d - off).abs().max()))
    d = np.stack(ds)
    assert 1.5 < d.mean() < 3.2 and axis <= 9, (d.mean(), axis)


def test_direct_strong_translate_y_and_cutout_differ_by_at_most_one_cell():
    rng = np.random.default_rng(10)
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(224.0), indexing="ij")
    coords = torch.stack([xx, yy])
    moved = 0
    for v in range(1, 10):
        for neg in (False, True):
            ps, aug = strong_view([("TranslateY", v, neg)], cutout=cutout_box(rng))
            lit = literal_label_strong_T(coords[None].clone(), aug, -1)[0]
            ours = warp_to_strong(coords, ps, "nearest", fill=-1.0)
            both = (lit[0] >= 0) & (ours[0] >= 0)
            assert torch.equal(ours[0][both], lit[0][both])  # columns untouched
            dy = (ours[1] - lit[1])[both]
            assert dy.min() >= 0 and dy.max() <= 1  # floor(t/4) vs t/4 rounded: 0 or 1 row
            moved += int((dy != 0).sum())
            # ignore cells that only one has: a band of at most one cell along the box edges
            # and along the rows that the translation empties
            only = (lit[0] >= 0) ^ (ours[0] >= 0)
            if bool(only.any()):
                rows, cols = only.nonzero(as_tuple=True)
                x0, y0, x1, y1 = aug["CutoutAbs"]
                t = aug["TranslateY"]
                near_box = ((cols - x0 // 4).abs() <= 1) | ((cols - x1 // 4).abs() <= 1) | \
                           ((rows - y0 // 4).abs() <= 1) | ((rows - y1 // 4).abs() <= 1)
                edge_row = (rows - (-(t // 4) - 1)).abs() <= 1 if t < 0 else (rows - (127 - t // 4)).abs() <= 1
                assert bool((near_box | edge_row).all()), (v, neg, aug["CutoutAbs"])
    assert moved > 0  # the rounding does differ


def test_direct_cutout_cells_differ_only_on_the_box_edges():
    rng = np.random.default_rng(11)
    coords = torch.zeros(1, 128, 224)
    changed = 0
    for _ in range(40):
        box = cutout_box(rng)
        ps, aug = strong_view([], cutout=box)
        lit = literal_label_strong_T(coords[None].clone(), aug, -1)[0, 0] < 0
        ours = warp_to_strong(coords, ps, "nearest", fill=-1.0)[0] < 0
        x0, y0, x1, y1 = box
        # ours: cells whose centre 4j+2 lies in [x0, min(x1+1, 896)); official: [x0//4, x1//4)
        cols = torch.arange(224)
        ours_cols = (4 * cols + 2 >= x0) & (4 * cols + 2 < min(x1 + 1, 896))
        assert torch.equal(ours.any(0), ours_cols)
        assert torch.equal(lit.any(0), (cols >= x0 // 4) & (cols < x1 // 4))
        diff = ours_cols ^ ((cols >= x0 // 4) & (cols < x1 // 4))
        assert int(diff.sum()) <= 2  # one column at each edge at most
        changed += int((ours ^ lit).sum())
    assert changed > 0


# --- plumbing ------------------------------------------------------------------------------


class _Base:
    def __len__(self):
        return 2

    def load_image(self, i):
        return torch.rand(3, 128, 256, generator=torch.Generator().manual_seed(i))


class _Soft:
    def __getitem__(self, i):
        return torch.rand(5, 17, 33, generator=torch.Generator().manual_seed(10 + i))


class _Hard:
    def get(self, i):
        lab = torch.randint(0, 5, (128, 256), generator=torch.Generator().manual_seed(20 + i))
        return lab, torch.ones(128, 256)


def test_target_views_passes_geometry_through():
    from segcore.data.strong_view import StrongView

    weak = WeakView(base_width=280, crop=(112, 64))
    strong = StrongView(pool=["TranslateY", "Rotate"])
    for geometry in ("direct", "official"):
        tv = TargetViews(_Base(), weak, strong, soft_store=_Soft(), hard_store=_Hard(), label_stride=4,
                         geometry=geometry)
        for key in [(0, 5), (1, 6), (0, 7)]:
            s = tv[key]
            assert torch.equal(s["soft"], apply_view(_Soft()[key[0]], s["view"], "bilinear", stride=4,
                                                     geometry=geometry))
            lab = apply_view(_Hard().get(key[0])[0], s["view"], "nearest", stride=4, geometry=geometry)
            assert torch.equal(s["hard"], warp_to_strong(lab, s["strong_view"], "nearest", geometry=geometry))
    # the default is the direct geometry
    tv = TargetViews(_Base(), weak, strong, soft_store=_Soft(), hard_store=_Hard(), label_stride=4)
    s = tv[(0, 5)]
    assert torch.equal(s["soft"], apply_view(_Soft()[0], s["view"], "bilinear", stride=4))


def test_unknown_geometry_is_refused():
    p = views(1)[0]
    with pytest.raises(ValueError, match="geometry"):
        apply_view(torch.rand(2, 8, 16), p, "bilinear", geometry="pil")
    ps, _ = strong_view([])
    with pytest.raises(ValueError, match="geometry"):
        warp_to_strong(torch.zeros(128, 224), ps, geometry="exact")
    with pytest.raises(ValueError, match="geometry"):
        TargetViews(_Base(), WeakView(280, (112, 64)), geometry="x")


def test_translation_rounds_down_like_python_floor_division():
    # the official int(t // 4): towards minus infinity for negative shifts
    for t, want in ((-37, -10), (-36, -9), (37, 9), (2, 0), (-1, -1)):
        assert int(t // 4) == want == math.floor(t / 4)

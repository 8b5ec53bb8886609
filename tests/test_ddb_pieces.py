"""DDB's pieces: bridging masks, photometric ops, mean teacher, prototype ensemble, importer,
schedule, multi-source union (segcore.methods.ddb, segcore.models.ddb_*)."""
import colorsys
import math

import pytest
import torch
import torch.nn.functional as F

from segcore.methods.ddb import bridging, ensemble, photometric, teacher
from segcore.models.ddb_net import DDB_ARCHS, V1cSpec, build_ddb_net

# ------------------------------------------------------------------ bridging masks


@pytest.mark.parametrize("hw", [(512, 512), (56, 112), (64, 32), (37, 91), (720, 1280)])
def test_cutmix_box_covers_40_percent_of_any_crop_aspect(hw):
    h, w = hw
    torch.manual_seed(0)
    boxes = bridging.cut_boxes(400, h, w, 0.4)
    masks = bridging.boxes_to_masks(boxes[:8], h, w)
    bh, bw = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= h).all() and (boxes[:, 3] <= w).all()  # inside
    assert torch.equal(masks.sum(dim=(1, 2)), (bh * bw)[:8])      # one solid box per sample
    frac = (bh * bw).double() / (h * w)
    tol = (0.5 * h + 0.5 * w + 0.25) / (h * w)                    # each side rounded by <= 0.5 px
    assert (frac - 0.4).abs().max() <= tol + 1e-9
    # log-uniform height fraction in [0.4, 1]: its log is uniform, so its median is sqrt(0.4)
    yf = bh.double() / h
    assert yf.min() >= 0.4 - 0.5 / h and yf.max() <= 1 + 1e-9
    assert abs(float(yf.log().median()) - 0.5 * math.log(0.4)) < 0.1


def test_classmix_mask_is_exactly_the_chosen_source_classes_and_never_255():
    torch.manual_seed(1)
    labels = torch.randint(0, 6, (3, 16, 24))
    labels[0, :4] = 255
    labels[1] = torch.where(labels[1] == 2, torch.full_like(labels[1], 255), labels[1])
    labels[2, :, :5] = 17
    seen = torch.zeros(3, 19)
    for _ in range(300):
        masks = bridging.class_masks(labels, 19)
        for i in range(3):
            present = set(labels[i].unique().tolist()) - {255}
            chosen = set(labels[i][masks[i]].unique().tolist())
            assert 255 not in chosen
            assert len(chosen) == math.ceil(len(present) / 2) and chosen <= present
            assert torch.equal(masks[i], torch.isin(labels[i], torch.tensor(sorted(chosen))))
            for c in chosen:
                seen[i, c] += 1
    # uniform without replacement: every present class is chosen about k/n of the time
    for i in range(3):
        present = sorted(set(labels[i].unique().tolist()) - {255})
        share = seen[i, present] / 300
        assert (share - math.ceil(len(present) / 2) / len(present)).abs().max() < 0.12


def test_classmix_official_switch_can_select_the_ignore_value():
    labels = torch.full((1, 8, 8), 255)
    labels[0, :, :4] = 3
    picked = [bool(bridging.class_masks(labels, 19, official_ignore=True)[0, 0, 7]) for _ in range(50)]
    assert any(picked) and not all(picked)  # 255 is one of two "classes": chosen about half the time
    assert not bridging.class_masks(labels, 19)[0, :, 4:].any()


# ------------------------------------------------------------------ photometric ops (independent references)


def _ref_jitter(img, factors, order):
    """Per pixel with colorsys: brightness +(b-1), contrast *c, HSV saturation *s, hue +h turns."""
    x = img.double().clone()
    for op in order.tolist():
        f = float(factors[op])
        if op == 0:
            x = (x + f - 1).clamp(0, 1)
        elif op == 1:
            x = (x * f).clamp(0, 1)
        else:
            out = torch.empty_like(x)
            for i in range(x.shape[1]):
                for j in range(x.shape[2]):
                    hh, ss, vv = colorsys.rgb_to_hsv(*x[:, i, j].tolist())
                    if op == 2:
                        ss = min(max(ss * f, 0.0), 1.0)
                    else:
                        hh = (hh + f) % 1.0
                    out[:, i, j] = torch.tensor(colorsys.hsv_to_rgb(hh, ss, vv))
            x = out.clamp(0, 1)
    return x


def _ref_blur(img, sigma, ky, kx):
    """2-D Gaussian (outer product of the 1-D taps) with reflect padding, one image."""
    def taps(k):
        t = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
        g = torch.exp(-t ** 2 / (2 * sigma ** 2))
        return g / g.sum()
    kern = taps(ky)[:, None] * taps(kx)[None, :]
    x = F.pad(img.double()[None], (kx // 2, kx // 2, ky // 2, ky // 2), mode="reflect")
    return F.conv2d(x, kern.expand(3, 1, ky, kx).contiguous(), groups=3)[0]


def test_batched_jitter_and_blur_match_per_sample_references():
    torch.manual_seed(2)
    x = torch.rand(4, 3, 24, 52, dtype=torch.float64)
    p = photometric.draw_params(4, 0.2, jitter_p=0.5, blur_p=0.5)
    p["jitter"][:2], p["blur"][1:3] = True, True            # both branches of each flag are exercised
    p["jitter"][3], p["blur"][0] = False, False
    got = photometric.jitter_and_blur(x, p)
    got_1d = photometric.jitter_and_blur(x, p, official_1d_blur=True)
    ky, kx = photometric.kernel_size(24), photometric.kernel_size(52)
    assert (photometric.kernel_size(512), ky, kx) == (51, 3, 5)
    for i in range(4):
        ref = _ref_jitter(x[i], p["factors"][i], p["order"][i]) if p["jitter"][i] else x[i]
        ref2 = _ref_blur(ref, float(p["sigma"][i]), ky, kx) if p["blur"][i] else ref
        ref1 = _ref_blur(ref, float(p["sigma"][i]), 1, kx) if p["blur"][i] else ref
        assert torch.allclose(got[i], ref2, atol=1e-6), i
        assert torch.allclose(got_1d[i], ref1, atol=1e-6), i


def test_photometric_distortion_matches_a_per_sample_reference():
    torch.manual_seed(3)
    x = torch.rand(6, 3, 5, 7, dtype=torch.float64)
    p = photometric.draw_distortion(6)
    got = photometric.photometric_distortion(x, p)
    for i in range(6):
        y = x[i].clone()
        if p["brightness"][i]:
            y = (y + p["beta"][i]).clamp(0, 1)
        if p["contrast_first"][i] and p["contrast"][i]:
            y = (y * p["alpha"][i]).clamp(0, 1)
        if p["saturation"][i]:
            y = _ref_jitter(y, torch.tensor([1, 1, p["sat"][i], 0]), torch.tensor([2]))
        if p["hue"][i]:
            y = _ref_jitter(y, torch.tensor([1, 1, 1, p["delta"][i]]), torch.tensor([3]))
        if not p["contrast_first"][i] and p["contrast"][i]:
            y = (y * p["alpha"][i]).clamp(0, 1)
        assert torch.allclose(got[i], y, atol=1e-6), i


# ------------------------------------------------------------------ mean teacher


def test_mean_teacher_alpha_schedule_and_update():
    assert teacher.ema_alpha(1) == 0.5 and teacher.ema_alpha(2) == pytest.approx(2 / 3)
    assert teacher.ema_alpha(99) == pytest.approx(0.99) and teacher.ema_alpha(5000) == 0.99
    assert teacher.ema_alpha(9, alpha=0.5) == 0.5
    torch.manual_seed(0)
    student = build_ddb_net(19, "small_v1c")
    mt = teacher.MeanTeacher(student, alpha=0.99)
    t0 = [p.clone() for p in mt.module.parameters()]
    buf0 = [b.clone() for b in mt.module.buffers()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        for b in student.buffers():
            b.add_(1)
    mt.update(student, 3)                                      # a = min(1 - 1/4, 0.99) = 0.75
    for p0, pt, ps in zip(t0, mt.module.parameters(), student.parameters()):
        assert torch.allclose(pt, 0.75 * p0 + 0.25 * ps)
    for b0, bt in zip(buf0, mt.module.buffers()):              # BN buffers are the teacher's own
        assert torch.equal(b0, bt)
    mt(torch.rand(2, 3, 32, 64))                               # BN in train mode, dropout off
    assert mt.module.decode_head.bottleneck.bn.training and not mt.module.decode_head.dropout.training


# ------------------------------------------------------------------ prototype ensemble


def _brute_distances(feat, protos):
    n, _, h, w = feat.shape
    out = torch.empty(n, protos.shape[0], h, w, dtype=torch.float64)
    for b in range(n):
        for k in range(protos.shape[0]):
            for i in range(h):
                for j in range(w):
                    out[b, k, i, j] = math.sqrt(float(((feat[b, :, i, j].double() - protos[k].double()) ** 2).sum()))
    return out


def test_prototype_weights_against_a_brute_force_per_class_loop():
    torch.manual_seed(4)
    feat, protos = torch.randn(2, 8, 3, 4), torch.randn(5, 8)
    ref_d = _brute_distances(feat, protos)
    assert torch.allclose(ensemble.proto_distances(feat, protos).double(), ref_d, atol=1e-5)
    assert torch.allclose(ensemble.proto_distances_loop(feat, protos).double(), ref_d, atol=1e-5)
    w = ensemble.prototype_weights(ensemble.proto_distances(feat, protos)).double()
    ref_w = torch.exp(-ref_d) / torch.exp(-ref_d).sum(dim=1, keepdim=True)
    assert torch.allclose(w, ref_w, atol=1e-6)
    # p~ = w * softmax(z), not renormalised; the ensemble is the mean of the two teachers
    logits = torch.randn(2, 5, 3, 4)
    out = {"feat": feat, "out": logits}
    p = ensemble.teacher_probs(out, protos, (3, 4)).double()
    assert torch.allclose(p, ref_w * torch.softmax(logits.double(), 1), atol=1e-6)
    assert (p.sum(dim=1) < 1 - 1e-3).all()
    p2 = ensemble.teacher_probs({"feat": -feat, "out": logits.flip(1)}, protos, (3, 4))
    conf, lab = ensemble.ensemble(p.float(), p2)
    mean = 0.5 * p.float() + 0.5 * p2
    assert torch.equal(lab, mean.argmax(1)) and torch.allclose(conf, mean.max(1).values)


def test_feature_resolution_weights_stay_within_the_bound_of_the_official_full_resolution_loop():
    torch.manual_seed(5)
    feat = torch.randn(2, 16, 6, 10).cumsum(dim=-1) * 0.3     # spatially correlated features
    protos = torch.randn(7, 16) * 1.5
    out = {"feat": feat, "out": torch.randn(2, 7, 6, 10)}
    size = (48, 80)                                           # output stride 8
    ours = ensemble.teacher_probs(out, protos, size).double()
    official = ensemble.teacher_probs(out, protos, size, official_full_resolution=True).double()
    # S: the largest feature distance between neighbouring feature pixels (diagonals included)
    f = feat.double()
    diffs = [f[:, :, 1:] - f[:, :, :-1], f[:, :, :, 1:] - f[:, :, :, :-1],
             f[:, :, 1:, 1:] - f[:, :, :-1, :-1], f[:, :, 1:, :-1] - f[:, :, :-1, 1:]]
    s = max(float(d.norm(dim=1).max()) for d in diffs)
    ratio = ours / official
    assert ratio.max() <= math.exp(2 * s) * (1 + 1e-5) and ratio.min() >= math.exp(-2 * s) * (1 - 1e-5)
    assert not torch.allclose(ours, official)                 # the two ways do differ
    # smooth features: the pseudo-labels agree almost everywhere
    smooth = {"feat": F.avg_pool2d(feat, 3, 1, 1, count_include_pad=False), "out": out["out"]}
    agree = (ensemble.teacher_probs(smooth, protos, size).argmax(1)
             == ensemble.teacher_probs(smooth, protos, size, official_full_resolution=True).argmax(1)).float().mean()
    assert agree > 0.97


# ------------------------------------------------------------------ network and the resnet_v1c importer


def released_v1c_layout(layers, stem=64, planes=(64, 128, 256, 512), fc_classes=1000):
    """(name, shape) of mmseg's resnet_v1c ImageNet file, written out from the architecture as
    mmseg names it (deep stem Sequential 0-8, bottlenecks conv1-3 / bn1-3, downsample.0/1, fc)."""
    keys = []

    def bn(prefix, c):
        keys.extend([(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,)), (f"{prefix}.running_mean", (c,)),
                     (f"{prefix}.running_var", (c,)), (f"{prefix}.num_batches_tracked", ())])

    half = stem // 2
    for i, (cin, cout) in zip((0, 3, 6), ((3, half), (half, half), (half, stem))):
        keys.append((f"stem.{i}.weight", (cout, cin, 3, 3)))
        bn(f"stem.{i + 1}", cout)
    inplanes = stem
    for s, (n, p) in enumerate(zip(layers, planes), start=1):
        for b in range(n):
            pre = f"layer{s}.{b}"
            cin = inplanes if b == 0 else p * 4
            keys.append((f"{pre}.conv1.weight", (p, cin, 1, 1)))
            bn(f"{pre}.bn1", p)
            keys.append((f"{pre}.conv2.weight", (p, p, 3, 3)))
            bn(f"{pre}.bn2", p)
            keys.append((f"{pre}.conv3.weight", (p * 4, p, 1, 1)))
            bn(f"{pre}.bn3", p * 4)
            if b == 0:
                keys.append((f"{pre}.downsample.0.weight", (p * 4, inplanes, 1, 1)))
                bn(f"{pre}.downsample.1", p * 4)
        inplanes = p * 4
    keys += [("fc.weight", (fc_classes, inplanes)), ("fc.bias", (fc_classes,))]
    return keys


def test_resnet101_v1c_backbone_has_the_released_key_layout():
    with torch.device("meta"):
        net = build_ddb_net(19, "resnet101_v1c")
    ours = [(k, tuple(v.shape)) for k, v in net.backbone.state_dict().items()]
    released = [(k, s) for k, s in released_v1c_layout((3, 4, 23, 3)) if not k.startswith("fc.")]
    assert ours == released                                   # key for key, shape for shape, in order
    assert len(ours) == 6 * (3 + 33 * 3 + 4)                  # conv + 5 BN entries per conv (stem, blocks, downsample)
    head = [k for k in net.state_dict() if k.startswith("decode_head.")]
    assert head[0] == "decode_head.aspp_modules.0.conv.weight" and head[-1] == "decode_head.conv_seg.bias"
    assert tuple(net.state_dict()["decode_head.aspp_modules.1.conv.weight"].shape) == (128, 2048, 3, 3)
    assert net.decode_head.aspp_modules[1].conv.dilation == (12, 12)
    # output stride 8 with contract_dilation: the first block of a dilated stage at half its dilation
    bb = net.backbone
    assert [bb.layer2[0].conv2.stride, bb.layer3[0].conv2.stride] == [(2, 2), (1, 1)]
    assert [bb.layer3[0].conv2.dilation, bb.layer3[1].conv2.dilation] == [(1, 1), (2, 2)]
    assert [bb.layer4[0].conv2.dilation, bb.layer4[2].conv2.dilation] == [(2, 2), (4, 4)]
    assert tuple(net.state_dict()["decode_head.bottleneck.conv.weight"].shape) == (256, 256, 3, 3)


def _write_v1c(path, spec: V1cSpec, prefix="", wrap=True, drop=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, s in released_v1c_layout(spec.layers, spec.stem_width, spec.planes):
        if k == drop:
            continue
        sd[prefix + k] = (torch.randint(0, 5, s, generator=g) if k.endswith("num_batches_tracked")
                          else torch.rand(s, generator=g) + 0.5)
    torch.save({"state_dict": sd, "meta": {"note": "test"}} if wrap else sd, path)
    return sd


def test_v1c_importer_copies_every_backbone_tensor_and_refuses_other_layouts(tmp_path):
    from segcore.models.ddb_weights import load_v1c_imagenet

    spec = DDB_ARCHS["small_v1c"]
    for prefix, wrap in (("", True), ("backbone.", False)):
        sd = _write_v1c(tmp_path / "v1c.pth", spec, prefix, wrap)
        net = build_ddb_net(19, "small_v1c")
        head_before = {k: v.clone() for k, v in net.decode_head.state_dict().items()}
        copied = load_v1c_imagenet(net, tmp_path / "v1c.pth")
        got = net.backbone.state_dict()
        assert sorted(copied) == sorted(got)
        for k, v in got.items():
            assert torch.equal(v, sd[prefix + k]), k
        for k, v in net.decode_head.state_dict().items():
            assert torch.equal(v, head_before[k]), k            # the head keeps its own init
        out = net.eval()(torch.rand(1, 3, 32, 64))
        assert out["out"].shape == (1, 19, 4, 8) and out["feat"].shape[1] == spec.head_width
    _write_v1c(tmp_path / "missing.pth", spec, drop="layer3.0.bn2.running_var")
    with pytest.raises(ValueError, match="missing.pth: lacks backbone key layer3.0.bn2.running_var"):
        load_v1c_imagenet(build_ddb_net(19, "small_v1c"), tmp_path / "missing.pth")
    from segcore.models.deeplabv2 import build_deeplabv2
    torch.save(build_deeplabv2(19, "small").state_dict(), tmp_path / "tv.pth")   # 7x7-stem layout
    with pytest.raises(ValueError, match="tv.pth: lacks backbone key stem.0.weight"):
        load_v1c_imagenet(build_ddb_net(19, "small_v1c"), tmp_path / "tv.pth")
    _write_v1c(tmp_path / "deep.pth", V1cSpec((2, 1, 1, 1), 16, (16, 32, 48, 64), 64, (2, 4)))
    with pytest.raises(ValueError, match="unexpected key layer1.1"):
        load_v1c_imagenet(build_ddb_net(19, "small_v1c"), tmp_path / "deep.pth")


def test_ddb_checkpoints_round_trip_through_load_model(tmp_path):
    from segcore.models.checkpoint import load_model, save_model
    from segcore.models.ddb_weights import load_official_ddb

    net = build_ddb_net(16, "small_v1c")
    save_model(tmp_path / "m.pt", net, {"arch": "small_v1c", "num_classes": 16, "bn_clr": False})
    back, meta = load_model(tmp_path / "m.pt", expect_num_classes=16)
    assert type(back).__name__ == "DDBNet" and meta["arch"] == "small_v1c"
    for k, v in net.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    # an official CKD checkpoint: the student under stu_model.
    official = {"state_dict": {**{f"stu_model.{k}": v for k, v in net.state_dict().items()},
                               **{f"cu_model.{k}": v * 0 for k, v in net.state_dict().items()}}}
    torch.save(official, tmp_path / "ckd.pth")
    fresh = build_ddb_net(16, "small_v1c")
    load_official_ddb(fresh, tmp_path / "ckd.pth", "stu_model.")
    assert torch.equal(fresh.decode_head.conv_seg.weight, net.decode_head.conv_seg.weight)
    with pytest.raises(ValueError, match="no network under 'ema_model.'"):
        load_official_ddb(fresh, tmp_path / "ckd.pth", "ema_model.")


# ------------------------------------------------------------------ schedule and data


def test_warmup_poly_is_mmcv_linear_warmup_times_poly():
    from segcore.train.ddb_st import ddb_lr_factor

    opts = {"iterations": 40000, "poly_power": 1.0, "warmup_iterations": 1500, "warmup_ratio": 1e-6}
    assert ddb_lr_factor(0, opts) == pytest.approx(1e-6)
    it = 750
    assert ddb_lr_factor(it, opts) == pytest.approx((1 - it / 40000) * (1 - (1 - it / 1500) * (1 - 1e-6)))
    assert ddb_lr_factor(1500, opts) == pytest.approx(1 - 1500 / 40000)
    assert ddb_lr_factor(20000, opts) == pytest.approx(0.5)

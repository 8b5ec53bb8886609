"""Golden tests of one DDB ST step and one CKD step against literal, per-sample re-derivations
of the official steps (tiny network without dropout, fixed inputs: losses and gradients), and
the round-2 start from the round-1 CKD student."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from test_ddb_pieces import _ref_blur, _ref_jitter

from segcore.methods.ddb import photometric
from segcore.models.ddb_net import DDBNet, V1cSpec

SPEC = V1cSpec(layers=(1, 1, 1, 1), stem_width=8, planes=(8, 8, 8, 8), head_width=16, aspp_dilations=(1, 2),
               dropout=0.0)
H, W, C = 16, 32, 5


def options(**over):
    o = dict(mean_over_valid=False, pseudo_threshold=0.968, official_1d_blur=False, cut_area=0.4,
             classmix_official_ignore=False, jitter_strength=0.2, jitter_p=1.0, blur_p=1.0,
             official_full_resolution=True, rectify_on_prob=True, use_pl_weight=False)
    o.update(over)
    return o


def _net(seed):
    torch.manual_seed(seed)
    return DDBNet(C, SPEC, arch=None).double()


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    s = {"image": torch.rand(2, 3, H, W, generator=g, dtype=torch.float64),
         "label": torch.randint(0, C, (2, H, W), generator=g)}
    s["label"][0, :3] = 255
    t = {"image": torch.rand(2, 3, H, W, generator=g, dtype=torch.float64)}
    return s, t


def _ref_photo(img, p, i):
    """The official post-processing of one image: colour jitter, then blur (kernel from the crop)."""
    x = _ref_jitter(img, p["factors"][i], p["order"][i]) if p["jitter"][i] else img
    k = photometric.kernel_size
    return _ref_blur(x, float(p["sigma"][i]), k(H), k(W)) if p["blur"][i] else x


def _mmseg_ce(logits, labels, weight=None):
    """mmseg 0.22: resize to the label, per-pixel CE (0 on 255), x weight, mean over ALL pixels."""
    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(up, labels, ignore_index=255, reduction="none")
    if weight is not None:
        loss = loss * weight
    return loss.mean()


def reference_st(model, ema, s, t, mask, photo, it, threshold=0.968):
    """The official ST.forward_train, written out literally."""
    if it > 0:
        a = min(1 - 1 / (it + 1), 0.99)
        for ep, p in zip(ema.parameters(), model.parameters()):
            ep.data[:] = a * ep.data[:] + (1 - a) * p.data[:]
    loss_src = _mmseg_ce(model(s["image"])["out"], s["label"])
    loss_src.backward()
    ema.train()
    ema_logits = F.interpolate(ema(t["image"])["out"], size=(H, W), mode="bilinear", align_corners=False)
    prob, pl = torch.max(torch.softmax(ema_logits.detach(), dim=1), dim=1)
    q = torch.sum(prob.ge(threshold).long() == 1).item() / pl.numel()
    imgs, lbls, wts = [], [], []
    for i in range(s["image"].shape[0]):
        m = mask[i].double()
        imgs.append(_ref_photo(m * s["image"][i] + (1 - m) * t["image"][i], photo, i))
        lbls.append((m * s["label"][i] + (1 - m) * pl[i]).long())
        wts.append(m * 1.0 + (1 - m) * q)
    loss_mix = _mmseg_ce(model(torch.stack(imgs))["out"], torch.stack(lbls), torch.stack(wts))
    loss_mix.backward()
    return loss_src.item(), loss_mix.item(), q


def _grads(m):
    return [p.grad.clone() for p in m.parameters()]


@pytest.mark.parametrize("path", ["cu", "ca"])
def test_one_st_step_matches_the_official_step(path):
    from segcore.methods.ddb.teacher import MeanTeacher
    from segcore.train.common import Accel
    from segcore.train.ddb_st import draw, make_adamw, st_step

    s, t = _inputs()
    student = _net(0)
    mt = MeanTeacher(student)
    with torch.no_grad():                      # a teacher that is not the student (iteration 3)
        for p in mt.module.parameters():
            p.mul_(0.9).add_(0.01)
        mt.module.decode_head.conv_seg.weight.mul_(300)   # confident somewhere, not everywhere
    ref_model, ref_ema = copy.deepcopy(student), copy.deepcopy(mt.module)
    torch.manual_seed(7)
    draws = draw(path, s, C, options())
    # a threshold at which q is strictly between 0 and 1 on this tiny net
    opts = dict(options(), pseudo_threshold=0.9, lr=1e-3, head_lr_mult=10, weight_decay=0.01)
    opt = make_adamw(student, opts)
    logs = st_step(student, mt, opt, s, t, draws, 3, opts, Accel(torch.device("cpu")))
    ref_src, ref_mix, ref_q = reference_st(ref_model, ref_ema, s, t, draws["mask"], draws["photo"], 3, 0.9)
    assert 0 < ref_q < 1
    assert float(logs["pl_weight"]) == pytest.approx(ref_q)
    assert float(logs["src"]) == pytest.approx(ref_src, rel=1e-6)
    assert float(logs["mix"]) == pytest.approx(ref_mix, rel=1e-6)
    for g, r in zip(_grads(student), _grads(ref_model)):
        assert (g - r).norm() <= 1e-5 * r.norm(), float((g - r).norm() / r.norm())
    for a, b in zip(mt.module.parameters(), ref_ema.parameters()):
        assert torch.allclose(a, b)
    for a, b in zip(mt.module.buffers(), ref_ema.buffers()):  # the teacher's BN ran in train mode
        assert torch.allclose(a.double(), b.double())


def reference_ckd(model, cu, ca, protos, s, t, distortion_imgs, photo):
    """The official CKD.forward_train (proto_rectify, rectify_on_prob, no pl weight), literally."""
    loss_src = _mmseg_ce(model(distortion_imgs)["out"], s["label"])
    loss_src.backward()
    softmaxes = []
    with torch.no_grad():
        for net, c in ((cu, protos["cu"]), (ca, protos["ca"])):
            net.eval()
            o = net(t["image"])
            logits = F.interpolate(o["out"], size=(H, W), mode="bilinear", align_corners=False)
            feat = F.interpolate(o["feat"], size=(H, W), mode="bilinear", align_corners=False)
            d = -torch.ones(feat.shape[0], C, H, W, dtype=feat.dtype)
            for k in range(C):
                d[:, k] = torch.norm(c[k].reshape(-1, 1, 1).expand(-1, H, W) - feat, 2, dim=1)
            w = F.softmax(-(d - d.min(dim=1, keepdim=True)[0]), dim=1)
            softmaxes.append(w * torch.softmax(logits, dim=1))
        ens = softmaxes[0] * 0.5 + softmaxes[1] * 0.5
        _, pl = torch.max(ens, dim=1)
    aug = torch.stack([_ref_photo(t["image"][i], photo, i) for i in range(t["image"].shape[0])])
    loss_tgt = _mmseg_ce(model(aug)["out"], pl, torch.ones(pl.shape, dtype=aug.dtype))
    loss_tgt.backward()
    return loss_src.item(), loss_tgt.item(), softmaxes


def test_one_ckd_step_matches_the_official_step():
    from segcore.methods.ddb.ensemble import teacher_probs
    from segcore.train.common import Accel
    from segcore.train.ddb_ckd import ckd_step, draw
    from segcore.train.ddb_st import make_adamw

    s, t = _inputs(1)
    student, cu, ca = _net(0), _net(1).eval(), _net(2).eval()
    g = torch.Generator().manual_seed(3)
    protos = {k: torch.randn(C, SPEC.head_width, generator=g, dtype=torch.float64) * 0.05 for k in ("cu", "ca")}
    ref_model = copy.deepcopy(student)
    torch.manual_seed(11)
    draws = draw(2, options())
    distorted = photometric.photometric_distortion(s["image"], draws["distortion"])  # tested on its own elsewhere
    opts = dict(options(), lr=1e-3, head_lr_mult=10, weight_decay=0.01)
    opt = make_adamw(student, opts)
    logs = ckd_step(student, {"cu": cu, "ca": ca}, protos, opt, s, t, draws, opts, Accel(torch.device("cpu")))
    ref_src, ref_tgt, ref_p = reference_ckd(ref_model, cu, ca, protos, s, t, distorted, draws["photo"])
    assert float(logs["src"]) == pytest.approx(ref_src, rel=1e-6)
    assert float(logs["tgt"]) == pytest.approx(ref_tgt, rel=1e-6)
    for a, b in zip(_grads(student), _grads(ref_model)):
        assert (a - b).norm() <= 1e-5 * b.norm(), float((a - b).norm() / b.norm())
    with torch.no_grad():
        for net, k, ref in ((cu, "cu", ref_p[0]), (ca, "ca", ref_p[1])):
            p = teacher_probs(net(t["image"]), protos[k], (H, W), official_full_resolution=True)
            assert torch.allclose(p.double(), ref, atol=1e-10)   # weighted, not renormalised
            assert (ref.sum(1) < 0.99).any()


# ------------------------------------------------------------------ round 2 starts from round 1's student


def test_round_two_st_starts_from_the_round_one_ckd_student(tmp_path):
    from segcore.data import demo
    from segcore.data.convert import convert_dataset
    from segcore.models.checkpoint import save_model
    from segcore.models.ddb_net import build_ddb_net
    from segcore.train import ddb_st

    torch.set_num_threads(1)
    demo.make_gta5(tmp_path / "gta", 4, size=(80, 44))
    demo.make_cityscapes(tmp_path / "cs", 4, 1, size=(64, 32))
    convert_dataset("gta5", tmp_path / "gta", tmp_path / "g", workers=1, progress=False)
    convert_dataset("cityscapes", tmp_path / "cs", tmp_path / "c", workers=1, progress=False)
    torch.manual_seed(0)
    ckd = build_ddb_net(19, "small_v1c")
    save_model(tmp_path / "ckd.pt", ckd, {"arch": "small_v1c", "num_classes": 19, "bn_clr": False, "stage": "ddb_ckd"})
    opts = json.loads(json.dumps(dict(
        options(), batch_size=2, crop=[32, 32], flip=0.5, source_base_width=64, target_base_width=64,
        cat_max_ratio=0.75, iterations=2, lr=1e-9, head_lr_mult=10.0, weight_decay=0.0, poly_power=1.0,
        warmup_iterations=0, warmup_ratio=1e-6, ema_alpha=0.99, ema_train_mode=True, later_round_lr_mult=0.1,
        checkpoint_every=100, log_every=1, amp=False, channels_last=False, compile=False, freeze_bn=False)))
    job = ddb_st.STJob(
        source={"manifest": str(tmp_path / "g/manifest.csv"), "split": "train", "resize": [80, 44]},
        target={"manifest": str(tmp_path / "c/manifest.csv"), "split": "train", "resize": [64, 32]},
        num_classes=19, options=opts, seed=0, path="cu", arch="small_v1c", out=str(tmp_path / "cu2.pt"),
        workdir=str(tmp_path / "w"), round=2, init=str(tmp_path / "ckd.pt"))
    lrs = []
    ddb_st.run(job, log=lambda s: lrs.append(s))
    got = torch.load(tmp_path / "cu2.pt", weights_only=True)
    assert got["meta"]["init"] == str(tmp_path / "ckd.pt") and got["meta"]["lr_mult"] == 0.1
    assert got["meta"]["round"] == 2
    # lr 1e-10 (0.1 x 1e-9): the weights are the CKD student's up to AdamW's ~lr-sized steps
    for k, v in ckd.state_dict().items():
        if v.is_floating_point() and "running" not in k:
            assert torch.allclose(got["model"][k], v, atol=1e-8), k
    assert any("lr 1.00e-10" in ln for ln in lrs), lrs
    fresh = build_ddb_net(19, "small_v1c")                       # a round-1 start would differ
    assert not torch.allclose(fresh.decode_head.conv_seg.weight, got["model"]["decode_head.conv_seg.weight"])

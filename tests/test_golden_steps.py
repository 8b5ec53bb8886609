"""Golden tests of whole training steps: one ProDA stage-1 step, one CPSL stage-1 step and one
distillation step (stages 2-3), each run through the real step function on a tiny network with
fixed inputs and compared with a literal re-derivation of the official step written here with
plain torch ops (no loss helper of segcore is called by the re-derivations).

The re-derivations follow the official ``models/adaptation_modelv2.py`` (ProDA ``step`` and
``step_distillation``, CPSL ``step``) line by line, except where our code makes a documented
choice (docs/choices.md, docs/methods/cpsl.md); those places are marked "(our choice)". The
loaders' geometry (soft labels and hard labels into the weak crop and the strong view) is the
loaders' business and tested elsewhere: here the target batch carries them ready, as the
official step receives them. The views are chosen so that every resampling in the steps is
exact in both conventions: the weak view keeps the full image's scale (so the official chain
``full -> random size -> crop -> flip`` and ours sample the same positions), and the strong view
is a flip, a TranslateX by whole label pixels and a cutout with label-aligned edges.

What is compared: the logged losses, every parameter's gradient, the parameters after the SGD
step, the EMA teacher, and the method's state (moving prototypes; P, P' and the memory).
The networks have dropout 0 so that two forwards of the same input agree.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from segcore.data.strong_view import strong_params
from segcore.methods.cpsl import CosinePrototypes
from segcore.methods.feature_memory import FeatureMemory
from segcore.models.deeplabv2 import ArchSpec, DeepLabV2
from segcore.pseudo.prototypes import PrototypeBank
from segcore.train import cpsl_stage1, distill_loop, proda_stage1
from segcore.train.common import Accel
from segcore.train.ema import EMATeacher

C = 4                       # classes
N = 2                       # images per batch
FULL = (32, 64)             # target full image (H, W)
CROP = (32, 48)             # weak crop (H, W); label grid 8 x 12 at stride 4
STRIDE = 4
Q = (CROP[0] // STRIDE, CROP[1] // STRIDE)
FULL_Q = (FULL[0] // STRIDE, FULL[1] // STRIDE)
IGNORE = 255                # ours (the official code uses 250 for labels)
FILL = 250                  # the official label_strong_T padding
LR = 0.1
TINY = ArchSpec(layers=(1, 1, 1, 1), stem_width=8, planes=(4, 8, 8, 8), head_width=16, gn_groups=4,
                aspp_dilations=(1, 2), se_reduction=4, dropout=0.0)
ACCEL = Accel(torch.device("cpu"))
# the strong view: flip, TranslateX by 0.25 of the width (12 crop px = 3 label px), cutout box
# covering crop columns 8..24 and rows 8..16 (PIL rectangle, end pixel included)
SHIFT_Q = 3
CUT = (8, 8, 24, 16)
OS8_FULL = (5, 9)           # the network's output on the full image (ceil-mode max pool)


def net(seed):
    torch.manual_seed(seed)
    return DeepLabV2(C, TINY)


def calibrated(model, images):
    """BN running statistics of ``images`` (a trained teacher's): with the fresh N(0, 0.01)
    init and unit running variances, an eval-mode network's output barely depends on its input."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None   # cumulative average: one batch sets the statistics
    with torch.no_grad():
        model.train()(images)
    return model


def up(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


# ---------------------------------------------------------------- the official pieces, literally

def ce(logits, labels):
    """``cross_entropy2d``: mean over the non-ignored pixels."""
    valid = labels != IGNORE
    logp = F.log_softmax(logits, dim=1)
    picked = logp.gather(1, labels.clamp(0, C - 1)[:, None])[:, 0]
    return -(picked * valid).sum() / valid.sum()


def rce(logits, labels):
    p = F.softmax(logits, dim=1).clamp(1e-7, 1.0)
    mask = (labels != IGNORE).float()
    lab = torch.where(labels == IGNORE, torch.full_like(labels, C), labels)
    one_hot = F.one_hot(lab, C + 1).float().permute(0, 3, 1, 2)[:, :-1].clamp(1e-4, 1.0)
    return -((p * torch.log(one_hot)).sum(1) * mask).sum() / (mask.sum() + 1e-6)


def mrkld(logits):
    logp = F.log_softmax(logits, dim=1)
    return -logp.sum() / logp.numel()


def full2weak(feat, view):
    out = []
    for i in range(feat.shape[0]):
        h, w = (int(v) for v in view["size"][i])
        f = up(feat[i:i + 1], [int(h / 4), int(w / 4)])
        y1, y2, x1, x2 = (int(v) for v in view["crop"][i])
        f = f[:, :, int(y1 / 4):int(y1 / 4) + int((y2 - y1) / 4), int(x1 / 4):int(x1 / 4) + int((x2 - x1) / 4)]
        if bool(view["flip"][i]):
            f = f.flip(-1)
        out.append(f)
    return torch.cat(out)


def label_strong_t(x):
    """``label_strong_T(x, params, padding=250, scale=4)`` for the fixed strong view: +1, flip,
    TranslateX (output column j samples input column j + shift; PIL's convention, with the
    TranslateX normalisation fixed (our choice)), cutout to 0, 0 -> padding + 1, -1."""
    x = x + 1
    x = x.flip(-1)
    shifted = torch.zeros_like(x)
    shifted[..., :, :x.shape[-1] - SHIFT_Q] = x[..., :, SHIFT_Q:]
    x = shifted
    x0, y0, x1, y1 = (v // 4 for v in CUT)
    x[..., y0:y1, x0:x1] = 0
    x[x == 0] = FILL + 1
    return x - 1


def proto_distance(feat, protos):
    """``feat_prototype_distance``: a loop over classes of the Euclidean norm."""
    n, _, h, w = feat.shape
    d = -torch.ones(n, protos.shape[0], h, w, dtype=feat.dtype)
    for k in range(protos.shape[0]):
        d[:, k] = torch.norm(protos[k].reshape(-1, 1, 1).expand(-1, h, w) - feat, 2, dim=1)
    return d


def sinkhorn(out, r, eps=0.05, iters=3):
    q = torch.exp(out.double() / eps).t()
    b = q.shape[1]
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True)
        q *= r.double()[:, None]
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t()


def self_training(logits_w, yhat, opts):
    loss = opts["rce_alpha"] * ce(logits_w, yhat) + opts["rce_beta"] * rce(logits_w, yhat)
    return loss + opts["regular_w"] * mrkld(logits_w)


# ---------------------------------------------------------------- fixed inputs

def batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    src_label = torch.randint(0, C, (N, *CROP), generator=g)
    src_label[:, :4] = IGNORE
    full = torch.rand(N, 3, *FULL, generator=g)
    view = {"size": torch.tensor([list(FULL)] * N), "crop": torch.tensor([[0, 32, 16, 64], [0, 32, 0, 48]]),
            "flip": torch.tensor([True, False])}
    weak = torch.stack([full[0, :, :, 16:].flip(-1), full[1, :, :, :48]])
    sv = [strong_params(*CROP, ops=[("TranslateX", 0.25)], flip=True, cutout=CUT) for _ in range(N)]
    strong_view = {k: torch.stack([p[k] for p in sv]) for k in sv[0]}
    strong = (weak.flip(-1) + 0.3 * torch.rand(weak.shape, generator=g)).clamp(0, 1)
    soft = torch.softmax(3 * torch.randn(N, C, *Q, generator=g, dtype=torch.float64), 1).float()
    soft_full = torch.softmax(3 * torch.randn(N, C, *OS8_FULL, generator=g), 1)
    hard = torch.randint(0, C, (N, *Q), generator=g)
    hard[:, :, :2] = IGNORE
    s = {"image": torch.rand(N, 3, *CROP, generator=g), "label": src_label}
    t = {"full": full, "weak": weak, "view": view, "strong": strong, "strong_view": strong_view, "soft": soft,
         "soft_full": soft_full, "hard": hard}
    return s, t


def flat(tensors):
    return torch.cat([x.reshape(-1).double() for x in tensors])


def assert_rel(a, b, what, tol=1e-4):
    a, b = (flat(x) if isinstance(x, (list, tuple)) else x.double() for x in (a, b))
    a, b = a.detach(), b.detach()
    err = float((a - b).norm() / b.norm().clamp_min(1e-12))
    assert err < tol, f"{what}: relative difference {err:.3g}"


def assert_step(student, ref_student, ref_loss_total, what):
    """Gradients of ours (left in .grad by the step) against the reference's, and the SGD step."""
    before = [p.detach().clone() for p in ref_student.parameters()]
    grads = torch.autograd.grad(ref_loss_total, list(ref_student.parameters()), allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(ref_student.parameters(), grads)]
    assert_rel([p.grad for p in student.parameters()], grads, f"{what}: student gradients")
    assert_rel(list(student.parameters()), [b - LR * g for b, g in zip(before, grads)], f"{what}: parameters", 1e-6)
    return [b - LR * g for b, g in zip(before, grads)]


# ---------------------------------------------------------------- ProDA stage 1

PRODA = {"rce": True, "rce_alpha": 0.1, "rce_beta": 1.0, "regular_w": 0.1, "proto_temperature": 0.5,
         "train_thred": 0.0, "label_stride": STRIDE, "label_geometry": "direct", "proto_consistW": 3.0,
         "moving_prototype": True, "proto_momentum": 0.2}


def test_proda_stage1_step_matches_the_official_step():
    s, t = batches()
    student = net(1)
    teacher = EMATeacher(student, momentum=0.9, train_mode=True)
    protos = torch.randn(C, TINY.head_width, generator=torch.Generator().manual_seed(3)) * 0.3
    bank = PrototypeBank.from_protos(protos)
    S, Tn, eta = copy.deepcopy(student), copy.deepcopy(teacher.module), protos.clone()
    opt = torch.optim.SGD(student.parameters(), lr=LR)
    logs = proda_stage1.train_step(student, teacher, bank, opt, s, t, PRODA, ACCEL, C)

    # --- the official step
    loss_src = ce(up(S(s["image"])["out"], CROP), s["label"])
    with torch.no_grad():
        ema_out = Tn(t["full"])
        ema_feat, ema_logits = up(ema_out["feat"], list(FULL_Q)), up(ema_out["out"], list(FULL_Q))
    logits_w = up(S(t["weak"])["out"], list(Q))
    T = PRODA["proto_temperature"]
    with torch.no_grad():
        d = proto_distance(full2weak(ema_feat, t["view"]), eta)
        weights = F.softmax(-(d - d.min(dim=1, keepdim=True)[0]) * T, dim=1)
        yhat = (weights * t["soft"]).max(1)[1]
    loss_cts = self_training(logits_w, yhat, PRODA)
    d_strong = label_strong_t(d)
    mask = (d_strong != FILL).float()
    q_t = F.softmax(-d_strong * T, dim=1)
    feat_s = up(S(t["strong"])["feat"], list(Q))
    q_s = F.log_softmax(-proto_distance(feat_s, eta) * T, dim=1)
    loss_consist = (F.kl_div(q_s, q_t, reduction="none") * mask).sum() / mask.sum()
    assert 0 < mask.mean() < 1                            # the fill is there, and masked out

    torch.testing.assert_close(logs["src"], loss_src.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logs["st"], loss_cts.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logs["kl"], loss_consist.detach(), rtol=1e-5, atol=1e-7)
    new = assert_step(student, S, loss_src + loss_cts + PRODA["proto_consistW"] * loss_consist, "proda")

    # moving prototypes: per image, per class with >= 10 argmax pixels, in order
    pred = ema_logits.argmax(1)
    for n in range(N):
        for k in range(C):
            sel = pred[n] == k
            if sel.sum() < 10:
                continue
            v = (ema_feat[n] * sel).sum(dim=(1, 2)) / sel.sum()
            eta[k] = eta[k] * (1 - PRODA["proto_momentum"]) + PRODA["proto_momentum"] * v
    assert not torch.allclose(eta, protos)
    assert_rel(bank.protos, eta, "proda: moving prototypes", 1e-5)
    # EMA teacher: 0.9 theta' + 0.1 theta (after the step); buffers copied from the student
    assert_rel(list(teacher.module.parameters()), [0.9 * a + 0.1 * b for a, b in zip(Tn.parameters(), new)],
               "proda: EMA teacher", 1e-6)
    for a, b in zip(teacher.module.buffers(), S.buffers()):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- CPSL stage 1

CPSL = {"rce": True, "rce_alpha": 0.1, "rce_beta": 1.0, "regular_w": 0.1, "temperature": 0.08, "epsilon": 0.05,
        "sinkhorn_iterations": 3, "samples_per_image": OS8_FULL[0] * OS8_FULL[1], "SL_lambda": 0.3,
        "contrast_lambda": 0.0, "proto_consistW": 2.0, "cutmix_p": 0.0, "train_thred": 0.0, "label_stride": STRIDE,
        "label_geometry": "direct"}
MEMORY = 120  # > the 90 samples of one step: old rows stay, so the push is checked too


def test_cpsl_stage1_step_matches_the_official_step():
    """Every pixel of the teacher's OS8 map is sampled (``samples_per_image`` = all of them), so
    the random sampling is a permutation, which neither the loss nor the memory's content (as a
    set of rows) depends on."""
    s, t = batches(1)
    g = torch.Generator().manual_seed(5)
    student = net(2)
    teacher = EMATeacher(student, momentum=0.9, train_mode=True)
    protos = CosinePrototypes(torch.randn(C, TINY.head_width, generator=g), ema_momentum=0.9)
    with torch.no_grad():   # P' != P, as after some steps
        protos.ema.copy_(F.normalize(protos.ema + 0.5 * torch.randn(protos.ema.shape, generator=g), dim=1))
    memory = FeatureMemory(MEMORY, {"feat": ((TINY.head_width,), torch.float32), "logits": ((C,), torch.float32),
                                    "label": ((), torch.int64)})
    memory.push(feat=F.normalize(torch.randn(MEMORY, TINY.head_width, generator=g), dim=1),
                logits=F.normalize(torch.randn(MEMORY, C, generator=g), dim=1),
                label=torch.randint(0, C, (MEMORY,), generator=g))
    old = {k: v.clone() for k, v in memory.buffers.items()}
    prior = torch.tensor([0.4, 0.3, 0.2, 0.1])
    S, Tn = copy.deepcopy(student), copy.deepcopy(teacher.module)
    P = protos.weight.detach().clone().requires_grad_(True)
    P_ema = protos.ema.clone()
    opt = torch.optim.SGD(student.parameters(), lr=LR)
    opt.add_param_group({"params": [protos.weight], "lr": LR})
    logs = cpsl_stage1.train_step(student, teacher, protos, memory, prior, opt, s, t, CPSL, ACCEL)

    # --- the official step
    tau = CPSL["temperature"]
    loss_src = ce(up(S(s["image"])["out"], CROP), s["label"])
    with torch.no_grad():
        ema_out = Tn(t["full"])
        feat_sl, out_sl = ema_out["feat"], ema_out["out"]
        ema_feat = up(feat_sl, list(FULL_Q))
    logits_w = up(S(t["weak"])["out"], list(Q))
    with torch.no_grad():
        w_feat = F.normalize(full2weak(ema_feat, t["view"]), dim=1)
        scores_w = torch.einsum("ndhw,cd->nchw", w_feat, F.normalize(P_ema, dim=1))   # rectified with P'
        yhat = (F.softmax(scores_w / tau, dim=1) * t["soft"]).max(1)[1]
    loss_cts = self_training(logits_w, yhat, CPSL)
    # self-labeling: the teacher's normalised features / logits at every OS8 pixel
    z = F.normalize(feat_sl.permute(0, 2, 3, 1).reshape(-1, TINY.head_width), dim=1)
    u = F.normalize(out_sl.permute(0, 2, 3, 1).reshape(-1, C), dim=1)
    m = z.shape[0]
    out = z @ F.normalize(P, dim=1).t()
    with torch.no_grad():
        # memory first, then this step's samples; one Sinkhorn over the memory and the whole
        # batch, memory scored with the normalised P (our choices)
        q1 = sinkhorn(torch.cat([old["feat"] @ F.normalize(P, dim=1).t(), out.detach()]), prior)[-m:]
        q2 = sinkhorn(torch.cat([old["logits"], u]), prior)[-m:]
    logp = F.log_softmax(out / tau, dim=1)
    loss_sl = -torch.mean(torch.sum(q1 * logp, dim=1)) - torch.mean(torch.sum(q2 * logp, dim=1))
    # consistency with the cosine scores to P'
    t_strong = label_strong_t(scores_w)
    mask = (t_strong != FILL).float()
    teacher_q = F.softmax(t_strong / tau, dim=1)
    feat_s = F.normalize(up(S(t["strong"])["feat"], list(Q)), dim=1)
    student_q = F.log_softmax(torch.einsum("ndhw,cd->nchw", feat_s, F.normalize(P_ema, dim=1)) / tau, dim=1)
    loss_consist = (F.kl_div(student_q, teacher_q, reduction="none") * mask).sum() / mask.sum()
    assert 0 < mask.mean() < 1

    for key, ref in (("src", loss_src), ("st", loss_cts), ("sl", loss_sl), ("kl", loss_consist)):
        torch.testing.assert_close(logs[key].double(), ref.detach().double(), rtol=1e-4, atol=1e-6, msg=key)
    total = loss_src + loss_cts + CPSL["SL_lambda"] * loss_sl + CPSL["proto_consistW"] * loss_consist
    grad_p = torch.autograd.grad(total, [P], retain_graph=True)[0]
    assert_rel(protos.weight.grad, grad_p, "cpsl: prototype gradient")
    new = assert_step(student, S, total, "cpsl")
    p_new = P.detach() - LR * grad_p
    assert_rel(protos.weight, p_new, "cpsl: P", 1e-5)
    assert_rel(protos.ema, 0.9 * P_ema + 0.1 * p_new, "cpsl: P'", 1e-5)
    assert_rel(list(teacher.module.parameters()), [0.9 * a + 0.1 * b for a, b in zip(Tn.parameters(), new)],
               "cpsl: EMA teacher", 1e-6)
    # the memory: the 90 new rows (teacher features, logits and labels rectified with P' on the
    # full grid (our choice)) replace the oldest ones
    with torch.no_grad():
        s_full = torch.einsum("ndhw,cd->nchw", F.normalize(feat_sl, dim=1), F.normalize(P_ema, dim=1))
        y_full = (F.softmax(s_full / tau, dim=1) * t["soft_full"]).max(1)[1].reshape(-1)
    expect = torch.cat([torch.cat([z, u, y_full[:, None].float()], 1),
                        torch.cat([old["feat"], old["logits"], old["label"][:, None].float()], 1)[m:]])
    got = torch.cat([memory.buffers["feat"], memory.buffers["logits"], memory.buffers["label"][:, None].float()], 1)

    def rows(x):
        return x[torch.argsort(x[:, 0])]
    assert_rel(rows(got), rows(expect), "cpsl: memory", 1e-5)


# ---------------------------------------------------------------- distillation (stages 2 and 3)

@pytest.mark.parametrize("kd_official", [False, True])
def test_distillation_step_matches_the_official_step(kd_official):
    s, t = batches(2)
    student, teacher = net(3), calibrated(net(4), t["strong"]).eval().requires_grad_(False)
    opts = {"distillation": 0.7, "kd_official": kd_official}
    S = copy.deepcopy(student)
    opt = torch.optim.SGD(student.parameters(), lr=LR)
    logs = distill_loop.train_step(student, teacher, opt, s, t, opts, ACCEL)

    loss_src = ce(up(S(s["image"])["out"], CROP), s["label"])
    out = up(S(t["strong"])["out"], list(Q))                       # the student sees the strong view
    loss = ce(out, t["hard"])
    with torch.no_grad():
        teacher_p = F.softmax(up(teacher(t["strong"])["out"], list(Q)), dim=1)   # and so does the teacher
    student_in = F.softmax(out, dim=1) if kd_official else F.log_softmax(out, dim=1)  # official: the bug
    loss_kd = F.kl_div(student_in, teacher_p, reduction="none").mean()
    torch.testing.assert_close(logs["src"], loss_src.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logs["pl"], loss.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logs["kd"], loss_kd.detach(), rtol=1e-5, atol=1e-7)
    assert_step(student, S, loss_src + loss + opts["distillation"] * loss_kd, "distill")

import math

import pytest
import torch
import torch.nn.functional as F

from segcore.data.classes import IGNORE_INDEX
from segcore.methods.losses import (
    ce_rce,
    cross_entropy,
    kd_loss,
    masked_kl,
    mrkld,
    proto_consistency_kl,
    rce_loss,
)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_rce_hand_computed():
    # one image, 3 pixels, 2 classes; pixel 2 ignored
    logits = torch.tensor([[[[0.0, 1.0, 5.0]], [[1.0, 0.0, -5.0]]]])   # (1, 2, 1, 3)
    labels = torch.tensor([[[0, 1, IGNORE_INDEX]]])
    p0 = 1 / (1 + math.e)             # p(class 0) at pixel 0
    p1 = 1 / (1 + math.e)             # p(class 1) at pixel 1
    k = -math.log(1e-4)
    expected = (k * (1 - p0) + k * (1 - p1)) / (2 + 1e-6)
    assert abs(rce_loss(logits, labels).item() - expected) < 1e-5


def test_rce_matches_official_one_hot_form():
    logits = _rand(2, 4, 3, 5) * 4
    labels = torch.randint(0, 4, (2, 3, 5), generator=torch.Generator().manual_seed(1))
    labels[0, 0, :2] = IGNORE_INDEX
    # the official code, with 255 in place of 250
    pred = F.softmax(logits, 1).clamp(1e-7, 1.0)
    mask = (labels != IGNORE_INDEX).float()
    lab = labels.clone()
    lab[lab == IGNORE_INDEX] = 4
    one_hot = F.one_hot(lab, 5).float().permute(0, 3, 1, 2)[:, :-1].clamp(1e-4, 1.0)
    ref = -(torch.sum(pred * torch.log(one_hot), dim=1) * mask).sum() / (mask.sum() + 1e-6)
    torch.testing.assert_close(rce_loss(logits, labels), ref)
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(ce_rce(logits, labels), 0.1 * ce + 1.0 * ref)
    torch.testing.assert_close(ce_rce(logits, labels, alpha=0.5, beta=2.0), 0.5 * ce + 2.0 * ref)


def test_all_ignored_is_zero_not_nan():
    logits = _rand(1, 3, 2, 2).requires_grad_(True)
    labels = torch.full((1, 2, 2), IGNORE_INDEX)
    loss = ce_rce(logits, labels)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)
    assert cross_entropy(logits, labels).item() == 0.0


def test_mrkld_by_hand():
    logits = torch.tensor([[[[0.0]], [[math.log(3.0)]]]])   # p = (1/4, 3/4)
    expected = -(math.log(0.25) + math.log(0.75)) / 2
    assert abs(mrkld(logits).item() - expected) < 1e-6
    x = _rand(2, 5, 3, 4)
    torch.testing.assert_close(mrkld(x), -F.log_softmax(x, 1).sum() / x.numel())


def test_proto_consistency_kl_vs_loop_with_mask():
    n, c, h, w, t = 2, 4, 3, 5, 1.5
    d_t = _rand(n, c, h, w, seed=2).abs() * 3
    d_s = (_rand(n, c, h, w, seed=3).abs() * 3).requires_grad_(True)
    mask = torch.rand(n, h, w, generator=torch.Generator().manual_seed(4)) > 0.3
    d_t_padded = torch.where(mask[:, None], d_t, torch.full_like(d_t, 250.0))   # official padding
    loss = proto_consistency_kl(d_t_padded, d_s, mask, temperature=t)
    total, count = 0.0, 0
    for i in range(n):
        for y in range(h):
            for x in range(w):
                for k in range(c):                      # the official mask is replicated over C
                    if not mask[i, y, x]:
                        continue
                    count += 1
                    qt = F.softmax(-d_t[i, :, y, x] * t, 0)
                    qs = F.log_softmax(-d_s[i, :, y, x].detach() * t, 0)
                    total += (qt[k] * (qt[k].log() - qs[k])).item()
    assert abs(loss.item() - total / count) < 1e-5
    # the official formula on the padded map
    teacher = F.softmax(-d_t_padded * t, 1)
    student = F.log_softmax(-d_s * t, 1)
    m4 = (d_t_padded != 250).float()
    official = (F.kl_div(student, teacher, reduction="none") * m4).sum() / m4.sum()
    torch.testing.assert_close(loss, official)
    loss.backward()
    assert torch.isfinite(d_s.grad).all()


def test_masked_kl_ignores_garbage_outside_mask():
    t = _rand(1, 3, 2, 2, seed=5)
    s = _rand(1, 3, 2, 2, seed=6)
    mask = torch.tensor([[[True, False], [True, True]]])
    t_bad = t.clone()
    t_bad[0, :, 0, 1] = float("nan")
    torch.testing.assert_close(masked_kl(t_bad, s, mask), masked_kl(t, s, mask))
    assert masked_kl(t, s, torch.zeros_like(mask)).item() == 0.0


def test_kd_correct_form():
    s = _rand(2, 5, 3, 4, seed=7)
    t = _rand(2, 5, 3, 4, seed=8)
    pt = F.softmax(t, 1)
    manual = (pt * (pt.log() - F.log_softmax(s, 1))).sum() / s.numel()
    torch.testing.assert_close(kd_loss(s, t), manual)
    assert kd_loss(s, t).item() >= 0
    assert abs(kd_loss(t, t).item()) < 1e-7
    for seed in range(5):
        assert kd_loss(_rand(1, 4, 2, 2, seed=10 + seed) * 3, _rand(1, 4, 2, 2, seed=20 + seed) * 3).item() >= 0


@pytest.mark.filterwarnings("ignore:reduction")
def test_kd_official_bug_form():
    s = _rand(2, 5, 3, 4, seed=9).requires_grad_(True)
    t = _rand(2, 5, 3, 4, seed=10)
    ps, pt = F.softmax(s, 1), F.softmax(t, 1)
    manual = (pt * pt.log() - pt * ps).sum() / s.numel()
    loss = kd_loss(s, t, official=True)
    torch.testing.assert_close(loss, manual)
    torch.testing.assert_close(loss, F.kl_div(ps, pt, reduction="mean"))
    # the released code: kl_div(reduction='none') * (teacher != 250) summed over the mask
    raw = F.kl_div(ps, pt, reduction="none")
    mask = (pt != 250).float()
    torch.testing.assert_close(loss, (raw * mask).sum() / mask.sum())
    assert kd_loss(t, t, official=True).item() < 0      # the bug: negative at the optimum
    loss.backward()
    assert s.grad is not None

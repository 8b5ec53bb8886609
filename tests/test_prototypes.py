import pytest
import torch

from segcore.data.classes import IGNORE_INDEX
from segcore.pseudo.prototypes import (
    PrototypeBank,
    class_means,
    class_means_from_logits,
    moving_average_update,
    running_mean_update,
)


def _loop_class_means(feat, labels, c, min_pixels):
    n, d = feat.shape[:2]
    means = torch.zeros(n, c, d, dtype=torch.float64)
    valid = torch.zeros(n, c, dtype=torch.bool)
    for i in range(n):
        for k in range(c):
            pix = [(y, x) for y in range(labels.shape[1]) for x in range(labels.shape[2]) if labels[i, y, x] == k]
            if len(pix) >= min_pixels:
                valid[i, k] = True
                means[i, k] = torch.stack([feat[i, :, y, x].double() for y, x in pix]).mean(0)
    return means, valid


def test_class_means_vs_loop():
    g = torch.Generator().manual_seed(0)
    n, d, h, w, c = 3, 5, 7, 9, 4
    feat = torch.randn(n, d, h, w, generator=g)
    labels = torch.randint(0, c, (n, h, w), generator=g)
    labels[torch.rand(n, h, w, generator=g) < 0.2] = IGNORE_INDEX
    labels[1][labels[1] == 2] = 3          # class 2 absent in image 1
    labels[2, :, :] = torch.where(labels[2] == 1, torch.tensor(0), labels[2])
    labels[2, 0, :5] = 1                   # class 1 has 5 pixels in image 2: below min_pixels=10
    for min_pixels in (10, 1):
        means, valid = class_means(feat, labels, c, min_pixels=min_pixels)
        ref_means, ref_valid = _loop_class_means(feat, labels, c, min_pixels)
        assert means.shape == (n, c, d) and valid.shape == (n, c)
        assert torch.equal(valid, ref_valid)
        torch.testing.assert_close(means.double(), ref_means, rtol=1e-5, atol=1e-6)
    assert not valid[1, 2]
    means, valid = class_means(feat, labels, c)
    assert not valid[2, 1] and torch.all(means[2, 1] == 0)


def test_class_means_from_logits_uses_argmax():
    g = torch.Generator().manual_seed(1)
    feat = torch.randn(2, 3, 6, 6, generator=g)
    logits = torch.randn(2, 4, 6, 6, generator=g)
    a, va = class_means_from_logits(feat, logits, min_pixels=2)
    b, vb = class_means(feat, logits.argmax(1), 4, min_pixels=2)
    assert torch.equal(a, b) and torch.equal(va, vb)


def _official_running_mean(protos, counts, means, valid, cap):
    protos, counts = protos.clone().double(), counts.clone().double()
    for i in range(means.shape[0]):
        for k in range(means.shape[1]):
            if not valid[i, k]:
                continue
            v = means[i, k].double()
            if v.sum().item() == 0:
                continue
            protos[k] = protos[k] * counts[k] + v
            counts[k] += 1
            protos[k] = protos[k] / counts[k]
            counts[k] = min(counts[k], cap)
    return protos, counts


def test_running_mean_matches_official_including_cap():
    g = torch.Generator().manual_seed(2)
    c, d, cap = 4, 6, 5
    bank = PrototypeBank(c, d)
    ref_p, ref_n = torch.zeros(c, d, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
    for _ in range(6):                      # 6 batches of 3 images: counts run past the cap of 5
        means = torch.randn(3, c, d, generator=g)
        valid = torch.rand(3, c, generator=g) < 0.7
        valid[:, 0] = True
        means[0, 1] = 0.0                   # zero vector: skipped like the official code
        valid[0, 1] = True
        bank.add_image_means(means, valid, cap=cap)
        ref_p, ref_n = _official_running_mean(ref_p, ref_n, means, valid, cap)
    assert bank.counts[0] == cap and bank.counts.dtype == torch.long
    assert torch.equal(bank.counts, ref_n.long())
    torch.testing.assert_close(bank.protos.double(), ref_p, rtol=1e-5, atol=1e-6)


def test_running_mean_below_cap_is_plain_mean():
    g = torch.Generator().manual_seed(3)
    vs = torch.randn(7, 2, 3, generator=g)
    valid = torch.ones(7, 2, dtype=torch.bool)
    protos, counts = running_mean_update(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), vs, valid)
    torch.testing.assert_close(protos, vs.mean(0))
    assert counts.tolist() == [7, 7]


def _sequential_moving(protos, means, valid, m):
    protos = protos.clone().double()
    for i in range(means.shape[0]):
        for k in range(means.shape[1]):
            if valid[i, k] and means[i, k].sum().item() != 0:
                protos[k] = protos[k] * (1 - m) + m * means[i, k].double()
    return protos


@pytest.mark.parametrize("m", [1e-4, 0.3])
def test_moving_update_matches_sequential_loop(m):
    g = torch.Generator().manual_seed(4)
    c, d = 5, 8
    protos = torch.randn(c, d, generator=g)
    means = torch.randn(6, c, d, generator=g)
    valid = torch.rand(6, c, generator=g) < 0.6
    valid[:, 3] = False                     # a class seen by no image stays put
    means[~valid] = float("nan")            # invalid entries must not leak in
    ref = _sequential_moving(protos, means, valid, m)
    out = moving_average_update(protos, means, valid, m)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(out[3], protos[3])
    bank = PrototypeBank.from_protos(protos)
    bank.moving_update(means, valid, m, cap=4)
    torch.testing.assert_close(bank.protos, out)
    assert bank.counts.tolist() == valid.sum(0).clamp(max=4).tolist()


def test_state_dict_roundtrip():
    bank = PrototypeBank(3, 2)
    bank.add_image_means(torch.ones(1, 3, 2), torch.tensor([[True, False, True]]))
    state = bank.state_dict()
    assert set(state) == {"protos", "counts"}
    other = PrototypeBank(3, 2)
    other.load_state_dict(state)
    assert torch.equal(other.protos, bank.protos) and torch.equal(other.counts, bank.counts)
    state["protos"].add_(1)                 # a copy, not a view of the bank
    assert torch.equal(other.protos, bank.protos)

import math

import torch
import torch.nn.functional as F

from segcore.data.classes import IGNORE_INDEX
from segcore.methods.rectify import (
    cosine_scores,
    cosine_weights,
    prototype_distances,
    prototype_weights,
    rectify,
)


def test_distances_vs_cdist_and_class_loop():
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 16, 5, 7, generator=g) * 3
    protos = torch.randn(4, 16, generator=g) * 3
    d = prototype_distances(feat, protos)
    assert d.shape == (2, 4, 5, 7)
    flat = feat.permute(0, 2, 3, 1).reshape(-1, 16)
    ref = torch.cdist(flat.double(), protos.double()).reshape(2, 5, 7, 4).permute(0, 3, 1, 2)
    torch.testing.assert_close(d.double(), ref, rtol=1e-4, atol=1e-4)
    # the official per-class loop: torch.norm(eta_k - f, dim=1)
    loop = torch.stack([torch.norm(protos[k].reshape(-1, 1, 1) - feat, 2, dim=1) for k in range(4)], 1)
    torch.testing.assert_close(d, loop, rtol=1e-4, atol=1e-4)


def test_distance_to_itself_is_finite_with_finite_grad():
    protos = torch.randn(3, 8)
    feat = protos[1].reshape(1, 8, 1, 1).clone().requires_grad_(True)
    d = prototype_distances(feat, protos)
    assert d[0, 1, 0, 0] < 1e-3
    d.sum().backward()
    assert torch.isfinite(feat.grad).all()


def test_weights_are_softmax_of_minus_d_times_t():
    d = torch.tensor([[1.0, 2.0, 4.0]]).reshape(1, 3, 1, 1)
    w = prototype_weights(d, temperature=2.0)
    e = torch.tensor([math.exp(-2.0), math.exp(-4.0), math.exp(-8.0)])
    torch.testing.assert_close(w.flatten(), e / e.sum())
    # the official min-shift is a no-op
    torch.testing.assert_close(prototype_weights(d - d.min(1, keepdim=True)[0], 2.0), w)


def test_rectify_hand_computed_two_pixels():
    # pixel 0: p = (0.6, 0.4), w = (0.2, 0.8) -> wp = (0.12, 0.32): label 1, conf 0.32/0.44 = 0.727
    # pixel 1: p = (0.7, 0.3), w = (0.5, 0.5) -> wp = (0.35, 0.15): label 0, conf 0.7
    p = torch.tensor([[0.6, 0.7], [0.4, 0.3]]).reshape(1, 2, 1, 2)
    w = torch.tensor([[0.2, 0.5], [0.8, 0.5]]).reshape(1, 2, 1, 2)
    assert rectify(p, w).tolist() == [[[1, 0]]]
    assert rectify(p, w, threshold=0.0).dtype == torch.long
    assert rectify(p, w, threshold=0.71).tolist() == [[[1, IGNORE_INDEX]]]
    assert rectify(p, w, threshold=0.73).tolist() == [[[IGNORE_INDEX, IGNORE_INDEX]]]
    assert rectify(p, w, threshold=0.7).tolist() == [[[1, 0]]]     # strictly below is dropped


def test_cosine_scores_and_weights():
    g = torch.Generator().manual_seed(1)
    feat = torch.randn(2, 6, 3, 4, generator=g)
    protos = torch.randn(5, 6, generator=g)
    s = cosine_scores(feat, protos)
    for k in range(5):
        ref = F.cosine_similarity(feat, protos[k].reshape(1, 6, 1, 1), dim=1)
        torch.testing.assert_close(s[:, k], ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cosine_weights(s, 0.08), F.softmax(s / 0.08, dim=1))


def test_half_precision_features_are_computed_in_float32():
    g = torch.Generator().manual_seed(2)
    feat = torch.randn(1, 64, 4, 4, generator=g) * 10 + 20
    protos = feat[0, :, :3, 0].T.clone() + 0.01 * torch.randn(3, 64, generator=g)
    ref = prototype_distances(feat, protos)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = prototype_distances(feat.bfloat16(), protos)
    assert d.dtype == torch.float32
    torch.testing.assert_close(d, prototype_distances(feat.bfloat16().float(), protos))
    assert (d - ref).abs().max() < 1.0

"""SeCo's pieces: confident pixels, PSA's majority rule, components, the SCC rules, the classical
proposer, the SAM path (a tiny random SAM saved and loaded from a file), the refined store."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from skimage import measure

from segcore.pseudo.store_base import IGNORE
from segcore.seco import confident, psa, quality, scc
from segcore.seco.classical import ClassicalProposer
from segcore.seco.components import components, render
from segcore.seco.refined_store import RefinedStore, RefinedWriter
from segcore.seco.regions import stuff_classes, thing_classes

ROAD, SIDEWALK, BUILDING, SKY, CAR, PERSON = 0, 1, 2, 10, 13, 11
X = IGNORE


class MaskList:
    """A proposer that hands out fixed masks (and echoes the component for things)."""

    name = "fixed"

    def __init__(self, masks, grow=None):
        self.masks, self.grow = masks, grow

    def set_image(self, image):
        pass

    def stuff_regions(self):
        return self.masks

    def thing_region(self, component, label):
        return component if self.grow is None else self.grow


# ------------------------------------------------------------------------- classes / confident

def test_stuff_and_thing_split():
    assert stuff_classes(19) == (0, 1, 2, 3, 4, 8, 9, 10)
    assert thing_classes(19) == (5, 6, 7, 11, 12, 13, 14, 15, 16, 17, 18)
    assert stuff_classes(16) == (0, 1, 2, 3, 4, 8, 9)


def test_confident_pixels_keep_the_top_share_of_each_class():
    rng = np.random.default_rng(0)
    label = np.where(np.arange(200).reshape(10, 20) < 150, ROAD, CAR).astype(np.uint8)
    # road is confident everywhere, car never: a global ranking would keep almost no car
    conf = np.zeros(label.shape)   # values distinct in float16, in random order
    conf[label == ROAD] = rng.permutation(np.linspace(0.9, 0.999, 150))
    conf[label == CAR] = rng.permutation(np.linspace(0.2, 0.5, 50))
    keep = confident.thresholds(confident.class_histograms([(label, conf)], 19), 0.5, "class")
    out = confident.confident_label(label, conf, keep)
    for c, n in ((ROAD, 150), (CAR, 50)):
        kept = (out == c)
        assert kept.sum() == n // 2
        assert conf[kept].min() >= conf[(label == c) & ~kept].max()  # the top half, not any half
    glob = confident.confident_label(label, conf, confident.thresholds(
        confident.class_histograms([(label, conf)], 19), 0.5, "global"))
    assert (glob == CAR).sum() == 0 and (glob == ROAD).sum() == 100


# ------------------------------------------------------------------------------ PSA

def test_majority_rule_on_hand_made_masks():
    lab = np.array([[ROAD, ROAD, ROAD, CAR, CAR],
                    [ROAD, SIDEWALK, X, CAR, CAR],
                    [SKY, SKY, X, X, X],
                    [CAR, CAR, CAR, CAR, SKY]], dtype=np.uint8)
    stuff = stuff_classes(19)
    m = np.zeros_like(lab, dtype=bool)
    a, b, c, d, e = (m.copy() for _ in range(5))
    a[:2, :3] = True          # 4 road, 1 sidewalk, 1 ignore -> road (4/5)
    b[3, :] = True            # 4 car, 1 sky: sky 1/5 = 20%, not above -> none
    c[2:, 3:] = True          # 1 car, 1 sky (2 ignore): sky 1/2 -> sky
    d[2, :3] = True           # only ignore + sky -> sky
    e[1:3, 2] = True          # only ignore -> none
    assert psa.majority_label(a, lab, stuff) == ROAD
    assert psa.majority_label(b, lab, stuff) is None
    assert psa.majority_label(b, lab, stuff, min_share=0.19) == SKY
    assert psa.majority_label(c, lab, stuff) == SKY
    assert psa.majority_label(d, lab, stuff) == SKY
    assert psa.majority_label(e, lab, stuff) is None
    # later masks overwrite earlier ones; uncovered pixels become ignore; things ride on top
    out = psa.aggregate(np.zeros((*lab.shape, 3), np.uint8), lab, MaskList([a, d, b]), 19, min_thing_pixels=3)
    want = np.full(lab.shape, X)
    want[:2, :3] = ROAD
    want[2, :3] = SKY
    want[3, :] = CAR        # the bottom car component (4 px) prompts itself; b took no stuff class
    want[3, 4] = X
    want[:2, 3:] = CAR      # the top-right car component (4 px)
    np.testing.assert_array_equal(out, want)
    # the vectorised rule on a segment map gives what the mask-by-mask rule gives
    seg = np.zeros(lab.shape, np.int64)
    seg[:2, :3], seg[3, :], seg[2:, 3:], seg[2, :3], seg[3, 3:] = 1, 2, 3, 4, 2
    per_mask = np.full(lab.shape, X, np.uint8)
    for s in range(5):
        cl = psa.majority_label(seg == s, lab, stuff)
        if cl is not None:
            per_mask[seg == s] = cl
    np.testing.assert_array_equal(psa.segment_majority(seg, lab, stuff), per_mask)


def test_things_below_the_size_floor_prompt_nothing():
    lab = np.full((6, 6), X, np.uint8)
    lab[0, :4] = CAR              # 4 pixels: below a floor of 5
    lab[3:, 3:] = PERSON          # 9 pixels
    out = psa.aggregate(np.zeros((6, 6, 3), np.uint8), lab, MaskList([]), 19, min_thing_pixels=5)
    assert (out == CAR).sum() == 0 and (out == PERSON).sum() == 9


# ------------------------------------------------------------------------------ components

def test_components_match_skimage_labelling():
    rng = np.random.default_rng(1)
    lab = rng.choice([ROAD, CAR, PERSON, X], size=(40, 50), p=[0.3, 0.3, 0.2, 0.2]).astype(np.uint8)
    comps = components(lab)
    assert (comps.ids > 0).sum() == (lab != X).sum()
    total = 0
    for c in (ROAD, CAR, PERSON):
        ref = measure.label(lab == c, connectivity=2, background=0)
        ours = np.where(lab == c, comps.ids, 0)
        total += ref.max()
        # the same partition: a bijection between our ids and skimage's
        pairs = np.unique(np.stack([ref[lab == c], ours[lab == c]]), axis=1)
        assert pairs.shape[1] == ref.max() == len(np.unique(ours[lab == c]))
        assert set(comps.classes[np.unique(ours[lab == c]) - 1]) == {c}
    assert len(comps) == total
    k = int(np.argmax(comps.areas))
    ys, xs = np.nonzero(comps.mask(k))
    assert tuple(comps.boxes[k]) == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
    assert comps.areas[k] == len(ys)
    big = components(lab, min_pixels=5)
    assert len(big) == (comps.areas >= 5).sum()
    np.testing.assert_array_equal(render(comps, comps.classes), lab)


# ------------------------------------------------------------------------------ SCC rules

def planted(seed=0):
    rng = np.random.default_rng(seed)
    n_clean, n_noisy = 80, 20
    loss = np.concatenate([rng.normal(0.2, 0.05, n_clean), rng.normal(2.5, 0.2, n_noisy)]).clip(0)
    psa_class = rng.integers(0, 5, n_clean + n_noisy)
    probs = np.full((n_clean + n_noisy, 5), 0.1)
    probs[np.arange(len(probs)), psa_class] = 0.6
    # half of the noisy ones are confidently another class (0.97 > 0.95), the rest are unsure
    sure = np.arange(n_clean, n_clean + n_noisy, 2)
    probs[sure] = 0.0075
    probs[sure, (psa_class[sure] + 1) % 5] = 0.97
    return loss, probs, psa_class, sure


def test_gmm_rule_on_planted_bimodal_losses():
    loss, probs, psa_class, sure = planted()
    eta = scc.noise_posterior(loss)
    assert (eta[:80] < 0.6).all() and (eta[80:] >= 0.6).all()
    out = scc.gmm_rule(loss, probs, psa_class)
    np.testing.assert_array_equal(out[:80], psa_class[:80])           # clean: kept with their PSA class
    np.testing.assert_array_equal(out[sure], (psa_class[sure] + 1) % 5)  # relabelled above 0.95
    unsure = np.setdiff1d(np.arange(80, 100), sure)
    assert (out[unsure] == IGNORE).all()
    probs2 = probs.copy()
    probs2[sure] = np.where(probs2[sure] == 0.97, 0.94, probs2[sure])   # below 0.95: dropped instead
    assert (scc.gmm_rule(loss, probs2, psa_class)[80:] == IGNORE).all()


def test_median_rule():
    loss = np.array([1.0, 2.0, 3.0, 10.0, 0.5, 0.7, 5.0])
    probs = np.eye(3)[[0, 0, 0, 0, 1, 1, 2]] * 0.8 + 0.2 / 3
    # class medians: 0 -> 2.5, 1 -> 0.6, 2 -> 5.0; their mean over the components = 19.1 / 7
    out = scc.median_rule(loss, probs)
    #  3.0 > 2.5 and > 2.73 -> drop; 10 drop; 0.7 > 0.6 but < 2.73 keep; 5.0 = its median keep
    np.testing.assert_array_equal(out, [0, 0, X, X, 1, 1, 2])
    out = scc.median_rule(loss, probs, mode="loss")     # global median 2.0
    np.testing.assert_array_equal(out, [0, 0, X, X, 1, 1, X])
    # the released rule writes the classifier's prediction, not the PSA class
    assert scc.decide("median", loss, probs, np.zeros(7, int), {})[6] == 2


# ------------------------------------------------------------------------------ classical proposer

def street_scene(h=48, w=96, seed=0):
    """Sky over building over road, a red car on the road; pixel labels on a sparse, partly
    wrong subset (what a base's confident pixels look like)."""
    rng = np.random.default_rng(seed)
    gt = np.full((h, w), ROAD, np.uint8)
    gt[: h // 4] = SKY
    gt[h // 4: h // 2] = BUILDING
    gt[30:40, 20:44] = CAR
    colours = {ROAD: (90, 90, 90), SKY: (70, 130, 220), BUILDING: (150, 110, 70), CAR: (220, 20, 20)}
    img = np.zeros((h, w, 3), np.float32)
    for c, col in colours.items():
        img[gt == c] = col
    img = (img + rng.normal(0, 4, img.shape)).clip(0, 255).astype(np.uint8)
    lab = np.where(rng.random((h, w)) < 0.3, gt, X).astype(np.uint8)
    lab[32:38, 26:38] = CAR                      # the car's confident core
    wrong = (rng.random((h, w)) < 0.1) & (lab != X)
    lab[wrong] = SIDEWALK
    return img, lab, gt


def test_classical_proposer_on_a_synthetic_scene():
    img, lab, gt = street_scene()
    prop = ClassicalProposer(grow_steps=20)
    out = psa.aggregate(img, lab, prop, 19)
    before = quality.quality(quality.counts([(lab, gt)], 19))
    after = quality.quality(quality.counts([(out, gt)], 19))
    assert after["pixel_coverage"] > 0.9 > 0.4 > before["pixel_coverage"]
    assert after["pixel_precision"] > 0.97 > before["pixel_precision"]
    car = out == CAR
    assert (car & (gt == CAR)).sum() > 0.9 * (gt == CAR).sum() and (car & (gt != CAR)).sum() == 0
    # the superpixels are one region each: the mask-by-mask path gives the same labels
    slow_out = psa.aggregate(img, lab, _MasksOnly(prop), 19)
    np.testing.assert_array_equal(slow_out, out)


class _MasksOnly:
    """The same proposer seen through the mask-list interface only."""

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name

    def set_image(self, image):
        self.inner.set_image(image)

    def stuff_regions(self):
        return list(self.inner.stuff_regions())

    def thing_region(self, component, label):
        return self.inner.thing_region(component, label)


# ------------------------------------------------------------------------------ refined store

def test_refined_store_round_trip_and_metadata(tmp_path):
    path = tmp_path / "scc_labels.h5"
    labels = np.array([[[0, 1], [X, X]], [[2, 2], [2, X]]], np.uint8)
    with RefinedWriter(path, ["a", "b"], (2, 2), 19, "scc", "classical_felzenszwalb", "proda/stage1", "gmm") as w:
        w.write([0, 1], labels)
    s = RefinedStore(path, expect_keys=["a", "b"], expect_classes=19, expect_stage="scc")
    assert s.coverage == pytest.approx(5 / 8) and s.proposer == "classical_felzenszwalb"
    assert list(s.attrs["class_pixels"][:3]) == [1, 1, 3]
    np.testing.assert_array_equal(s.get(1)[0].numpy(), labels[1])
    with pytest.raises(ValueError, match="expected psa"):
        RefinedStore(path, expect_stage="psa")


def test_refined_store_refused_when_incomplete(tmp_path):
    path = tmp_path / "psa_labels.h5"
    with pytest.raises(ValueError, match="never written"):
        with RefinedWriter(path, ["a", "b"], (2, 2), 19, "psa", "sam_vit_h", "proda/stage1") as w:
            w.write(0, np.zeros((2, 2), np.uint8))
    assert not path.exists() and not list(tmp_path.iterdir())   # nothing half-written left behind
    with RefinedWriter(path, ["a"], (2, 2), 19, "psa", "sam_vit_h", "proda/stage1") as w:
        w.write(0, np.zeros((2, 2), np.uint8))
    with h5py.File(path, "r+") as h5:
        h5.attrs["complete"] = False                              # as an interrupted write leaves it
    with pytest.raises(ValueError, match="incomplete"):
        RefinedStore(path)
    with h5py.File(path, "r+") as h5:
        h5.attrs["complete"] = True
        del h5.attrs["proposer"]
    with pytest.raises(ValueError, match="lacks its metadata"):
        RefinedStore(path)


# ------------------------------------------------------------------------------ quality

def test_quality_precision_and_coverage():
    gt = np.array([0, 0, 0, 1, 1, X])
    lab = np.array([0, 1, X, 1, X, 0])
    q = quality.quality(quality.counts([(lab, gt)], 2))
    np.testing.assert_allclose(q["precision"], [1.0, 0.5])      # the pixel over ignore GT is not judged
    np.testing.assert_allclose(q["coverage"], [2 / 3, 1 / 2])
    assert q["pixel_precision"] == pytest.approx(2 / 3) and q["pixel_coverage"] == pytest.approx(3 / 5)


# ------------------------------------------------------------------------------ SAM path

TINY_SAM = {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 16, "img_size": 128,
            "global_attn_indexes": [1], "window_size": 4, "mlp_ratio": 2.0, "out_chans": 32,
            "mask_in_chans": 8, "decoder_depth": 1, "decoder_mlp_dim": 64, "num_multimask_outputs": 3,
            "iou_head_depth": 2, "iou_head_hidden_dim": 32}


def test_sam_architecture_is_read_from_the_official_shapes():
    from segment_anything import sam_model_registry

    from segcore.seco.sam import sam_architecture

    with torch.device("meta"):           # the real ViT-B layout, without allocating it
        sd = sam_model_registry["vit_b"]().state_dict()
    arch = sam_architecture(sd)
    assert (arch["embed_dim"], arch["depth"], arch["num_heads"], arch["img_size"]) == (768, 12, 12, 1024)
    assert arch["global_attn_indexes"] == [2, 5, 8, 11] and arch["window_size"] == 14
    assert (arch["out_chans"], arch["decoder_depth"], arch["decoder_mlp_dim"]) == (256, 2, 2048)


def test_sam_path_on_a_tiny_random_sam(tmp_path):
    from segcore.seco import sam as S

    torch.manual_seed(0)
    path = tmp_path / "sam_tiny.pth"
    torch.save(S.build_sam(TINY_SAM).state_dict(), path)       # as Meta releases them: a state dict
    model = S.load_sam(path)
    assert S.sam_architecture(model.state_dict()) == TINY_SAM
    calls = []
    model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    # relaxed filters: a random SAM's masks would not pass the official quality thresholds
    prop = S.SamProposer(model, {"points_per_side": 4, "pred_iou_thresh": -10.0, "stability_score_thresh": -1.0},
                         prompts="released", name="sam_tiny")
    img, lab, gt = street_scene()
    out = psa.aggregate(img, lab, prop, 19)
    assert len(calls) == 1                                      # one encoder pass per image
    assert out.shape == lab.shape and out.dtype == np.uint8
    present = set(np.unique(out)) - {X}
    assert present and present <= set(np.unique(lab)) - {X}
    comp = lab == CAR
    for rule in S.PROMPTS:
        prop.prompts = rule
        region = prop.thing_region(comp, lab)
        assert region.shape == lab.shape and region.dtype == bool
    assert len(calls) == 1
    with pytest.raises(ValueError, match="not a SAM state dict"):
        torch.save({"w": torch.zeros(1)}, tmp_path / "bad.pth")
        S.load_sam(tmp_path / "bad.pth")


def test_sam_prompts():
    from segcore.seco import sam as S

    comp = np.zeros((20, 40), bool)
    comp[5:9, 10:30] = True                          # 4 x 20 box
    box, pts = S.released_prompt(comp, np.zeros(comp.shape))
    d = 4 * 20 * 1.25 / (2 * 24)                     # offset of the (axis-aligned) min-area rectangle
    np.testing.assert_allclose(box, [10 - d, 5 - d, 30 + d, 9 + d], atol=1e-6)
    assert len(pts) == 2 and all(comp[int(y), int(x)] for x, y in pts)
    ent = np.ones(comp.shape)
    ent[6, 12] = ent[8, 25] = 0                      # one in rows 5-6, one in rows 7-8
    _, pts = S.released_prompt(comp, ent)            # the lowest-entropy pixel of each half
    assert sorted(map(tuple, pts.astype(int))) == [(12, 6), (25, 8)]
    box, pts = S.paper_prompt(comp)
    s = np.sqrt(1.5)
    np.testing.assert_allclose(box, [20 - 10 * s, 7 - 2 * s, 20 + 10 * s, 7 + 2 * s])
    assert comp[int(pts[0, 1]), int(pts[0, 0])]

"""CPSL stage 1 pieces: Sinkhorn with a class prior, the ring-buffer memory, the self-labeling
loss (prototypes only), CutMix alignment, LAB colour transfer, the class distribution, the
contrastive loss against a loop reference, and a short stage-1 run that resumes exactly."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from segcore.data.cutmix import box_mask, mix_images, mix_labels, sample_box
from segcore.data.lab_transfer import (
    LabTransferSet,
    compute_lab_stats,
    lab_stats,
    lab_to_rgb,
    lab_transfer,
    read_lab_stats,
    rgb_to_lab,
    write_lab_stats,
)
from segcore.methods import cpsl
from segcore.methods.feature_memory import FeatureMemory
from segcore.methods.sinkhorn import sinkhorn
from segcore.models.deeplabv2 import build_deeplabv2


# ------------------------------------------------------------------------------------ Sinkhorn
def _ipf_reference(scores, prior, epsilon, iterations):
    """The official algorithm written entry by entry (iterative proportional fitting)."""
    b, k = len(scores), len(scores[0])
    import math

    q = [[math.exp(scores[i][c] / epsilon) for i in range(b)] for c in range(k)]   # K x B
    total = sum(sum(row) for row in q)
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        for c in range(k):
            s = sum(q[c])
            q[c] = [v / s * prior[c] for v in q[c]]
        for i in range(b):
            s = sum(q[c][i] for c in range(k))
            for c in range(k):
                q[c][i] = q[c][i] / s / b
    return [[q[c][i] * b for c in range(k)] for i in range(b)]


def test_sinkhorn_matches_brute_force_ipf():
    g = torch.Generator().manual_seed(0)
    scores = F.normalize(torch.randn(40, 6, generator=g), dim=1)
    prior = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.04, 0.01], dtype=torch.float64)
    for iterations in (1, 3, 7):
        ref = torch.tensor(_ipf_reference(scores.double().tolist(), prior.tolist(), 0.05, iterations),
                           dtype=torch.float64)
        got = sinkhorn(scores.double(), prior, epsilon=0.05, iterations=iterations)
        assert torch.allclose(got, ref, atol=1e-10, rtol=1e-8), (got - ref).abs().max()


def test_sinkhorn_marginals_and_class_prior_honoured():
    g = torch.Generator().manual_seed(1)
    b, k = 300, 5
    scores = F.normalize(torch.randn(b, k, generator=g) + torch.tensor([2.0, 0, 0, 0, 0]), dim=1)
    prior = torch.tensor([0.05, 0.4, 0.3, 0.2, 0.05])
    q = sinkhorn(scores, prior, epsilon=0.05, iterations=300)
    assert torch.allclose(q.sum(dim=1), torch.ones(b), atol=1e-4)           # each sample: a distribution
    assert torch.allclose(q.sum(dim=0) / b, prior, atol=1e-4)               # classes: the prior
    # not vacuous: the scores alone put most mass on class 0, far from the prior
    assert (F.softmax(scores / 0.05, dim=1).mean(0) - prior).abs().max() > 0.3
    # the uniform prior (SwAV) balances the classes instead
    qu = sinkhorn(scores, None, epsilon=0.05, iterations=300)
    assert torch.allclose(qu.sum(dim=0) / b, torch.full((k,), 1.0 / k), atol=1e-4)
    # fewer rounds (the official 3): rows still sum to 1; the class marginal moves toward the prior
    errors = []
    for rounds in (1, 3, 30):
        qr = sinkhorn(scores, prior, epsilon=0.05, iterations=rounds)
        assert torch.allclose(qr.sum(dim=1), torch.ones(b), atol=1e-5)
        errors.append(float((qr.sum(0) / b - prior).abs().max()))
    assert errors[0] > errors[1] > errors[2]


def test_sinkhorn_zero_prior_class_gets_nothing_and_no_nan():
    scores = F.normalize(torch.randn(50, 4, generator=torch.Generator().manual_seed(2)), dim=1)
    q = sinkhorn(scores, torch.tensor([0.5, 0.0, 0.3, 0.2]), iterations=5)
    assert torch.isfinite(q).all() and torch.equal(q[:, 1], torch.zeros(50))
    assert torch.allclose(q.sum(1), torch.ones(50), atol=1e-6)


# ------------------------------------------------------------------------------- the memory
def test_ring_buffer_contents_after_wrap_around():
    mem = FeatureMemory(10, {"feat": ((2,), torch.float32), "label": ((), torch.int64)})
    storage = mem.buffers["feat"].data_ptr()
    batches = [torch.arange(4 * j, 4 * j + 4) for j in range(3)]  # samples 0..11
    for j, ids in enumerate(batches):
        mem.push(feat=torch.stack([ids.float(), -ids.float()], 1), label=ids)
        assert mem.full == (j == 2)
    assert mem.ptr == 2 and len(mem) == 10
    # slots 0, 1 were overwritten by samples 10, 11; nothing moved
    assert mem.get("label").tolist() == [10, 11, 2, 3, 4, 5, 6, 7, 8, 9]
    assert mem.ordered("label").tolist() == list(range(2, 12))
    assert torch.equal(mem.ordered("feat")[:, 1], -torch.arange(2, 12).float())
    assert mem.buffers["feat"].data_ptr() == storage
    # a push larger than the memory keeps its last rows, as a FIFO
    mem.push(feat=torch.zeros(13, 2), label=torch.arange(100, 113))
    assert mem.ordered("label").tolist() == list(range(103, 113)) and mem.ptr == 5
    # resume state
    other = FeatureMemory(10, {"feat": ((2,), torch.float32), "label": ((), torch.int64)})
    other.load_state_dict(mem.state_dict())
    assert other.ptr == mem.ptr and torch.equal(other.ordered("label"), mem.ordered("label"))
    with pytest.raises(ValueError):
        mem.push(feat=torch.zeros(2, 2))


def test_memory_before_full_holds_only_written_rows():
    mem = FeatureMemory(8, {"x": ((), torch.float32)})
    mem.push(x=torch.tensor([1.0, 2.0, 3.0]))
    assert not mem.full and mem.get("x").tolist() == [1.0, 2.0, 3.0]


# ------------------------------------------------------------------------ self-labeling loss
def test_self_labeling_gradient_reaches_only_the_prototypes():
    torch.manual_seed(0)
    c = 5
    student = build_deeplabv2(c, "small")
    protos = cpsl.CosinePrototypes(torch.randn(c, student.feature_dim))
    memory = FeatureMemory(64, {"feat": ((student.feature_dim,), torch.float32),
                                "logits": ((c,), torch.float32), "label": ((), torch.int64)})
    prior = torch.tensor([0.4, 0.3, 0.1, 0.1, 0.1])
    x = torch.rand(2, 3, 64, 64)
    for _step in range(3):  # the second and third steps use the (then full) memory
        out = student(x)  # features WITH a graph to the student: the loss must not use it
        labels = out["out"].argmax(1)
        entries = cpsl.memory_entries(out["feat"], out["out"], labels, 32)
        loss, (q1, q2) = cpsl.self_labeling_loss(entries, protos, memory, prior)
        student.zero_grad(set_to_none=True)
        protos.zero_grad(set_to_none=True)
        loss.backward()
        assert all(p.grad is None for p in student.parameters())
        assert protos.weight.grad is not None and protos.weight.grad.abs().sum() > 0
        assert q1.shape == (64, c) and torch.allclose(q1.sum(1), torch.ones(64), atol=1e-5)
        memory.push(**entries)
    assert memory.full


def test_self_labeling_moves_prototypes_toward_the_sinkhorn_clusters():
    """Training P alone on fixed, clustered features lowers the loss (an end-to-end check that
    the targets and the gradient agree in sign)."""
    g = torch.Generator().manual_seed(3)
    centres = F.normalize(torch.randn(3, 16, generator=g), dim=1)
    feats = F.normalize(centres.repeat_interleave(50, 0) + 0.1 * torch.randn(150, 16, generator=g), dim=1)
    logits = F.normalize(torch.eye(3).repeat_interleave(50, 0) + 0.1, dim=1)
    entries = {"feat": feats, "logits": logits, "label": torch.zeros(150, dtype=torch.long)}
    protos = cpsl.CosinePrototypes(torch.randn(3, 16, generator=g))
    opt = torch.optim.SGD(protos.parameters(), lr=0.5)
    first = None
    for _ in range(50):
        loss, _ = cpsl.self_labeling_loss(entries, protos, None, torch.full((3,), 1 / 3))
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first - 0.5


def test_prototype_ema_update():
    protos = cpsl.CosinePrototypes(torch.ones(2, 3), ema_momentum=0.9)
    start = protos.ema.clone()
    with torch.no_grad():
        protos.weight.add_(1.0)
    protos.update_ema()
    assert torch.allclose(protos.ema, 0.9 * start + 0.1 * (start + 1.0))
    assert protos.ema.data_ptr() != protos.weight.data_ptr()  # no aliasing (an official quirk)


# --------------------------------------------------------------------------- contrast, KL
def _loop_contrastive(feats, labels, bank, bank_labels, tau):
    total = 0.0
    for i in range(len(feats)):
        logits = [float(feats[i] @ bank[j]) / tau for j in range(len(bank))]
        mx = max(logits)
        logits = [v - mx for v in logits]
        import math

        neg = sum(math.exp(v) for v, y in zip(logits, bank_labels) if y != labels[i])
        pos = [(v - math.log(math.exp(v) + neg)) for v, y in zip(logits, bank_labels) if y == labels[i]]
        total += -sum(pos) / (len(pos) + 1e-5)
    return total / len(feats)


def test_contrastive_loss_matches_the_official_formula():
    g = torch.Generator().manual_seed(4)
    a = F.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64), dim=1)
    bank = F.normalize(torch.randn(20, 5, generator=g, dtype=torch.float64), dim=1)
    y, yb = torch.randint(0, 3, (7,), generator=g), torch.randint(0, 3, (20,), generator=g)
    got = cpsl.contrastive_loss(a, y, bank, yb, 0.08)
    assert float(got) == pytest.approx(_loop_contrastive(a, y.tolist(), bank, yb.tolist(), 0.08), rel=1e-9)
    y[:3] = 255  # ignored anchors are left out
    got = cpsl.contrastive_loss(a, y, bank, yb, 0.08)
    assert float(got) == pytest.approx(_loop_contrastive(a[3:], y[3:].tolist(), bank, yb.tolist(), 0.08), rel=1e-9)


def test_cosine_consistency_is_zero_when_student_matches_teacher_and_positive_otherwise():
    from segcore.data.strong_view import StrongView
    from segcore.methods.rectify import cosine_scores

    g = torch.Generator().manual_seed(5)
    feat = torch.randn(2, 8, 6, 10, generator=g)
    protos = torch.randn(4, 8, generator=g)
    view = StrongView(n_ops=0, cutout=False, flip_p=0.0)
    params = torch.utils.data.default_collate([view.sample(24, 40, g) for _ in range(2)])
    scores = cosine_scores(feat, protos)
    assert float(cpsl.cosine_consistency_loss(scores, feat, params, protos)) == pytest.approx(0.0, abs=1e-6)
    assert float(cpsl.cosine_consistency_loss(scores, feat.flip(-1), params, protos)) > 1e-3


# -------------------------------------------------------------------------------- CutMix
@pytest.mark.parametrize("stride", [1, 4, 8])
def test_cutmix_label_pasted_at_exactly_the_pasted_pixels(stride):
    n, h, w = 3, 56, 112
    g = torch.Generator().manual_seed(stride)
    target = torch.zeros(n, 3, h, w)
    source = torch.rand(n, 3, h, w, generator=g) * 0.5 + 0.5   # distinctive: every value > 0
    src_label = torch.randint(0, 19, (n, h, w), generator=g)
    tgt_label = torch.full((n, h // stride, w // stride), 255)
    boxes = torch.tensor([sample_box(h, w, 0.5, align=8, generator=g) for _ in range(n)])
    mixed = mix_images(target, source, box_mask(boxes, h, w))
    pasted = (mixed != 0).all(1)                                  # (N, H, W): where source pixels are
    assert 0.3 < pasted.float().mean() < 0.7
    labels = mix_labels(tgt_label, src_label, box_mask(boxes, h, w, size=tgt_label.shape[-2:]))
    lab_mask = labels != 255
    # the label mask blown up to the crop IS the image mask (boxes on the stride-8 grid)
    up = lab_mask.repeat_interleave(stride, 1).repeat_interleave(stride, 2)
    assert torch.equal(up, pasted)
    # and the pasted values are the source label at those pixels (nearest subsampling)
    assert torch.equal(labels[lab_mask], src_label[:, ::stride, ::stride][lab_mask])


def test_sample_box_area_and_alignment():
    g = torch.Generator().manual_seed(0)
    areas = []
    for _ in range(200):
        y0, x0, y1, x1 = sample_box(512, 896, 0.5, align=8, generator=g)
        assert 0 <= y0 < y1 <= 512 and 0 <= x0 < x1 <= 896
        assert all(v % 8 == 0 for v in (y0, x0, y1, x1))
        areas.append((y1 - y0) * (x1 - x0) / (512 * 896))
    assert min(areas) > 0.45 and max(areas) < 0.55   # official: half the crop
    assert max(y1 - y0 for y0, _, y1, _ in [sample_box(512, 896, 0.5, 8, g) for _ in range(50)]) > 300


# -------------------------------------------------------------------------- LAB transfer
def test_lab_conversion_known_values_and_round_trip():
    rgb = torch.tensor([[1.0, 1.0, 0.0, 0.5], [1.0, 0.0, 0.0, 0.5], [1.0, 0.0, 1.0, 0.5]])[:, None, :]
    lab = rgb_to_lab(rgb)[:, 0].t()
    assert torch.allclose(lab[0], torch.tensor([100.0, 0.0, 0.0], dtype=torch.float64), atol=0.01)      # white
    assert torch.allclose(lab[1], torch.tensor([53.24, 80.09, 67.20], dtype=torch.float64), atol=0.02)  # red
    assert torch.allclose(lab[2], torch.tensor([32.30, 79.19, -107.86], dtype=torch.float64), atol=0.02)  # blue
    x = torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(lab_to_rgb(rgb_to_lab(x)).float(), x, atol=1e-5)


def test_lab_transfer_matches_reference_mean_and_std_per_channel():
    g = torch.Generator().manual_seed(1)
    src = 0.35 + 0.2 * torch.rand(3, 40, 60, generator=g)                  # greyish, low contrast
    ref = 0.3 + 0.25 * torch.rand(3, 40, 60, generator=g) * torch.tensor([1.0, 0.8, 0.5])[:, None, None]  # warm tint
    ref_mean, ref_std = lab_stats(ref)
    src_mean, src_std = lab_stats(src)
    assert (src_mean - ref_mean).abs().max() > 3 and (src_std / ref_std - 1).abs().max() > 0.2  # not vacuous
    out = lab_transfer(src, ref_mean, ref_std)
    assert out.dtype == src.dtype and out.min() >= 0 and out.max() <= 1
    out_mean, out_std = lab_stats(out)
    assert torch.allclose(out_mean, ref_mean, atol=0.05)
    assert torch.allclose(out_std, ref_std, rtol=0.01)


def test_lab_transfer_set_keeps_the_view_and_changes_only_colours(tmp_path):
    from segcore.data import demo
    from segcore.data.convert import convert_dataset
    from segcore.data.datasets import SegmentationDataset
    from segcore.data.transforms import WeakView

    demo.make_gta5(tmp_path / "gta", 3, size=(80, 44))
    demo.make_cityscapes(tmp_path / "cs", 3, 1, size=(64, 32))
    convert_dataset("gta5", tmp_path / "gta", tmp_path / "gta_c", workers=1, progress=False)
    convert_dataset("cityscapes", tmp_path / "cs", tmp_path / "cs_c", workers=1, progress=False)
    view = WeakView(base_width=64, crop=(48, 24))
    base = SegmentationDataset(tmp_path / "gta_c/manifest.csv", "train", 19, resize=(80, 44), transform=view)
    ref = SegmentationDataset(tmp_path / "cs_c/manifest.csv", "train", 19, resize=(64, 32), with_labels=False)
    stats = compute_lab_stats(ref)
    ds = LabTransferSet(base, stats)
    a, b = ds[(1, 12345)], base[(1, 12345)]
    assert torch.equal(a["label"], b["label"]) and all(torch.equal(a["view"][k], b["view"][k]) for k in b["view"])
    assert not torch.allclose(a["image"], b["image"])
    assert torch.equal(ds[(1, 12345)]["image"], a["image"])                 # reproducible from the seed
    # the transfer goes to the statistics of one of the target images
    whole = WeakView(base_width=80, crop=(80, 44), scale_range=(1.0, 1.0), flip_p=0.0)  # the image itself
    one = LabTransferSet(SegmentationDataset(tmp_path / "gta_c/manifest.csv", "train", 19, resize=(80, 44),
                                             transform=whole), stats[2:3])
    mean, std = lab_stats(one[0]["image"])
    before, _ = lab_stats(one.base.load_image(0))
    # up to what clipping to the RGB cube takes off these saturated demo colours
    assert (mean - stats[2, 0]).abs().max() < 1.0 < (before - stats[2, 0]).abs().max()
    assert torch.allclose(std, stats[2, 1], rtol=0.1)


def test_lab_transfer_in_float32_is_within_a_level_of_float64():
    g = torch.Generator().manual_seed(3)
    # a street-like image: smooth gradients, saturated patches, dark and bright ends
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 160), indexing="ij")
    img = torch.stack([xx, yy, (xx + yy) / 2]) * 0.8 + 0.2 * torch.rand(3, 96, 160, generator=g)
    img[:, :20, :30] = torch.tensor([0.9, 0.05, 0.05])[:, None, None]
    img[:, -10:, -10:] = 0.0
    ref_mean, ref_std = torch.tensor([45.0, -3.0, 8.0]), torch.tensor([22.0, 6.0, 9.0])
    f32 = lab_transfer(img, ref_mean, ref_std)
    f64 = lab_transfer(img, ref_mean, ref_std, dtype=torch.float64)
    assert (f32.double() - f64.double()).abs().max() * 255 < 0.1


def test_lab_stats_artifact_round_trip_and_refusals(tmp_path):
    from segcore.data import demo
    from segcore.data.convert import convert_dataset
    from segcore.data.datasets import SegmentationDataset

    demo.make_cityscapes(tmp_path / "cs", 4, 1, size=(64, 32))
    convert_dataset("cityscapes", tmp_path / "cs", tmp_path / "cs_c", workers=1, progress=False)
    ref = SegmentationDataset(tmp_path / "cs_c/manifest.csv", "train", 19, resize=(64, 32), with_labels=False)
    stats = compute_lab_stats(ref, num_workers=2)
    assert stats.dtype == torch.float64 and stats.shape == (4, 2, 3)
    for i in range(4):  # the workers hand back every image's statistics in order
        assert torch.equal(stats[i], torch.stack(lab_stats(ref.load_image(i))))
    path = tmp_path / "lab.json"
    write_lab_stats(path, ref.keys, stats, source={"manifest": "m"})
    assert torch.equal(read_lab_stats(path, ref.keys), stats.float())
    with pytest.raises(ValueError, match=r"lab\.json: LAB statistics of 4 images that are not the 3 images"):
        read_lab_stats(path, ref.keys[:3])
    with pytest.raises(ValueError, match="not the 4 images"):
        read_lab_stats(path, ref.keys[::-1])
    with pytest.raises(ValueError, match=r"missing\.json: not a LAB statistics file"):
        read_lab_stats(tmp_path / "missing.json", ref.keys)


def test_lab_transfer_without_statistics_is_refused_before_training():
    import argparse
    import json

    from segcore import preflight

    args = argparse.Namespace(options=json.dumps({"lab_transfer": True}), source="{}", target="{}", lab_stats=None)
    with pytest.raises(ValueError, match="lab_transfer is on but no --lab-stats"):
        preflight.check_source_target(args)


# --------------------------------------------------------------------- class distribution
def test_class_distribution_counts_the_argmax_of_the_soft_store(tmp_path):
    from segcore.pseudo.class_distribution import argmax_counts, read_class_distribution, write_class_distribution
    from segcore.pseudo.store import SoftStore, SoftWriter

    g = torch.Generator().manual_seed(0)
    probs = F.softmax(torch.randn(3, 19, 4, 5, generator=g) * 3, dim=1)
    with SoftWriter(tmp_path / "soft.h5", ["a", "b", "c"], 19, (4, 5)) as w:
        w.write([0, 1, 2], probs)
    with SoftStore(tmp_path / "soft.h5") as store:
        counts = argmax_counts(store)
    assert torch.equal(counts, torch.bincount(probs.argmax(1).flatten(), minlength=19))
    obj = write_class_distribution(tmp_path / "cd.json", counts, source="soft.h5")
    assert obj["classes"][0] == "road" and sum(obj["counts"]) == 60
    dist = read_class_distribution(tmp_path / "cd.json", 19)
    assert torch.allclose(dist, counts.double() / 60)
    with pytest.raises(ValueError, match="class distribution has 19 classes, the chain has 16"):
        read_class_distribution(tmp_path / "cd.json", 16)
    bad = dict(obj, distribution=[0.5] * 19)
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="sums to"):
        read_class_distribution(tmp_path / "bad.json", 19)


# ------------------------------------------------------------------- a short stage-1 run
@pytest.fixture(scope="module")
def tiny_chain(tmp_path_factory):
    """Converted tiny GTA5 / Cityscapes sets, a (random) warm-up model, its soft labels,
    prototypes and class distribution."""
    from segcore.atomic import save_torch
    from segcore.data import demo
    from segcore.data.convert import convert_dataset
    from segcore.data.datasets import SegmentationDataset
    from segcore.models.checkpoint import save_model
    from segcore.pseudo.class_distribution import argmax_counts, write_class_distribution
    from segcore.pseudo.generate import generate_soft
    from segcore.pseudo.initial_prototypes import initial_prototypes
    from segcore.pseudo.store import SoftStore, SoftWriter

    base = tmp_path_factory.mktemp("cpsl")
    demo.make_gta5(base / "gta", 4, size=(80, 44))
    demo.make_cityscapes(base / "cs", 4, 1, size=(64, 32))
    convert_dataset("gta5", base / "gta", base / "gta_c", workers=1, progress=False)
    convert_dataset("cityscapes", base / "cs", base / "cs_c", workers=1, progress=False)
    torch.manual_seed(0)
    model = build_deeplabv2(19, "small")
    save_model(base / "warmup.pt", model, {"arch": "small", "num_classes": 19, "bn_clr": False})
    target = {"manifest": str(base / "cs_c/manifest.csv"), "split": "train", "resize": [64, 32]}
    ds = SegmentationDataset(target["manifest"], "train", 19, resize=(64, 32), with_labels=False)
    with torch.no_grad():
        hw = model.eval()(torch.zeros(1, 3, 32, 64))["out"].shape[-2:]
    with SoftWriter(base / "soft.h5", ds.keys, 19, hw) as w:
        generate_soft(model, ds, w, batch_size=2)
    save_torch(base / "protos.pt", initial_prototypes(model, ds, 2, min_pixels=1).state_dict())
    with SoftStore(base / "soft.h5") as store:
        write_class_distribution(base / "cd.json", argmax_counts(store))
    write_lab_stats(base / "lab_stats.json", ds.keys, compute_lab_stats(ds), source=target)
    return base, target


def _job(base, target, tmp, **over):
    from segcore.config import stage_options, validate
    from segcore.train.cpsl_stage1 import CPSLStage1Job
    from workflow_helpers import tiny_config

    cfg = tiny_config()
    validate(cfg)
    opts = stage_options(cfg, "cpsl.stage1")
    opts.update(iterations=6, checkpoint_every=2, log_every=1, cutmix_p=0.5, **over)
    source = {"manifest": str(base / "gta_c/manifest.csv"), "split": "train", "resize": [80, 44]}
    return CPSLStage1Job(source=source, target=target, num_classes=19, options=opts, seed=0,
                         init=str(base / "warmup.pt"), prototypes=str(base / "protos.pt"),
                         soft_labels=str(base / "soft.h5"), class_distribution=str(base / "cd.json"),
                         out=str(tmp / "model.pt"), out_prototypes=str(tmp / "protos_out.pt"),
                         workdir=str(tmp / "work"), lab_stats=str(base / "lab_stats.json"))


class _Stop(Exception):
    pass


def test_short_stage1_run_learns_prototypes_and_resumes_exactly(tiny_chain, tmp_path):
    from segcore.train import cpsl_stage1

    torch.set_num_threads(1)
    base, target = tiny_chain
    lines = []
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    cpsl_stage1.run(_job(base, target, ref_dir), log=lines.append)
    ref = torch.load(ref_dir / "model.pt", weights_only=True)
    protos = torch.load(ref_dir / "protos_out.pt", weights_only=True)
    init = F.normalize(torch.load(base / "protos.pt", weights_only=True)["protos"], dim=1)
    assert ref["meta"]["stage"] == "cpsl_stage1" and ref["meta"]["iterations"] == 6
    changed = (protos["protos"] - init).norm(dim=1) > 1e-6
    assert changed.any()  # the self-labeling loss trained P
    assert not torch.equal(protos["protos_ema"], protos["protos"])
    assert any(" sl " in ln for ln in lines) and any(" kl " in ln for ln in lines)
    assert not (ref_dir / "work/resume.pt").exists()

    def stop_at_5(msg):
        if " it 5/" in msg:
            raise _Stop
    with pytest.raises(_Stop):
        cpsl_stage1.run(_job(base, target, cut_dir), log=stop_at_5)
    assert (cut_dir / "work/resume.pt").exists() and not (cut_dir / "model.pt").exists()
    resumed = []
    cpsl_stage1.run(_job(base, target, cut_dir), log=resumed.append)
    assert any("resumed from" in ln and "at iteration 4" in ln for ln in resumed), resumed
    got = torch.load(cut_dir / "model.pt", weights_only=True)
    for k, v in ref["model"].items():
        assert torch.equal(v, got["model"][k]), k
    got_protos = torch.load(cut_dir / "protos_out.pt", weights_only=True)
    assert torch.equal(got_protos["protos"], protos["protos"])
    assert torch.equal(got_protos["protos_ema"], protos["protos_ema"])

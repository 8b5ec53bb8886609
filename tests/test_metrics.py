import json
import math

import numpy as np
import pytest
import torch

from segcore.data.classes import CLASSES13, CLASSES16, CLASSES19, IGNORE_INDEX
from segcore.metrics import ConfusionMatrix, confusion_matrix, iou_per_class, summarize

# 2x3 image, 3 classes; the last pixel is ignored.
LABEL = torch.tensor([[0, 0, 1], [1, 2, IGNORE_INDEX]])
PRED = torch.tensor([[0, 1, 1], [2, 2, 0]])
# rows = ground truth, columns = prediction, counted by hand
EXPECTED_CM = [
    [1, 1, 0],
    [0, 1, 1],
    [0, 0, 1],
]


def test_confusion_matrix_hand_computed():
    cm = confusion_matrix(PRED, LABEL, 3)
    assert cm.dtype == torch.int64
    assert cm.shape == (3, 3)
    assert cm.tolist() == EXPECTED_CM


def test_iou_hand_computed():
    cm = confusion_matrix(PRED, LABEL, 3)
    iou = iou_per_class(cm)
    assert iou.dtype == np.float64
    # class 0: TP 1, FP 0, FN 1; class 1: TP 1, FP 1, FN 1; class 2: TP 1, FP 1, FN 0
    np.testing.assert_allclose(iou, [1 / 2, 1 / 3, 1 / 2])
    assert np.nanmean(iou) == pytest.approx(4 / 9)
    # numpy input gives the same
    np.testing.assert_allclose(iou_per_class(cm.numpy()), iou)


def test_ignore_255_and_out_of_range_labels():
    label = torch.tensor([0, 1, 255, 3, 7, -1], dtype=torch.int64)
    pred = torch.tensor([0, 1, 2, 0, 1, 2])
    cm = confusion_matrix(pred, label, 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    # uint8 labels with 255 work the same
    cm8 = confusion_matrix(pred[:5].to(torch.uint8), label[:5].to(torch.uint8), 3)
    assert cm8.tolist() == cm.tolist()


def test_prediction_out_of_range_on_labelled_pixel_is_an_error():
    # on an ignored pixel it does not matter
    assert confusion_matrix(torch.tensor([255, 1]), torch.tensor([255, 1]), 3).sum() == 1
    with pytest.raises(ValueError):
        confusion_matrix(torch.tensor([3, 1]), torch.tensor([0, 1]), 3)


def test_shape_mismatch_and_float_inputs_rejected():
    with pytest.raises(ValueError):
        confusion_matrix(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 3)
    with pytest.raises(TypeError):
        confusion_matrix(torch.zeros(4), torch.zeros(4, dtype=torch.long), 3)


def test_absent_classes_are_nan_and_excluded_from_mean():
    cm = np.zeros((19, 19), dtype=np.int64)
    cm[0, 0] = 3  # road: 3 correct, 1 predicted as sidewalk
    cm[0, 1] = 1
    cm[13, 13] = 4  # car: perfect
    iou = iou_per_class(cm)
    assert iou[0] == pytest.approx(0.75)
    assert iou[1] == 0.0  # sidewalk predicted once, never right: defined, 0
    assert iou[13] == 1.0
    assert np.isnan(iou[[i for i in range(19) if i not in (0, 1, 13)]]).all()

    s = summarize(cm, 19)
    assert s["num_classes"] == 19
    assert s["classes"] == list(CLASSES19)
    assert s["iou"]["road"] == pytest.approx(75.0)
    assert s["iou"]["sidewalk"] == 0.0
    assert s["iou"]["car"] == pytest.approx(100.0)
    assert s["iou"]["wall"] is None
    assert s["mIoU19"] == pytest.approx((75.0 + 0.0 + 100.0) / 3)
    assert "mIoU16" not in s and "mIoU13" not in s
    assert s["pixel_accuracy"] == pytest.approx(7 / 8 * 100)
    assert s["pixels"] == 8
    json.dumps(s, allow_nan=False)  # NaN became None


def test_summary_keeps_full_precision():
    s = summarize(confusion_matrix(PRED.repeat(7, 1), LABEL.repeat(7, 1), 19), 19)
    # 3 classes present: IoUs 1/2, 1/3, 1/2 -> mean 44.444...
    assert s["mIoU19"] == pytest.approx(400 / 9, rel=1e-12)
    assert s["mIoU19"] != round(s["mIoU19"], 2)


def test_miou13_is_mean_of_13_named_classes_of_16():
    assert len(CLASSES16) == 16 and len(CLASSES13) == 13
    cm = np.diag(np.full(16, 10)).astype(np.int64)
    cm[3, 3], cm[3, 0] = 0, 10  # wall always predicted as road: wall 0, road 10/20
    cm[4, 4], cm[4, 1] = 0, 10  # fence -> sidewalk: fence 0, sidewalk 10/20
    cm[5, 5], cm[5, 2] = 5, 5  # pole half -> building: pole 5/10, building 10/15
    s = summarize(torch.from_numpy(cm), 16)
    assert (s["iou"]["wall"], s["iou"]["fence"]) == (0.0, 0.0)
    assert s["iou"]["pole"] == pytest.approx(50.0)
    assert s["iou"]["building"] == pytest.approx(200 / 3)
    assert s["mIoU16"] == pytest.approx((50 + 50 + 200 / 3 + 0 + 0 + 50 + 10 * 100) / 16)
    assert s["mIoU13"] == pytest.approx((50 + 50 + 200 / 3 + 10 * 100) / 13)
    assert "mIoU19" not in s
    assert s["classes"] == list(CLASSES16)
    json.dumps(s, allow_nan=False)


def test_miou13_ignores_absent_classes_too():
    cm = np.zeros((16, 16), dtype=np.int64)
    cm[0, 0] = 1  # only road seen
    cm[3, 3] = 1  # and wall
    s = summarize(cm, 16)
    assert s["mIoU16"] == 100.0
    assert s["mIoU13"] == 100.0


def test_empty_matrix_gives_none():
    s = summarize(np.zeros((16, 16), dtype=np.int64), 16)
    assert s["mIoU16"] is None and s["mIoU13"] is None and s["pixel_accuracy"] is None
    assert s["pixels"] == 0
    json.dumps(s, allow_nan=False)


def test_summarize_rejects_wrong_shape():
    with pytest.raises(ValueError):
        summarize(np.zeros((19, 19)), 16)
    with pytest.raises(ValueError):
        summarize(np.zeros((3, 3)), 3)


def _brute_force(pred, label, c):
    cm = np.zeros((c, c), dtype=np.int64)
    for p, g in zip(pred.reshape(-1).tolist(), label.reshape(-1).tolist()):
        if 0 <= g < c:
            cm[g, p] += 1
    return cm


def _brute_iou(cm):
    out = []
    for k in range(cm.shape[0]):
        tp = cm[k, k]
        fp = sum(cm[j, k] for j in range(cm.shape[0]) if j != k)
        fn = sum(cm[k, j] for j in range(cm.shape[0]) if j != k)
        out.append(tp / (tp + fp + fn) if tp + fp + fn else math.nan)
    return np.array(out)


@pytest.mark.parametrize("c", [3, 16, 19])
def test_agrees_with_brute_force(c):
    g = torch.Generator().manual_seed(c)
    label = torch.randint(0, c + 2, (2, 37, 23), generator=g)
    label[label >= c] = IGNORE_INDEX
    label[0, :5] = c + 1  # out-of-range ids besides 255
    pred = torch.randint(0, c, label.shape, generator=g)
    cm = confusion_matrix(pred, label, c)
    ref = _brute_force(pred, label, c)
    np.testing.assert_array_equal(cm.numpy(), ref)
    np.testing.assert_allclose(iou_per_class(cm), _brute_iou(ref), equal_nan=True)


def test_accumulation_equals_one_big_matrix():
    c = 19
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(5):
        label = torch.randint(0, c, (2, 16, 32), generator=g).to(torch.uint8)
        label[torch.rand(label.shape, generator=g) < 0.2] = IGNORE_INDEX
        pred = torch.randint(0, c, label.shape, generator=g)
        batches.append((pred, label))
    acc = ConfusionMatrix(c)
    for pred, label in batches:
        acc.update(pred, label)
    big = confusion_matrix(torch.cat([p for p, _ in batches]), torch.cat([l for _, l in batches]), c)
    assert torch.equal(acc.matrix, big)
    acc.all_reduce()  # no process group: unchanged
    assert torch.equal(acc.matrix, big)
    assert acc.summary() == summarize(big, c)
    acc.reset()
    assert acc.matrix.sum() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(1)
    label = torch.randint(0, 21, (4, 64, 128), generator=g)
    label[label >= 19] = IGNORE_INDEX
    pred = torch.randint(0, 19, label.shape, generator=g)
    cpu = confusion_matrix(pred, label, 19)
    acc = ConfusionMatrix(19, device="cuda")
    acc.update(pred.cuda(), label.cuda())
    assert acc.matrix.is_cuda
    assert torch.equal(acc.matrix.cpu(), cpu)


def test_cpu_fast_path_equals_numpy_fast_hist():
    """The uint16 + np.bincount CPU path counts exactly what the official fast_hist counts."""
    rng = np.random.default_rng(0)
    for c, ldt, pdt in ((19, np.uint8, np.uint8), (16, np.int64, np.int64), (19, np.uint8, np.int64),
                        (2, np.int32, np.uint8)):
        label = rng.integers(0, c, (37, 53)).astype(ldt)
        label[rng.random(label.shape) < 0.2] = 255
        pred = rng.integers(0, c, label.shape).astype(pdt)
        k = (label >= 0) & (label < c)
        want = np.bincount(c * label[k].astype(int) + pred[k], minlength=c * c).reshape(c, c)
        got = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(label), c)
        assert got.dtype == torch.int64 and got.tolist() == want.tolist()

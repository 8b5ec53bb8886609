"""Pseudo-label stores: round trips, encodings, the threshold rule, rejection of unfinished or
mismatched stores, and reading from DataLoader workers."""
from __future__ import annotations

import h5py
import hdf5plugin
import numpy as np
import pytest
import torch

from segcore.pseudo.store import HardStore, HardWriter, SoftStore, SoftWriter, decode_topk, keys_digest

C, HW, FULL = 7, (9, 13), (24, 40)


def keys(n=5, prefix="city/img"):
    return [f"{prefix}{i}" for i in range(n)]


def rand_probs(n, c=C, hw=HW, seed=0, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, *hw, generator=g) * scale).softmax(1)


def write_soft(path, probs, encoding="float16", **kw):
    with SoftWriter(path, keys(len(probs)), probs.shape[1], probs.shape[-2:], encoding=encoding, **kw) as w:
        w.write([0, 1], probs[:2])  # a batch
        for i in range(2, len(probs)):  # single images
            w.write(i, probs[i])
    return path


def one_line(exc_info, path):
    msg = str(exc_info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


# ---------------------------------------------------------------------------- soft store

def test_soft_float16_round_trip(tmp_path):
    probs = rand_probs(5)
    path = write_soft(tmp_path / "soft.h5", probs)
    store = SoftStore(path, expect_keys=keys(5), expect_classes=C)
    assert len(store) == 5 and store.keys == keys(5) and store.encoding == "float16"
    for i in range(5):
        x = store[i]
        assert x.dtype == torch.float32 and x.shape == (C, *HW)
        torch.testing.assert_close(x, probs[i].half().float(), rtol=0, atol=0)
    torch.testing.assert_close(store[-1], store[4])
    with pytest.raises(IndexError):
        store[5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["soft.h5"]  # no temporary left behind
    with h5py.File(path, "r") as h5:
        assert h5.attrs["complete"] and h5.attrs["num_classes"] == C and h5.attrs["encoding"] == "float16"
        assert h5.attrs["keys_sha256"] == keys_digest(keys(5)) and h5.attrs["count"] == 5
        assert h5["probs"].chunks == (1, C, *HW) and str(hdf5plugin.BLOSC_ID) in h5["probs"]._filters


def test_float16_argmax_agrees_where_margins_exceed_resolution(tmp_path):
    probs = rand_probs(4, scale=3.0)
    top2 = probs.topk(2, dim=1).values
    probs = probs.masked_fill((top2[:, 0] - top2[:, 1] < 2e-3).unsqueeze(1), 1.0 / C)  # tie pixels -> uniform
    keep = (top2[:, 0] - top2[:, 1]) >= 2e-3  # float16 resolution below 1 is <= 2^-11 ~ 4.9e-4
    assert keep.float().mean() > 0.9
    store = SoftStore(write_soft(tmp_path / "s.h5", probs))
    for i in range(4):
        same = store[i].argmax(0) == probs[i].argmax(0)
        assert same[keep[i]].all()


@pytest.mark.parametrize("k", [1, 3, C])
def test_topk_round_trip_and_argmax(tmp_path, k):
    probs = rand_probs(5, scale=2.0)
    store = SoftStore(write_soft(tmp_path / "t.h5", probs, encoding="topk", k=k), expect_classes=C)
    assert store.encoding == "topk" and store.k == k
    for i in range(5):
        x, p = store[i], probs[i]
        assert x.shape == (C, *HW) and x.dtype == torch.float32
        torch.testing.assert_close(x.sum(0), torch.ones(HW), rtol=0, atol=1e-5)
        assert torch.equal(x.argmax(0), p.argmax(0))  # 100%: the stored top-1 always wins
        v, cls = p.topk(k, dim=0)
        # the stored classes keep their probabilities up to quantisation (and the renormalisation)
        assert (x.gather(0, cls) - v).abs().max() < 0.02
        if k < C:  # the other classes share the rest uniformly, never above the k-th value
            others = torch.ones_like(x, dtype=torch.bool).scatter_(0, cls, False)
            lo = x.masked_fill(~others, 2.0).amin(0)
            hi = x.masked_fill(~others, -1.0).amax(0)
            torch.testing.assert_close(lo, hi)
            assert (hi <= x.gather(0, cls)[-1]).all()


def test_topk_breaks_quantisation_ties_by_rank():
    q = torch.tensor([[[100.0]], [[100.0]], [[100.0]]])  # three equal quantised values
    cls = torch.tensor([[[5]], [[2]], [[0]]])  # rank order: 5, then 2, then 0
    x = decode_topk(q, cls, 6)
    assert x[:, 0, 0].argmax() == 5 and x[2, 0, 0] > x[0, 0, 0] > x[1, 0, 0]


def test_soft_writer_validates_input(tmp_path):
    with pytest.raises(ValueError, match="unknown soft encoding"):
        SoftWriter(tmp_path / "x.h5", keys(2), C, HW, encoding="bf16")
    with pytest.raises(ValueError, match="unique"):
        SoftWriter(tmp_path / "x.h5", ["a", "a"], C, HW)
    with pytest.raises(ValueError, match="expected"):
        with SoftWriter(tmp_path / "x.h5", keys(2), C, HW) as w:
            w.write(0, torch.zeros(C + 1, *HW))
    with pytest.raises(ValueError, match="out of range"):
        with SoftWriter(tmp_path / "x.h5", keys(2), C, HW) as w:
            w.write(2, rand_probs(1)[0])
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------- rejection

def test_exception_inside_with_leaves_nothing(tmp_path):
    path = tmp_path / "soft.h5"
    with pytest.raises(RuntimeError, match="boom"):
        with SoftWriter(path, keys(3), C, HW) as w:
            w.write(0, rand_probs(1)[0])
            raise RuntimeError("boom")
    assert not any(tmp_path.iterdir())  # neither the store nor its temporary
    with pytest.raises(FileNotFoundError) as err:
        SoftStore(path)
    one_line(err, path)


def test_missing_images_fail_the_write(tmp_path):
    path = tmp_path / "hard.h5"
    with pytest.raises(ValueError, match="1 of 3 images were never written") as err:
        with HardWriter(path, keys(3), FULL) as w:
            w.write([0, 2], np.zeros((2, *FULL), np.uint8), np.ones((2, *FULL), np.float32))
    one_line(err, path)
    assert not any(tmp_path.iterdir())


def test_store_without_complete_attribute_is_rejected(tmp_path):
    path = write_soft(tmp_path / "soft.h5", rand_probs(3))
    with h5py.File(path, "a") as h5:
        del h5.attrs["complete"]
    with pytest.raises(ValueError, match="incomplete") as err:
        SoftStore(path)
    one_line(err, path)
    # a file that is not HDF5 at all (say, truncated) is rejected the same way
    bad = tmp_path / "bad.h5"
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable") as err:
        SoftStore(bad)
    one_line(err, bad)


def test_store_for_other_keys_or_classes_is_rejected(tmp_path):
    path = write_soft(tmp_path / "soft.h5", rand_probs(5))
    SoftStore(path, expect_keys=keys(5), expect_classes=C)
    for other in (keys(4), keys(5, prefix="x/"), keys(5)[::-1]):
        with pytest.raises(ValueError, match="another image list") as err:
            SoftStore(path, expect_keys=other)
        one_line(err, path)
    with pytest.raises(ValueError, match=f"{C} classes, expected 19") as err:
        SoftStore(path, expect_classes=19)
    one_line(err, path)
    with pytest.raises(ValueError, match="not a hard pseudo-label store") as err:
        HardStore(path)
    one_line(err, path)


# ---------------------------------------------------------------------------- hard store

def hard_data(n=4, seed=0):
    """Labels and confidences, with values on, just below and just above float16(0.95)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, C, (n, *FULL)).astype(np.uint8)
    conf = rng.uniform(1.0 / C, 1.0, (n, *FULL)).astype(np.float32)
    t16 = float(np.float16(0.95))  # 0.9501953125
    # float16 spacing near 0.95 is 2^-11 ~ 4.9e-4: t16 + 1e-4 rounds down to t16 (ignored, as in the
    # official code), t16 + 3e-4 rounds up (kept)
    special = np.array([0.95, t16, t16 + 1e-4, t16 + 3e-4, t16 - 1e-4, 0.9497, 0.955, 0.9, 0.99, 1.0, 0.0], np.float32)
    conf[:, 0, : len(special)] = special
    label[0, 1, :3] = 255  # ignore is allowed in the input
    return label, conf


@pytest.mark.parametrize("enc", ["grid", "float16", "thresholds"])
def test_hard_round_trip_and_official_threshold_rule(tmp_path, enc):
    label, conf = hard_data()
    path = tmp_path / "hard.h5"
    listed = {"conf_thresholds": (0.99, 0.9, 0.95, 0.95)} if enc == "thresholds" else {}
    with HardWriter(path, keys(4), FULL, num_classes=C, conf_encoding=enc, **listed) as w:
        w.write(torch.tensor([0, 1]), torch.from_numpy(label[:2]).long(), torch.from_numpy(conf[:2]))
        w.write(2, label[2], conf[2])
        w.write(3, label[3], conf[3])
    store = HardStore(path, expect_keys=keys(4), expect_classes=C)
    assert store.conf_encoding == enc and store.size_hw == FULL
    for i in range(4):
        lab, cf = store.get(i)
        assert lab.dtype == torch.int64 and cf.dtype == torch.float32 and lab.shape == cf.shape == FULL
        np.testing.assert_array_equal(lab.numpy(), label[i])
        if enc == "float16":
            np.testing.assert_array_equal(cf.numpy(), conf[i].astype(np.float16).astype(np.float32))
        elif enc == "grid":  # the upper grid edge: at most one step (0.005) above
            d = cf.numpy() - conf[i]
            assert d.min() >= -1e-3 and d.max() <= 0.005 + 1e-3
        else:  # the next listed threshold above (or 1.0)
            c16 = conf[i].astype(np.float16)
            want = np.select([c16 <= 0.9, c16 <= 0.95, c16 <= 0.99], [0.9, 0.95, 0.99], 1.0).astype(np.float32)
            np.testing.assert_array_equal(cf.numpy(), want)
        for t in (0.9, 0.95, 0.99):
            # the official rule, evaluated as the official code does on the float16 _conf.npy
            ref = label[i].astype(np.int64).copy()
            ref[conf[i].astype(np.float16) <= t] = 255
            np.testing.assert_array_equal(store.thresholded(i, t).numpy(), ref)
            np.testing.assert_array_equal(store.get(i, threshold=t)[0].numpy(), ref)
            if enc != "float16":  # a plain comparison on the decoded confidence gives the same labels
                np.testing.assert_array_equal(np.where(cf.numpy() <= t, 255, lab.numpy()), ref)
    row = store.thresholded(0, 0.95)[0, :7].tolist()
    assert row == [255, 255, 255, label[0, 0, 3], 255, 255, label[0, 0, 6]]


def test_thresholded_matches_plain_rule_on_exact_values(tmp_path):
    """With confidences exactly representable in float16 the rule is simply conf <= t -> 255."""
    conf = np.array([[0.5, 0.9, 0.94970703125, 0.9501953125, 0.95068359375, 1.0]], np.float32)
    label = np.array([[1, 2, 3, 4, 5, 6]], np.uint8)
    for enc in ("grid", "float16"):
        path = tmp_path / f"{enc}.h5"
        with HardWriter(path, ["a"], (1, 6), conf_encoding=enc) as w:
            w.write(0, label, conf)
        store = HardStore(path)
        assert store.num_classes is None
        assert store.thresholded(0, 0.95).tolist() == [[255, 255, 255, 255, 5, 6]]
        assert store.thresholded(0, 0.9).tolist() == [[255, 255, 3, 4, 5, 6]]
        assert store.thresholded(0, 1.0).tolist() == [[255] * 6]


def test_grid_refuses_off_grid_thresholds(tmp_path):
    label, conf = hard_data(1)
    with HardWriter(tmp_path / "g.h5", keys(1), FULL) as w:
        w.write(0, label[0], conf[0])
    store = HardStore(tmp_path / "g.h5")
    with pytest.raises(ValueError, match="not on the stored confidence grid") as err:
        store.thresholded(0, 0.9321)
    one_line(err, tmp_path / "g.h5")
    with HardWriter(tmp_path / "f.h5", keys(1), FULL, conf_encoding="float16") as w:
        w.write(0, label[0], conf[0])
    ref = label[0].astype(np.int64).copy()
    ref[conf[0].astype(np.float16) <= 0.9321] = 255
    np.testing.assert_array_equal(HardStore(tmp_path / "f.h5").thresholded(0, 0.9321).numpy(), ref)


def test_thresholds_encoding_refuses_unlisted_thresholds(tmp_path):
    label, conf = hard_data(1)
    with HardWriter(tmp_path / "t.h5", keys(1), FULL, conf_encoding="thresholds", conf_thresholds=[0.95]) as w:
        w.write(0, label[0], conf[0])
    store = HardStore(tmp_path / "t.h5")
    assert store.supports(0.95) and not store.supports(0.9)
    with pytest.raises(ValueError, match="not on the stored confidence grid") as err:
        store.thresholded(0, 0.9)
    one_line(err, tmp_path / "t.h5")
    with pytest.raises(ValueError, match="conf_thresholds"):
        HardWriter(tmp_path / "u.h5", keys(1), FULL, conf_encoding="thresholds")


def test_hard_writer_validates_labels(tmp_path):
    with pytest.raises(ValueError, match="labels outside"):
        with HardWriter(tmp_path / "h.h5", keys(1), FULL, num_classes=C) as w:
            w.write(0, np.full(FULL, C, np.uint8), np.ones(FULL, np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        with HardWriter(tmp_path / "h.h5", keys(1), FULL) as w:
            w.write(0, np.zeros(FULL, np.uint8), np.full(FULL, np.nan, np.float32))
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------- DataLoader workers

class _Pairs(torch.utils.data.Dataset):
    def __init__(self, soft, hard):
        self.soft, self.hard = soft, hard

    def __len__(self):
        return len(self.soft)

    def __getitem__(self, i):
        return {"index": i, "soft": self.soft[i], "label": self.hard.thresholded(i, 0.95)}


def test_reading_from_two_dataloader_workers(tmp_path):
    n = 6
    probs = rand_probs(n)
    soft = SoftStore(write_soft(tmp_path / "s.h5", probs))
    label, conf = hard_data(n)
    with HardWriter(tmp_path / "h.h5", keys(n), FULL) as w:
        w.write(list(range(n)), label, conf)
    hard = HardStore(tmp_path / "h.h5")
    expect_soft = [soft[i] for i in range(n)]  # the parent opens its handle before the fork
    expect_label = [hard.thresholded(i, 0.95) for i in range(n)]
    loader = torch.utils.data.DataLoader(_Pairs(soft, hard), batch_size=2, num_workers=2, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    seen = set()
    for _epoch in range(2):
        for batch in loader:
            for j, i in enumerate(batch["index"].tolist()):
                seen.add(i)
                torch.testing.assert_close(batch["soft"][j], expect_soft[i], rtol=0, atol=0)
                assert torch.equal(batch["label"][j], expect_label[i])
    assert seen == set(range(n))
    torch.testing.assert_close(soft[0], expect_soft[0])  # the parent's handle still works
    soft.close()
    hard.close()

"""SegmentationDataset over a manifest, the 16-class remap, views, infinite_loader."""
from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segcore.data import classes
from segcore.data.datasets import SegmentationDataset, infinite_loader
from segcore.data.io import BadInputError, write_png
from segcore.data.transforms import WeakView, apply_view

SIZE = (40, 24)  # (W, H)


def make_converted(tmp_path: Path, n_train=5, n_val=2, size=SIZE) -> Path:
    """A converted dataset as convert_dataset writes it (trainId PNGs + manifest.csv)."""
    rng = np.random.default_rng(0)
    w, h = size
    rows = []
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            key = f"{split}/city/img{i}"
            image = tmp_path / "raw" / f"{split}_{i}.png"
            label = tmp_path / "conv" / "labels" / f"{key}.png"
            write_png(image, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            lab = rng.integers(0, 19, (h, w)).astype(np.uint8)
            lab[0, :3] = [255, 9, 14]  # ignore, terrain, truck (the last two are not in the 16 classes)
            write_png(label, lab)
            rows.append((key, str(image), str(label), split, w, h))
    manifest = tmp_path / "conv" / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([("key", "image", "label", "split", "width", "height"), *rows])
    return manifest


def test_item_19_classes(tmp_path):
    manifest = make_converted(tmp_path)
    ds = SegmentationDataset(manifest, "train", 19)
    assert len(ds) == 5
    s = ds[1]
    assert set(s) == {"image", "label", "index"} and s["index"] == 1
    assert s["image"].dtype == torch.float32 and s["image"].shape == (3, 24, 40)
    assert 0 <= s["image"].min() and s["image"].max() <= 1
    raw = np.asarray(Image.open(ds.images[1]))
    torch.testing.assert_close(s["image"], torch.from_numpy(raw.astype(np.float32) / 255).permute(2, 0, 1))
    assert s["label"].dtype == torch.int64
    np.testing.assert_array_equal(s["label"].numpy(), np.asarray(Image.open(ds.labels[1])))
    assert len(SegmentationDataset(manifest, None, 19)) == 7
    assert len(SegmentationDataset(manifest, "train", 19, limit=2)) == 2


def test_16_class_remap(tmp_path):
    manifest = make_converted(tmp_path)
    ds19, ds16 = SegmentationDataset(manifest, "val", 19), SegmentationDataset(manifest, "val", 16)
    for i in range(len(ds16)):
        l19, l16 = ds19[i]["label"], ds16[i]["label"]
        assert l16[0, :3].tolist() == [255, 255, 255]
        assert set(l16.unique().tolist()) <= set(range(16)) | {255}
        for c19, name in enumerate(classes.CLASSES19):  # brute force against the class names
            want = classes.CLASSES16.index(name) if name in classes.CLASSES16 else 255
            assert (l16[l19 == c19] == want).all()
        assert (l16[l19 == 255] == 255).all()


def test_resize_and_no_labels(tmp_path):
    manifest = make_converted(tmp_path)
    ds = SegmentationDataset(manifest, "train", 19, resize=(20, 12))
    s = ds[0]
    assert s["image"].shape == (3, 12, 20) and s["label"].shape == (12, 20)
    full = np.asarray(Image.open(ds.labels[0]))
    np.testing.assert_array_equal(s["label"].numpy(), np.asarray(Image.fromarray(full).resize((20, 12), Image.NEAREST)))
    s = SegmentationDataset(manifest, "train", 19, resize=(20, 12), resize_label=False)[0]
    assert s["image"].shape == (3, 12, 20) and s["label"].shape == (24, 40)
    s = SegmentationDataset(manifest, "train", 19, with_labels=False)[0]
    assert "label" not in s


def test_view_params_and_label(tmp_path):
    manifest = make_converted(tmp_path)
    plain = SegmentationDataset(manifest, "train", 16)
    ds = SegmentationDataset(manifest, "train", 16, transform=WeakView(50, (32, 16)))
    s = ds[(2, 123)]
    assert s["image"].shape == (3, 16, 32) and s["label"].shape == (16, 32) and s["index"] == 2
    assert torch.equal(apply_view(plain[2]["label"], s["view"], "nearest"), s["label"])
    again = ds[(2, 123)]
    assert torch.equal(again["image"], s["image"]) and torch.equal(again["view"]["crop"], s["view"]["crop"])
    unlabelled = SegmentationDataset(manifest, "train", 19, transform=WeakView(50, (32, 16)), with_labels=False)
    assert "label" not in unlabelled[0]


def test_construction_errors(tmp_path):
    with pytest.raises(BadInputError, match="manifest not found") as exc:
        SegmentationDataset(tmp_path / "missing.csv", "train", 19)
    assert str(tmp_path / "missing.csv") in str(exc.value)
    manifest = make_converted(tmp_path)
    with pytest.raises(BadInputError, match="no rows for split 'test'") as exc:
        SegmentationDataset(manifest, "test", 19)
    assert str(manifest) in str(exc.value) and "\n" not in str(exc.value)
    bad = tmp_path / "bad.csv"
    bad.write_text("key,image,split\na,b,train\n")
    with pytest.raises(BadInputError, match="lacks column") as exc:
        SegmentationDataset(bad, "train", 19)
    assert str(bad) in str(exc.value) and "label" in str(exc.value)
    with pytest.raises(ValueError):
        SegmentationDataset(manifest, "train", 13)


def _take(it, n):
    return list(itertools.islice(it, n))


def test_infinite_loader_reproducible_and_reshuffled(tmp_path):
    manifest = make_converted(tmp_path, n_train=6)
    ds = SegmentationDataset(manifest, "train", 19, transform=WeakView(50, (32, 16)))
    a = _take(infinite_loader(ds, batch_size=2, seed=3), 9)  # 3 batches per epoch, 3 epochs
    b = _take(infinite_loader(ds, batch_size=2, seed=3, num_workers=2), 9)
    assert a[0]["image"].shape == (2, 3, 16, 32) and a[0]["view"]["crop"].shape == (2, 4)
    for x, y in zip(a, b):  # views depend on the seed, not on the number of workers
        assert (torch.equal(x["index"], y["index"]) and torch.equal(x["image"], y["image"])
                and torch.equal(x["label"], y["label"]))
    epochs = [torch.cat([x["index"] for x in a[e * 3:(e + 1) * 3]]).tolist() for e in range(3)]
    assert all(sorted(e) == list(range(6)) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled each epoch
    resumed = _take(infinite_loader(ds, batch_size=2, seed=3, start=4), 5)  # resume at iteration 4
    for x, y in zip(a[4:], resumed):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["image"], y["image"])
    c = _take(infinite_loader(ds, batch_size=2, seed=4), 3)
    assert any(not torch.equal(x["index"], y["index"]) for x, y in zip(a, c))


def test_infinite_loader_drop_last_and_sampler(tmp_path):
    manifest = make_converted(tmp_path, n_train=5)
    ds = SegmentationDataset(manifest, "train", 19)
    batches = _take(infinite_loader(ds, batch_size=2, seed=0), 4)
    assert all(len(x["index"]) == 2 for x in batches)  # 2 full batches per epoch, the 5th image dropped
    sampler = torch.utils.data.distributed.DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=0)
    got = _take(infinite_loader(ds, batch_size=3, seed=0, sampler=sampler), 2)
    assert all(len(x["index"]) == 3 for x in got)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        next(infinite_loader(ds, batch_size=8, seed=0))

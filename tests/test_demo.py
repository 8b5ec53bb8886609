"""The synthetic demo datasets: real on-disk formats, determinism, class coverage, domain shift."""
import json
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segcore.data import demo
from segcore.data.classes import (
    CITYSCAPES_KNOWN_LABELIDS,
    CITYSCAPES_LABELID_COLORS,
    CITYSCAPES_LUT,
    IGNORE_INDEX,
    SYNTHIA_KNOWN_IDS,
    SYNTHIA_LUT19,
)
from segcore.data.io import read_label8, read_png_unchanged, read_rgb

SMALL = (64, 32)
REPO = Path(__file__).resolve().parents[1]
THING_TRAINIDS = {11, 12, 13, 14, 15, 16, 17, 18}  # person .. bicycle


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _marker(root: Path) -> dict:
    return json.loads((root / ".demo_complete").read_text())


def test_gta5_layout_and_palette_labels(tmp_path):
    demo.make_gta5(tmp_path, 3, seed=1)
    names = [f"{i:05d}.png" for i in (1, 2, 3)]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == names
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == names
    assert _marker(tmp_path) == {"dataset": "gta5", "count": 3, "size": [160, 88], "seed": 1, "shift": 1.0}
    assert not list(tmp_path.rglob("*.tmp")) and not (tmp_path / ".demo_started").exists()
    for name in names:
        assert read_rgb(tmp_path / "images" / name).shape == (88, 160, 3)
        img = Image.open(tmp_path / "labels" / name)
        assert img.mode == "P" and img.size == (160, 88)
        pal = np.array(img.getpalette()[: 3 * 34]).reshape(34, 3)
        assert [tuple(c) for c in pal] == [CITYSCAPES_LABELID_COLORS[i] for i in range(34)]
        ids = set(np.unique(read_label8(tmp_path / "labels" / name)).tolist())
        assert ids <= CITYSCAPES_KNOWN_LABELIDS


def test_synthia_layout_and_16bit_labels(tmp_path):
    demo.make_synthia(tmp_path, 4, size=(96, 57))
    names = [f"{i:07d}.png" for i in range(4)]
    assert sorted(p.name for p in (tmp_path / "RGB").iterdir()) == names
    assert sorted(p.name for p in (tmp_path / "GT" / "LABELS").iterdir()) == names
    seen = set()
    for name in names:
        assert read_rgb(tmp_path / "RGB" / name).shape == (57, 96, 3)
        lab = read_png_unchanged(tmp_path / "GT" / "LABELS" / name)
        assert lab.dtype == np.uint16 and lab.shape == (57, 96, 3)
        cls, inst = lab[..., 0], lab[..., 1]
        seen |= set(np.unique(cls).tolist())
        assert (lab[..., 2] == 0).all()
        # instance ids only on things, several distinct ones
        assert set(SYNTHIA_LUT19[cls[inst > 0]].tolist()) <= THING_TRAINIDS
        assert len(np.unique(inst[inst > 0])) >= 2
        # Pillow reads the 16-bit samples as 8-bit: the class ids do not survive
        assert not np.array_equal(np.asarray(Image.open(tmp_path / "GT" / "LABELS" / name))[..., 0], cls)
    assert seen <= SYNTHIA_KNOWN_IDS and {0, 22} <= seen  # void and lane markings are there


def test_cityscapes_layout_and_void_ids(tmp_path):
    demo.make_cityscapes(tmp_path, 4, 3, size=(80, 40))
    pattern = re.compile(r"([a-z]+)_(\d{6})_(\d{6})_leftImg8bit\.png")
    for split, count, cities in (("train", 4, {"aachen", "bochum", "bremen"}),
                                 ("val", 3, {"frankfurt", "lindau", "munster"})):
        images = sorted((tmp_path / "leftImg8bit" / split).glob("*/*.png"))
        assert len(images) == count
        assert {p.parent.name for p in images} <= cities
        for p in images:
            m = pattern.fullmatch(p.name)
            assert m and m.group(1) == p.parent.name
            stem = p.name[: -len("_leftImg8bit.png")]
            gt = tmp_path / "gtFine" / split / p.parent.name
            assert read_rgb(p).shape == (40, 80, 3)
            assert Image.open(gt / f"{stem}_gtFine_labelIds.png").mode == "L"
            ids = read_label8(gt / f"{stem}_gtFine_labelIds.png")
            assert set(np.unique(ids).tolist()) <= CITYSCAPES_KNOWN_LABELIDS
            assert ids[-1, 40] == 1  # ego vehicle along the bottom
            colour = read_rgb(gt / f"{stem}_gtFine_color.png")
            assert tuple(colour[0, 0]) == CITYSCAPES_LABELID_COLORS[int(ids[0, 0])]
    assert _marker(tmp_path)["val_count"] == 3


def test_determinism_and_distinct_seeds(tmp_path):
    demo.make_gta5(tmp_path / "a", 2, size=SMALL, seed=3)
    demo.make_gta5(tmp_path / "b", 2, size=SMALL, seed=3)
    demo.make_gta5(tmp_path / "c", 2, size=SMALL, seed=4)
    a, b, c = (_files(tmp_path / k) for k in "abc")
    assert a == b
    assert a["images/00001.png"] != c["images/00001.png"]
    # image i does not depend on the count; datasets never share layouts for the same seed
    demo.make_gta5(tmp_path / "d", 1, size=SMALL, seed=3)
    assert _files(tmp_path / "d")["images/00001.png"] == a["images/00001.png"]
    demo.make_synthia(tmp_path / "s1", 1, size=(64, 38), seed=5)
    demo.make_synthia(tmp_path / "s2", 1, size=(64, 38), seed=5)
    assert _files(tmp_path / "s1") == _files(tmp_path / "s2")
    gta = demo.sample(demo.GTA5, SMALL, 0, 0)[1]
    city = demo.sample(demo.CITYSCAPES, SMALL, 0, 0)[1]
    val = demo.sample(demo.CITYSCAPES, SMALL, 0, 0, split=1)[1]
    assert not np.array_equal(gta, city) and not np.array_equal(city, val)


@pytest.mark.parametrize("dataset", ["gta5", "synthia", "cityscapes"])
def test_all_19_classes_across_a_small_set(tmp_path, dataset):
    n = 12
    present = np.zeros(256, bool)
    if dataset == "gta5":
        demo.make_gta5(tmp_path, n, size=(96, 53))
        for p in (tmp_path / "labels").glob("*.png"):
            present[CITYSCAPES_LUT[read_label8(p)]] = True
    elif dataset == "synthia":
        demo.make_synthia(tmp_path, n, size=(96, 57))
        for p in (tmp_path / "GT" / "LABELS").glob("*.png"):
            present[SYNTHIA_LUT19[read_png_unchanged(p)[..., 0]]] = True
    else:
        demo.make_cityscapes(tmp_path, n, 0, size=(96, 48))
        for p in (tmp_path / "gtFine").rglob("*_labelIds.png"):
            present[CITYSCAPES_LUT[read_label8(p)]] = True
    assert present[:19].all(), f"missing trainIds {np.flatnonzero(~present[:19]).tolist()}"
    assert present[IGNORE_INDEX]  # some void pixels the converters must ignore


def _pixels(domain, n, split=0, shift=1.0):
    xs, ys = [], []
    for i in range(n):
        img, kind, _ = demo.sample(domain, (96, 48), 0, i, split, shift)
        keep = kind < 19
        xs.append(img[keep].astype(np.float32))
        ys.append(kind[keep])
    return np.concatenate(xs), np.concatenate(ys)


def _nearest_mean_accuracy(train, test):
    """Mean per-class recall (chance = 1/19) of a nearest-class-mean colour classifier."""
    (xa, ya), (xb, yb) = train, test
    means = np.stack([xa[ya == k].mean(0) if (ya == k).any() else np.full(3, 1e6) for k in range(19)])
    pred = ((xb[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    return float(np.mean([(pred[yb == k] == k).mean() for k in np.unique(yb)]))


@pytest.mark.parametrize("shift", [1.0, 0.0])
def test_domain_shift_is_real_and_adjustable(shift):
    target_val = _pixels(demo.CITYSCAPES, 12, split=1, shift=shift)
    oracle = _nearest_mean_accuracy(_pixels(demo.CITYSCAPES, 12, shift=shift), target_val)
    for source in (demo.GTA5, demo.SYNTHIA):
        transfer = _nearest_mean_accuracy(_pixels(source, 12, shift=shift), target_val)
        print(f"shift={shift} source key {source.key}: source-fit {transfer:.3f}, target-fit {oracle:.3f}")
        if shift:
            assert oracle - transfer > 0.1, "source colours transfer too well: no domain shift"
            assert transfer > 3 / 19, "source colours useless on the target: shift too strong"
        else:
            assert abs(oracle - transfer) < 0.08, "without the style shift the colours should transfer"


def test_rerun_replaces_and_refuses_foreign_folders(tmp_path):
    demo.make_gta5(tmp_path / "g", 3, size=SMALL)
    demo.make_gta5(tmp_path / "g", 1, size=SMALL)  # a smaller rerun leaves no stale images
    assert sorted(_files(tmp_path / "g")) == [".demo_complete", "images/00001.png", "labels/00001.png"]
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "keep.txt").write_text("not a demo")
    with pytest.raises(FileExistsError):
        demo.make_gta5(tmp_path / "real", 1, size=SMALL)
    assert (tmp_path / "real" / "keep.txt").exists()


def test_cli(tmp_path, monkeypatch):
    script = str(REPO / "workflow_scripts" / "make_demo.py")
    argv = [script, "--dataset", "cityscapes", "--root", str(tmp_path / "cs"), "--count", "2", "--val-count", "1",
            "--size", "64", "32", "--seed", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as done:
        runpy.run_path(script, run_name="__main__")
    assert done.value.code == 0
    assert _marker(tmp_path / "cs") == {"dataset": "cityscapes", "train_count": 2, "val_count": 1,
                                        "size": [64, 32], "seed": 2, "shift": 1.0}
    monkeypatch.setattr(sys, "argv", [script, "--dataset", "gta5", "--root", str(tmp_path / "g"), "--count", "1",
                                      "--val-count", "1"])
    with pytest.raises(SystemExit) as bad:
        runpy.run_path(script, run_name="__main__")
    assert bad.value.code == 2

"""Converters: id maps, outputs, class statistics, validation errors (tiny trees in tmp_path)."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segcore.data import classes
from segcore.data.convert import convert_dataset
from segcore.data.io import BadInputError, read_label8, write_png, write_png16

CS_IDS = np.array(sorted(classes.CITYSCAPES_KNOWN_LABELIDS), dtype=np.uint8)
SYN_IDS = np.array(sorted(classes.SYNTHIA_KNOWN_IDS), dtype=np.uint16)
PALETTE = [v for i in range(256) for v in classes.CITYSCAPES_LABELID_COLORS.get(i, (0, 0, 0))]


def _label_ids(rng, ids, w, h):
    """A label holding every id of ``ids`` at least once, the rest random ids."""
    lab = rng.choice(ids, size=h * w)
    lab[: len(ids)] = ids
    return rng.permutation(lab).reshape(h, w)


def _rgb(rng, w, h, path):
    write_png(path, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def make_gta5(root: Path, n=3, size=(24, 16), seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    raw = {}
    for i in range(1, n + 1):
        key = f"{i:05d}"
        _rgb(rng, *size, root / "images" / f"{key}.png")
        raw[key] = _label_ids(rng, CS_IDS, *size).astype(np.uint8)
        write_png(root / "labels" / f"{key}.png", raw[key], palette=PALETTE)
    return raw


def make_synthia(root: Path, n=2, size=(20, 12), seed=1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    raw = {}
    for i in range(n):
        key = f"{i:07d}"
        _rgb(rng, *size, root / "RGB" / f"{key}.png")
        ids = _label_ids(rng, SYN_IDS, *size).astype(np.uint16)
        inst = rng.integers(256, 4000, ids.shape).astype(np.uint16)  # instance ids > 255 in channel 1
        write_png16(root / "GT" / "LABELS" / f"{key}.png", np.stack([ids, inst, np.zeros_like(ids)], -1))
        raw[key] = ids
    return raw


CS_FILES = {"train": {"aachen": 2, "bochum": 1}, "val": {"frankfurt": 2}}


def make_cityscapes(root: Path, size=(32, 16), seed=2, with_test=True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    raw = {}
    for split, cities in CS_FILES.items():
        for city, n in cities.items():
            for i in range(n):
                stem = f"{city}_{i:06d}_000019"
                _rgb(rng, *size, root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
                lab = _label_ids(rng, CS_IDS, *size).astype(np.uint8)
                write_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", lab)
                raw[f"{split}/{city}/{stem}"] = lab
    if with_test:  # the test split (no usable labels) is ignored
        _rgb(rng, *size, root / "leftImg8bit" / "test" / "berlin" / "berlin_000000_000019_leftImg8bit.png")
    return raw


def _tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _manifest(out: Path) -> list[dict]:
    with open(out / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------- id maps

# Ordered source ids of the official 19- and 16-class lists (docs/protocol.md, Datasets and classes): an
# independent oracle for classes.py.
OFFICIAL_CS_19 = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
OFFICIAL_SYN_19 = [3, 4, 2, 21, 5, 7, 15, 9, 6, 16, 1, 10, 17, 8, 18, 19, 20, 12, 11]
OFFICIAL_SYN_16 = [3, 4, 2, 21, 5, 7, 15, 9, 6, 1, 10, 17, 8, 19, 12, 11]


def test_cityscapes_id_map_on_every_known_id():
    for labelid in sorted(classes.CITYSCAPES_KNOWN_LABELIDS):
        want = OFFICIAL_CS_19.index(labelid) if labelid in OFFICIAL_CS_19 else 255
        assert classes.CITYSCAPES_LUT[labelid] == want, labelid


def test_synthia_id_maps_on_every_known_id():
    for sid in sorted(classes.SYNTHIA_KNOWN_IDS):
        want19 = OFFICIAL_SYN_19.index(sid) if sid in OFFICIAL_SYN_19 else 255
        want16 = OFFICIAL_SYN_16.index(sid) if sid in OFFICIAL_SYN_16 else 255
        assert classes.SYNTHIA_LUT19[sid] == want19, sid
        assert classes.SYNTHIA_LUT16[sid] == want16, sid
        # the load-time 19 -> 16 remap composes to the official 16-class map
        assert classes.remap_lut(16)[classes.SYNTHIA_LUT19[sid]] == want16, sid


# ---------------------------------------------------------------- outputs

def _check_outputs(root, out, raw, lut, dataset, splits):
    rows = _manifest(out)
    assert [r["key"] for r in rows] == sorted(raw)
    assert list(rows[0]) == ["key", "image", "label", "split", "width", "height"]
    want_stats = {s: {"images": 0, "pixels": [0] * 19, "ignored": 0} for s in splits}
    for r in rows:
        lab = read_label8(r["label"])
        assert r["label"] == str(Path(out) / "labels" / f"{r['key']}.png")
        assert Path(r["image"]).is_file() and Path(r["image"]).is_relative_to(root)
        assert Image.open(r["label"]).mode == "L"
        np.testing.assert_array_equal(lab, lut[raw[r["key"]]])
        with Image.open(r["image"]) as im:
            assert (int(r["width"]), int(r["height"])) == im.size == (lab.shape[1], lab.shape[0])
        s = want_stats[r["split"]]
        s["images"] += 1
        for c in range(19):  # brute force
            s["pixels"][c] += int((lab == c).sum())
        s["ignored"] += int((lab == 255).sum())
    stats = json.loads((out / "class_stats.json").read_text())
    assert stats == {"dataset": dataset, "classes": list(classes.CLASSES19), "splits": want_stats}
    counts = list(csv.DictReader(open(out / "label_counts.csv", newline="")))
    assert [c["key"] for c in counts] == [r["key"] for r in rows]
    for c, r in zip(counts, rows):
        lab = read_label8(r["label"])
        assert [int(c[n]) for n in classes.CLASSES19] == [int((lab == k).sum()) for k in range(19)]
        assert int(c["ignored"]) == int((lab == 255).sum())


def test_convert_gta5(tmp_path):
    root, out = tmp_path / "gta", tmp_path / "out"
    raw = make_gta5(root)
    before = _tree_digest(root)
    convert_dataset("gta5", root, out, progress=False)
    assert _tree_digest(root) == before
    _check_outputs(root, out, raw, classes.CITYSCAPES_LUT, "gta5", ["train"])
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["00001.png", "00002.png", "00003.png"]


def test_convert_synthia_16bit(tmp_path):
    root, out = tmp_path / "syn", tmp_path / "out"
    raw = make_synthia(root)
    # Pillow cannot read these labels: the fixture really is 16-bit
    first = next((root / "GT" / "LABELS").iterdir())
    assert not np.array_equal(np.asarray(Image.open(first)), next(iter(raw.values())))
    before = _tree_digest(root)
    convert_dataset("synthia", root, out, workers=2, progress=False)
    assert _tree_digest(root) == before
    _check_outputs(root, out, raw, classes.SYNTHIA_LUT19, "synthia", ["train"])


def test_convert_cityscapes_parallel(tmp_path):
    root = tmp_path / "cs"
    raw = make_cityscapes(root)
    before = _tree_digest(root)
    convert_dataset("cityscapes", root, tmp_path / "o1", workers=1, progress=False)
    convert_dataset("cityscapes", root, tmp_path / "o2", workers=2, progress=True)
    assert _tree_digest(root) == before
    _check_outputs(root, tmp_path / "o2", raw, classes.CITYSCAPES_LUT, "cityscapes", ["train", "val"])
    keys = [r["key"] for r in _manifest(tmp_path / "o2")]
    assert "train/aachen/aachen_000000_000019" in keys and not any(k.startswith("test/") for k in keys)
    assert {r["split"] for r in _manifest(tmp_path / "o2")} == {"train", "val"}
    for k in keys:
        one, two = (tmp_path / o / "labels" / f"{k}.png" for o in ("o1", "o2"))
        assert one.read_bytes() == two.read_bytes()
    assert (tmp_path / "o1" / "class_stats.json").read_text() == (tmp_path / "o2" / "class_stats.json").read_text()


def test_cli(tmp_path, capsys):
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "workflow_scripts" / "convert.py"
    spec = importlib.util.spec_from_file_location("convert_cli", script)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    root = tmp_path / "gta"
    make_gta5(root, n=2)
    assert cli.main(["--dataset", "gta5", "--root", str(root), "--out", str(tmp_path / "out"),
                     "--workers", "1", "--no-progress"]) == 0
    assert len(_manifest(tmp_path / "out")) == 2
    assert cli.main(["--dataset", "gta5", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "not found" in err


# ---------------------------------------------------------------- validation

def _error(dataset, root, out, **kw) -> str:
    with pytest.raises(BadInputError) as exc:
        convert_dataset(dataset, root, out, progress=False, **kw)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_missing_root_and_subfolder(tmp_path):
    assert "not found" in _error("gta5", tmp_path / "missing", tmp_path / "out")
    root = tmp_path / "gta"
    make_gta5(root, n=1)
    for p in (root / "labels").iterdir():
        p.unlink()
    (root / "labels").rmdir()
    msg = _error("gta5", root, tmp_path / "out")
    assert str(root / "labels") in msg
    cs = tmp_path / "cs"
    make_cityscapes(cs)
    for p in sorted((cs / "gtFine" / "val").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (cs / "gtFine" / "val").rmdir()
    assert str(cs / "gtFine" / "val") in _error("cityscapes", cs, tmp_path / "out2")


def test_empty_split(tmp_path):
    root = tmp_path / "syn"
    (root / "RGB").mkdir(parents=True)
    (root / "GT" / "LABELS").mkdir(parents=True)
    assert "no .png images" in _error("synthia", root, tmp_path / "out")
    cs = tmp_path / "cs"
    make_cityscapes(cs)
    for p in sorted((cs / "leftImg8bit" / "val").rglob("*.png")):
        p.unlink()
    assert "empty split 'val'" in _error("cityscapes", cs, tmp_path / "out2")


def test_missing_label_fails_before_converting(tmp_path):
    root, out = tmp_path / "cs", tmp_path / "out"
    make_cityscapes(root)
    missing = root / "gtFine" / "val" / "frankfurt" / "frankfurt_000001_000019_gtFine_labelIds.png"
    missing.unlink()
    msg = _error("cityscapes", root, out)
    assert str(missing) in msg and "missing" in msg
    assert not (out / "labels").exists()  # nothing was converted


@pytest.mark.parametrize("workers", [1, 2])
def test_corrupt_label(tmp_path, workers):
    root, out = tmp_path / "gta", tmp_path / "out"
    make_gta5(root)
    bad = root / "labels" / "00002.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    assert str(bad) in _error("gta5", root, out, workers=workers)
    assert not (out / "manifest.csv").exists()


def test_8bit_synthia_label(tmp_path):
    root = tmp_path / "syn"
    make_synthia(root)
    bad = root / "GT" / "LABELS" / "0000001.png"
    write_png(bad, np.full((12, 20), 3, np.uint8))
    msg = _error("synthia", root, tmp_path / "out")
    assert str(bad) in msg and "16-bit" in msg


def test_unknown_ids(tmp_path):
    root = tmp_path / "gta"
    make_gta5(root)
    bad = root / "labels" / "00003.png"
    lab = read_label8(bad).copy()
    lab[0, :3] = [34, 200, 34]
    write_png(bad, lab, palette=PALETTE)
    msg = _error("gta5", root, tmp_path / "out")
    assert str(bad) in msg and "34, 200" in msg
    syn = tmp_path / "syn"
    make_synthia(syn)
    bad = syn / "GT" / "LABELS" / "0000000.png"
    write_png16(bad, np.full((12, 20, 3), 23, np.uint16))
    msg = _error("synthia", syn, tmp_path / "out2")
    assert str(bad) in msg and "23" in msg


def test_unknown_synthia_id_above_255_and_histogram(tmp_path):
    """Ids that do not fit a byte take the numpy path; the 4-band histogram equals bincount."""
    from segcore.data.convert import histogram_u8

    syn = tmp_path / "syn"
    make_synthia(syn)
    bad = syn / "GT" / "LABELS" / "0000001.png"
    lab = np.full((12, 20, 3), 3, np.uint16)
    lab[5, 7, 0] = 300
    write_png16(bad, lab)
    msg = _error("synthia", syn, tmp_path / "out")
    assert str(bad) in msg and "unknown synthia label id(s) 300" in msg and "\n" not in msg
    rng = np.random.default_rng(0)
    for n in (0, 1, 3, 4, 5, 4099):
        a = rng.integers(0, 256, n).astype(np.uint8)
        np.testing.assert_array_equal(histogram_u8(a), np.bincount(a, minlength=256))


def test_size_mismatch_and_resize_label(tmp_path):
    root = tmp_path / "gta"
    raw = make_gta5(root)
    bad = root / "labels" / "00002.png"
    small = raw["00002"][::2, ::2]  # 12x8 label for a 24x16 image
    write_png(bad, small, palette=PALETTE)
    msg = _error("gta5", root, tmp_path / "out")
    assert str(bad) in msg and "12x8" in msg and "24x16" in msg
    out = tmp_path / "out2"
    convert_dataset("gta5", root, out, size_mismatch="resize_label", progress=False)
    rows = {r["key"]: r for r in _manifest(out)}
    lab = read_label8(rows["00002"]["label"])
    assert lab.shape == (16, 24)
    want = np.asarray(Image.fromarray(classes.CITYSCAPES_LUT[small]).resize((24, 16), Image.NEAREST))
    np.testing.assert_array_equal(lab, want)
    np.testing.assert_array_equal(lab, classes.CITYSCAPES_LUT[small].repeat(2, 0).repeat(2, 1))
    stats = json.loads((out / "class_stats.json").read_text())["splits"]["train"]
    total = sum(int((read_label8(r["label"]) == 255).sum()) for r in rows.values())
    assert stats["ignored"] == total


def test_output_inside_root_refused(tmp_path):
    root = tmp_path / "gta"
    make_gta5(root, n=1)
    assert "inside the raw dataset root" in _error("gta5", root, root / "converted")

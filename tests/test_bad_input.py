"""Bad inputs (tests/bad_inputs.md): each is refused before any training starts, with ONE
line that names the file or config key and says what is wrong.

Each case builds its bad input in a temporary folder and returns ``(line, names, what)``:
the error line (the last stderr line of a workflow script run as a subprocess, the
"Invalid configuration" line of ``snakemake -n``, or ``str()`` of the exception a library
call raised), what it must name and what it must say.
"""
from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_convert import PALETTE, make_cityscapes, make_gta5, make_synthia

from segcore.data.convert import convert_dataset
from segcore.data.io import write_png, write_png16
from segcore.models.checkpoint import load_model, save_model
from segcore.models.deeplabv2 import build_deeplabv2
from segcore.pseudo.store import SoftWriter
from workflow_helpers import ROOT, snakemake, tiny_config, write_config

SCRIPTS = ROOT / "workflow_scripts"
METACHAR = "results dir/$(touch pwned);x `touch pwned2` & 'q'"


# ----------------------------------------------------------------------------- helpers
_MODULES: dict = {}
_CAPSYS = []  # the running test's capsys


def script_inproc(name: str, *args) -> tuple[str, int]:
    """Run a workflow script's ``main`` in this process (as ``python script ...`` does, through
    ``segcore.preflight.run_script``); return its last stderr line. Saves the ~3 s of a torch
    import per case; the subprocess cases cover the real entry points."""
    from segcore.preflight import run_script

    if name not in _MODULES:
        s = importlib.util.spec_from_file_location(f"_script_{name[:-3]}", SCRIPTS / name)
        _MODULES[name] = importlib.util.module_from_spec(s)
        s.loader.exec_module(_MODULES[name])
    capsys = _CAPSYS[-1]
    capsys.readouterr()
    argv, sys.argv = sys.argv, [name, *map(str, args)]
    try:
        rc = run_script(_MODULES[name].main, name)
    finally:
        sys.argv = argv
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith(f"{name}: error: "), err
    return lines[-1], rc


def script(name: str, *args, cwd=None, inproc=False) -> tuple[str, subprocess.CompletedProcess]:
    """Run a workflow script (argument list, no shell); return its last stderr line."""
    if inproc:
        return script_inproc(name, *args)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("SEGCORE_TRACEBACK", None)
    r = subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, f"{name} succeeded on a bad input:\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines, f"{name} failed silently (rc {r.returncode})"
    assert lines[-1].startswith(f"{name}: error: "), r.stderr
    return lines[-1], r


def dry_run(tmp_path: Path, **overrides) -> str:
    """`snakemake -n` on the tiny config with ``overrides``; the one-line configuration error."""
    write_config(tmp_path, tiny_config(**overrides))
    r = snakemake(tmp_path, "-n", timeout=120)
    assert r.returncode != 0, r.stdout[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("Invalid configuration:")]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert "Job stats" not in r.stdout  # nothing was planned
    return lines[0]


def raised(fn, *args, exc=(ValueError, OSError), **kw) -> str:
    with pytest.raises(exc) as info:
        fn(*args, **kw)
    return str(info.value)


def spec(manifest, split="train", resize=None) -> str:
    return json.dumps({"manifest": str(manifest), "split": split, "resize": resize})


OPTIONS = {"batch_size": 2, "iterations": 2, "lr": 1e-3}


# ----------------------------------------------------------------------------- shared inputs
@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A converted GTA5 set (4 images), 19- and 16-class small checkpoints, and soft stores."""
    base = tmp_path_factory.mktemp("good")
    make_gta5(base / "raw", n=4)
    convert_dataset("gta5", base / "raw", base / "data", workers=1, progress=False)
    manifest = base / "data" / "manifest.csv"
    keys = [ln.split(",")[0] for ln in manifest.read_text().splitlines()[1:]]
    torch.manual_seed(0)
    for c in (19, 16):
        save_model(base / f"ckpt{c}.pt", build_deeplabv2(c, "small"),
                   {"arch": "small", "num_classes": c, "bn_clr": False})
    torch.save({"model": {"w": torch.zeros(1)}, "meta": {"arch": "resnet101", "num_classes": 19, "bn_clr": True}},
               base / "ckpt_resnet101.pt")

    def soft(path, ks, c):
        with SoftWriter(path, ks, c, (2, 3)) as w:
            for i in range(len(ks)):
                w.write(i, torch.full((c, 2, 3), 1.0 / c))
        return path

    soft(base / "soft.h5", keys, 19)
    soft(base / "soft_other_keys.h5", [f"other/{k}" for k in keys], 19)
    soft(base / "soft16.h5", keys, 16)
    shutil.copy(base / "soft.h5", base / "soft_incomplete.h5")
    import h5py

    with h5py.File(base / "soft_incomplete.h5", "a") as h5:
        del h5.attrs["complete"]
    (base / "protos.pt").write_bytes(b"")  # only its existence is checked before training
    return base


def stage1(good, tmp_path, inproc=True, **kw) -> tuple[str, subprocess.CompletedProcess]:
    args = dict(source=spec(good / "data/manifest.csv"), target=spec(good / "data/manifest.csv"),
                num_classes=19, options=json.dumps(OPTIONS), seed=0, init=good / "ckpt19.pt",
                prototypes=good / "protos.pt", soft_labels=good / "soft.h5", out=tmp_path / "out.pt",
                workdir=tmp_path / "work")
    args.update(kw)
    flat = [x for k, v in args.items() for x in (f"--{k.replace('_', '-')}", v)]
    return script("train_proda_stage1.py", *flat, inproc=inproc)


def cpsl_inputs(tmp_path, classes=19, protos_classes=19) -> tuple[Path, Path]:
    """A prototypes file and a class distribution JSON (valid unless the counts differ from 19)."""
    from segcore.pseudo.class_distribution import write_class_distribution

    torch.save({"protos": torch.randn(protos_classes, 8), "counts": torch.ones(protos_classes, dtype=torch.long)},
               tmp_path / "protos.pt")
    write_class_distribution(tmp_path / "class_distribution.json", torch.ones(classes, dtype=torch.long))
    return tmp_path / "protos.pt", tmp_path / "class_distribution.json"


def cpsl_stage1(good, tmp_path, **kw) -> tuple[str, subprocess.CompletedProcess]:
    protos, dist = cpsl_inputs(tmp_path)
    args = dict(source=spec(good / "data/manifest.csv"), target=spec(good / "data/manifest.csv"),
                num_classes=19, options=json.dumps(OPTIONS), seed=0, init=good / "ckpt19.pt",
                prototypes=protos, soft_labels=good / "soft.h5", class_distribution=dist,
                out=tmp_path / "out.pt", out_prototypes=tmp_path / "out_protos.pt", workdir=tmp_path / "work")
    args.update(kw)
    flat = [x for k, v in args.items() for x in (f"--{k.replace('_', '-')}", v)]
    return script("train_cpsl_stage1.py", *flat, inproc=True)


def train_source(good, tmp_path, labelled=None, options=None, inproc=True):
    return script("train_source.py", "--mode", "source_only",
                  "--labelled", labelled or spec(good / "data/manifest.csv"), "--num-classes", 19,
                  "--arch", "small", "--options", json.dumps(options or OPTIONS), "--seed", 0,
                  "--out", tmp_path / "model.pt", "--workdir", tmp_path / "work", inproc=inproc)


def convert(dataset, root, out) -> str:
    return script("convert.py", "--dataset", dataset, "--root", root, "--out", out, "--workers", 1, "--no-progress",
                  inproc=dataset == "synthia")[0]


# ----------------------------------------------------------------------------- the cases
def case_missing_dataset_root(tmp_path, good):
    root = tmp_path / "no such root"
    return convert("gta5", root, tmp_path / "out"), [str(root)], "gta5 root not found"


def case_missing_label_subfolder(tmp_path, good):
    make_synthia(tmp_path / "raw")
    shutil.rmtree(tmp_path / "raw/GT/LABELS")
    return (convert("synthia", tmp_path / "raw", tmp_path / "out"), [str(tmp_path / "raw/GT/LABELS")],
            "label folder 'GT/LABELS/' not found")


def case_missing_label_for_image(tmp_path, good):
    make_gta5(tmp_path / "raw", n=3)
    (tmp_path / "raw/labels/00002.png").unlink()
    return (convert("gta5", tmp_path / "raw", tmp_path / "out"), [str(tmp_path / "raw/labels/00002.png")],
            "label file missing for image")


def case_missing_image_for_label(tmp_path, good):
    make_gta5(tmp_path / "raw", n=3)
    (tmp_path / "raw/images/00003.png").unlink()
    return (convert("gta5", tmp_path / "raw", tmp_path / "out"), [str(tmp_path / "raw/labels/00003.png")],
            "image file missing for label")


def case_corrupt_png(tmp_path, good):
    make_gta5(tmp_path / "raw", n=2)
    bad = tmp_path / "raw/labels/00001.png"
    bad.write_bytes(b"this is not a png at all" * 10)
    return convert("gta5", tmp_path / "raw", tmp_path / "out"), [str(bad)], "cannot decode image"


def case_truncated_png(tmp_path, good):
    make_gta5(tmp_path / "raw", n=2, size=(64, 48))
    bad = tmp_path / "raw/labels/00002.png"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    return convert("gta5", tmp_path / "raw", tmp_path / "out"), [str(bad)], "cannot decode image"


def case_synthia_label_8bit(tmp_path, good):
    make_synthia(tmp_path / "raw", n=2)
    bad = tmp_path / "raw/GT/LABELS/0000001.png"
    write_png(bad, np.zeros((12, 20), np.uint8))
    return convert("synthia", tmp_path / "raw", tmp_path / "out"), [str(bad)], "expected a 16-bit SYNTHIA label PNG"


def case_unknown_label_ids_gta5(tmp_path, good):
    make_gta5(tmp_path / "raw", n=2)
    bad = tmp_path / "raw/labels/00001.png"
    lab = np.full((16, 24), 7, np.uint8)
    lab[0, :3] = 200
    write_png(bad, lab, palette=PALETTE)
    return convert("gta5", tmp_path / "raw", tmp_path / "out"), [str(bad)], "unknown gta5 label id(s) 200"


def case_unknown_label_ids_synthia(tmp_path, good):
    make_synthia(tmp_path / "raw", n=2)
    bad = tmp_path / "raw/GT/LABELS/0000000.png"
    ids = np.full((12, 20, 3), 1, np.uint16)
    ids[0, 0, 0] = 999
    write_png16(bad, ids)
    return convert("synthia", tmp_path / "raw", tmp_path / "out"), [str(bad)], "unknown synthia label id(s) 999"


def case_image_label_size_mismatch(tmp_path, good):
    make_gta5(tmp_path / "raw", n=2, size=(24, 16))
    bad = tmp_path / "raw/labels/00002.png"
    write_png(bad, np.full((8, 12), 7, np.uint8), palette=PALETTE)
    return (convert("gta5", tmp_path / "raw", tmp_path / "out"), [str(bad)],
            "label size 12x8 differs from image size 24x16")


def case_empty_split_cityscapes_val(tmp_path, good):
    make_cityscapes(tmp_path / "raw")
    for f in (tmp_path / "raw/leftImg8bit/val").rglob("*.png"):
        f.unlink()
    for f in (tmp_path / "raw/gtFine/val").rglob("*.png"):
        f.unlink()
    return (convert("cityscapes", tmp_path / "raw", tmp_path / "out"), [str(tmp_path / "raw/leftImg8bit/val")],
            "empty split 'val'")


def case_manifest_missing(tmp_path, good):
    m = tmp_path / "data" / "manifest.csv"
    return train_source(good, tmp_path, labelled=spec(m))[0], [str(m)], "manifest not found"


def case_manifest_lacks_columns(tmp_path, good):
    m = tmp_path / "manifest.csv"
    m.write_text("key,image\na,b.png\n")
    return train_source(good, tmp_path, labelled=spec(m))[0], [str(m)], "manifest lacks column(s) label, split"


def case_split_absent_from_manifest(tmp_path, good):
    m = good / "data/manifest.csv"
    return train_source(good, tmp_path, labelled=spec(m, "val"))[0], [str(m)], "no rows for split 'val'"


def case_manifest_image_missing(tmp_path, good):
    shutil.copytree(good / "raw", tmp_path / "raw")
    convert_dataset("gta5", tmp_path / "raw", tmp_path / "data", workers=1, progress=False)
    (tmp_path / "raw/images/00003.png").unlink()
    line, _ = train_source(good, tmp_path, labelled=spec(tmp_path / "data/manifest.csv"))
    return line, [str(tmp_path / "raw/images/00003.png"), "manifest.csv"], "image listed in"


def case_batch_larger_than_dataset(tmp_path, good):
    line, _ = train_source(good, tmp_path, options=dict(OPTIONS, batch_size=8), inproc=False)
    assert not (tmp_path / "work").exists()  # nothing of a training run was started
    return line, [str(good / "data/manifest.csv")], "has 4 image(s), fewer than the batch size 8"


def case_negative_learning_rate_script(tmp_path, good):
    return train_source(good, tmp_path, options=dict(OPTIONS, lr=-0.01))[0], ["'lr'"], "must be > 0, got -0.01"


def case_checkpoint_classes_vs_chain(tmp_path, good):
    # a 19-class (GTA5) model evaluated on the 16-class SYNTHIA chain
    line, _ = script("evaluate.py", "--model", good / "ckpt19.pt", "--manifest", good / "data/manifest.csv",
                     "--split", "train", "--num-classes", 16, "--out", tmp_path / "m.json")
    return line, [str(good / "ckpt19.pt")], "checkpoint has 19 classes, the chain has 16"


def case_checkpoint_other_class_count(tmp_path, good):
    line, _ = script("pseudo_labels.py", "--kind", "soft", "--model", good / "ckpt16.pt",
                     "--target", spec(good / "data/manifest.csv"), "--num-classes", 19, "--out", tmp_path / "s.h5",
                     inproc=True)
    assert not (tmp_path / "s.h5").exists()
    return line, [str(good / "ckpt16.pt")], "checkpoint has 16 classes, the chain has 19"


def case_checkpoint_other_arch(tmp_path, good):
    m = spec(good / "data/manifest.csv")
    line, _ = script("train_distill.py", "--stage", "stage3", "--source", m, "--target", m, "--num-classes", 19,
                     "--arch", "small", "--options", json.dumps(OPTIONS), "--seed", 0, "--teacher", good / "ckpt19.pt",
                     "--hard-labels", tmp_path / "hard.h5", "--student-init", good / "ckpt_resnet101.pt",
                     "--init-kind", "checkpoint", "--out", tmp_path / "o.pt", "--workdir", tmp_path / "w")
    return (line, [str(good / "ckpt_resnet101.pt")],
            "architecture mismatch: checkpoint is arch 'resnet101', expected 'small'")


def case_lab_stats_of_other_images(tmp_path, good):
    # CPSL's colour transfer with the LAB statistics of another target set: refused before training
    from segcore.data.lab_transfer import write_lab_stats

    m = spec(good / "data/manifest.csv")
    write_lab_stats(tmp_path / "lab.json", ["other"], torch.ones(1, 2, 3), source={})
    line, _ = script("train_distill.py", "--stage", "cpsl_stage3", "--source", m, "--target", m, "--num-classes", 19,
                     "--arch", "small", "--options", json.dumps(dict(OPTIONS, lab_transfer=True)), "--seed", 0,
                     "--teacher", good / "ckpt19.pt", "--hard-labels", tmp_path / "hard.h5", "--student-init",
                     good / "ckpt19.pt", "--init-kind", "checkpoint", "--out", tmp_path / "o.pt", "--workdir",
                     tmp_path / "w", "--lab-stats", tmp_path / "lab.json", inproc=True)
    return line, [str(tmp_path / "lab.json")], "LAB statistics of 1 images that are not the"


def case_checkpoint_weights_of_other_arch(tmp_path, good):
    # meta says "small" but the weights are of another network: refused by the strict load
    state = torch.load(good / "ckpt19.pt", weights_only=True)
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("layer4.")}
    torch.save(state, tmp_path / "mixed.pt")
    return raised(load_model, tmp_path / "mixed.pt"), [str(tmp_path / "mixed.pt")], "architecture mismatch"


def case_not_a_checkpoint(tmp_path, good):
    line, _ = script("evaluate.py", "--model", good / "raw/images/00001.png", "--manifest", good / "data/manifest.csv",
                     "--split", "train", "--num-classes", 19, "--out", tmp_path / "m.json", inproc=True)
    return line, [str(good / "raw/images/00001.png")], "not a segcore checkpoint"


def case_store_missing(tmp_path, good):
    return (stage1(good, tmp_path, soft_labels=tmp_path / "none.h5")[0], [str(tmp_path / "none.h5")],
            "pseudo-label store not found")


def case_store_other_image_list(tmp_path, good):
    p = good / "soft_other_keys.h5"
    return stage1(good, tmp_path, soft_labels=p, inproc=False)[0], [str(p)], "pseudo-label store for another image list"


def case_store_other_class_count(tmp_path, good):
    p = good / "soft16.h5"
    return stage1(good, tmp_path, soft_labels=p)[0], [str(p)], "pseudo-labels for 16 classes, expected 19"


def case_store_incomplete(tmp_path, good):
    p = good / "soft_incomplete.h5"
    return stage1(good, tmp_path, soft_labels=p)[0], [str(p)], "incomplete pseudo-label store"


def case_class_distribution_other_class_count(tmp_path, good):
    (tmp_path / "other").mkdir()
    _, dist16 = cpsl_inputs(tmp_path / "other", classes=16)
    line, _ = cpsl_stage1(good, tmp_path, class_distribution=dist16)
    assert not (tmp_path / "work").exists()  # refused before any training
    return line, [str(dist16)], "class distribution has 16 classes, the chain has 19"


def case_prototypes_other_class_count(tmp_path, good):
    (tmp_path / "other").mkdir()
    protos16, _ = cpsl_inputs(tmp_path / "other", protos_classes=16)
    return (cpsl_stage1(good, tmp_path, prototypes=protos16)[0], [str(protos16)],
            "prototypes for 16 classes, the chain has 19")


def case_disk_full_checkpoint(tmp_path, good, monkeypatch):
    def full_disk(obj, f, *a, **kw):
        Path(f).write_bytes(b"\0" * 1000)  # some bytes went out before the disk filled up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    final = tmp_path / "run" / "model.pt"
    msg = raised(save_model, final, build_deeplabv2(19, "small"), {"arch": "small", "num_classes": 19, "bn_clr": False},
                 exc=OSError)
    assert not final.exists() and list(final.parent.iterdir()) == []  # no half-written file, no temporary
    return msg, [str(final)], "No space left on device"


def case_disk_full_convert(tmp_path, good, monkeypatch, capsys):
    from PIL import Image

    def full_disk(self, fp, *a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", full_disk)
    spec_ = importlib.util.spec_from_file_location("convert_script", SCRIPTS / "convert.py")
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    rc = mod.main(["--dataset", "gta5", "--root", str(good / "raw"), "--out", str(tmp_path / "out"), "--workers", "1",
                   "--no-progress"])
    assert rc == 2
    assert not (tmp_path / "out/manifest.csv").exists()
    assert not list((tmp_path / "out").rglob("*.png"))
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("convert.py: error: ")
    return line, [str(tmp_path / "out/labels"), ".png"], "No space left on device"


def case_config_unknown_warmup_mode(tmp_path, good):
    return dry_run(tmp_path, warmup={"mode": "gan"}), ["'warmup.mode'"], "'gan' is not one of"


def case_config_unknown_source_dataset(tmp_path, good):
    chains = {"gta5_to_cityscapes": {"source": "cityscapes", "target": "cityscapes", "num_classes": 19}}
    return (dry_run(tmp_path, chains=chains, run_chains=["gta5_to_cityscapes"]),
            ["'chains.gta5_to_cityscapes.source'"], "'cityscapes' is not one of")


def case_config_wrong_classes_for_chain(tmp_path, good):
    chains = {"synthia_to_cityscapes": {"source": "synthia", "target": "cityscapes", "num_classes": 19}}
    return (dry_run(tmp_path, chains=chains, run_chains=["synthia_to_cityscapes"]),
            ["'chains.synthia_to_cityscapes.num_classes'"], "SYNTHIA chains use the 16-class protocol")


def case_config_negative_learning_rate(tmp_path, good):
    train = dict(tiny_config()["train"], lr=-0.01)
    return dry_run(tmp_path, train=train), ["'train.lr'"], "-0.01"


def case_config_zero_iterations(tmp_path, good):
    return (dry_run(tmp_path, proda={"stage1": {"iterations": 0}}), ["'proda.stage1.iterations'"],
            "0 is less than the minimum of 1")


def case_config_unknown_key(tmp_path, good):
    return dry_run(tmp_path, trian={"lr": 0.1}), ["'<top level>'", "trian"], "Additional properties are not allowed"


def case_config_seed_renamed(tmp_path, good):
    return dry_run(tmp_path, seed=1337), ["'seed'", "seeds: [1337]"], "renamed to 'seeds'"


def case_config_unknown_chain(tmp_path, good):
    return (dry_run(tmp_path, run_chains=["gta5_to_mapillary"]), ["'run_chains'", "gta5_to_mapillary"],
            "unknown chain")


CASES = {name[len("case_"):]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, tmp_path, good, request, capsys):
    _CAPSYS.append(capsys)
    fn = CASES[name]
    params = fn.__code__.co_varnames[:fn.__code__.co_argcount]
    extra = {k: request.getfixturevalue(k) for k in ("monkeypatch", "capsys") if k in params}
    line, names, what = fn(tmp_path, good, **extra)
    assert "\n" not in line.strip(), line
    for n in names:
        assert n in line, f"{n!r} not named in: {line}"
    assert what in line, f"{what!r} not said in: {line}"
    if os.environ.get("BAD_INPUTS_DUMP"):  # to refresh tests/bad_inputs.md
        with open(os.environ["BAD_INPUTS_DUMP"], "a") as fh:
            fh.write(f"{name}\t{line.replace(str(tmp_path), '<tmp>').replace(str(good), '<good>')}\n")


def test_case_count():
    assert len(CASES) >= 22


# ----------------------------------------------------------------------------- odd paths
def test_metacharacter_paths_reach_no_shell(tmp_path, good):
    """A dataset root and output folder with spaces and shell metacharacters: converted, nothing executed."""
    root = tmp_path / METACHAR / "raw"
    shutil.copytree(good / "raw", root)
    out = tmp_path / METACHAR / "out dir;$HOME"
    r = subprocess.run([sys.executable, str(SCRIPTS / "convert.py"), "--dataset", "gta5", "--root", str(root),
                        "--out", str(out), "--workers", "1", "--no-progress"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (out / "manifest.csv").is_file()
    assert str(root) in (out / "manifest.csv").read_text()
    assert not list(tmp_path.rglob("pwned*")) and not Path("pwned").exists()
    # and an error about such a path names it verbatim
    line = convert("gta5", tmp_path / METACHAR / "missing", tmp_path / "o")
    assert str(tmp_path / METACHAR / "missing") in line and "\n" not in line


def test_metacharacter_config_paths_are_quoted(tmp_path):
    """`snakemake -n -p`: a dataset root with metacharacters reaches each shell command quoted."""
    import shlex

    cfg = tiny_config()
    root = "raw data/$(touch pwned);x"
    cfg["datasets"]["gta5"]["root"] = root
    write_config(tmp_path, cfg)
    r = snakemake(tmp_path, "-n", "-p", "--forceall", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    commands = [ln for ln in r.stdout.splitlines() if "--root" in ln and root in ln]
    assert commands, r.stdout[-2000:]
    for ln in commands:
        assert shlex.quote(root) in ln, ln
    assert not list(tmp_path.rglob("pwned*"))

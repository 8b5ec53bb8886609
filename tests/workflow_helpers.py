"""Running the Snakemake workflow from tests, in a temporary working directory."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
#: what a copy of the workflow needs (tests that edit a source file edit the copy's; docs/report
#: holds the report's captions)
WORKFLOW_FILES = ("Snakefile", "rules", "workflow_scripts", "segcore", "configs", "profiles", "envs", "docs")


def tiny_config(**overrides) -> dict:
    """A config small enough that the whole workflow (both chains, every stage) runs in about a minute."""
    cfg = {
        "seeds": [3],
        "published_results": str(ROOT / "configs" / "published_results.csv"),
        "demo": {"enabled": True, "seed": 1, "shift": 1.0,
                 "gta5": {"count": 8, "size": [80, 44]}, "synthia": {"count": 8, "size": [64, 38]},
                 "cityscapes": {"train_count": 8, "val_count": 4, "size": [64, 32]}},
        "datasets": {"gta5": {"root": "results/demo/GTA5", "resize": [80, 44]},
                     "synthia": {"root": "results/demo/SYNTHIA", "resize": [64, 38]},
                     "cityscapes": {"root": "results/demo/cityscapes", "resize": [64, 32]}},
        "model": {"arch": "small"},
        "train": {"batch_size": 2, "crop": [48, 24], "base_width": 64, "iterations": 6, "lr": 0.001,
                  "checkpoint_every": 3, "log_every": 2},
        "proda": {"stage1": {"iterations": 4}, "stage2": {"iterations": 4}, "stage3": {"iterations": 4}},
        # 2 images x 16 samples per step: the memory of 48 is full after 2 steps, so steps 3-4 use it
        "cpsl": {"stage1": {"iterations": 4, "samples_per_image": 16, "queue_length": 48},
                 "stage2": {"iterations": 4}, "stage3": {"iterations": 4}},
        "simclr": {"options": {"iterations": 4, "batch_size": 4, "crop": [48, 24], "log_every": 2}},
        # DDB: both rounds, 2 steps per run (round 2 reads round 1's CKD student)
        "ddb": {"arch": "small_v1c",
                "st": {"iterations": 2, "batch_size": 2, "crop": [48, 24], "source_base_width": 64,
                       "target_base_width": 64, "warmup_iterations": 1, "lr": 0.001, "log_every": 1},
                "ckd": {"iterations": 2, "batch_size": 2, "crop": [48, 24], "source_base_width": 64,
                        "target_base_width": 64, "warmup_iterations": 1, "lr": 0.001, "log_every": 1}},
        # SeCo on ProDA stage 1: 2 classifier steps on tiny crops, 2 re-training steps
        "seco": {"scc": {"arch": "small", "window": [16, 32], "crop": [16, 32], "batch_size": 4, "iterations": 2,
                         "min_pixels": 2, "checkpoint_every": 1, "log_every": 1},
                 "retrain": {"iterations": 2}},
        # Uni-UVPT: both small presets, 2 source and 2 adaptation steps on 64x64 crops (the smallest)
        "uvpt": {"backbones": {"swin": "swin_small", "mit": "mit_small"},
                 "source": {"iterations": 2, "batch_size": 2, "crop": [64, 64], "warmup_iterations": 1,
                            "lr": 0.001, "log_every": 1},
                 "adapt": {"iterations": 2, "batch_size": 2, "crop": [64, 64], "lr": 0.001, "log_every": 1}},
        "evaluate": {"batch_size": 4},
    }
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def converted_gta5_cityscapes(base: Path, val_count: int = 1) -> tuple[dict, dict]:
    """Tiny generated GTA5 (4 images, 80x44) and Cityscapes (4 train, ``val_count`` val, 64x32)
    sets converted under ``base``; returns the GTA5 train spec and the Cityscapes spec (split
    left to the caller: ``dict(spec, split=...)``)."""
    from segcore.data import demo
    from segcore.data.convert import convert_dataset

    demo.make_gta5(base / "gta", 4, size=(80, 44))
    demo.make_cityscapes(base / "cs", 4, val_count, size=(64, 32))
    convert_dataset("gta5", base / "gta", base / "gta_c", workers=1, progress=False)
    convert_dataset("cityscapes", base / "cs", base / "cs_c", workers=1, progress=False)
    return ({"manifest": str(base / "gta_c/manifest.csv"), "split": "train", "resize": [80, 44]},
            {"manifest": str(base / "cs_c/manifest.csv"), "split": "train", "resize": [64, 32]})


def write_config(workdir: Path, cfg: dict) -> Path:
    path = Path(workdir) / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def copy_workflow(dest: Path) -> Path:
    """A copy of this repository's workflow files at ``dest`` (its Snakefile is ``dest/Snakefile``)."""
    dest.mkdir(parents=True)
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def copy_workdir(work: Path, dest: Path) -> Path:
    """A copy of a finished working directory beside it (outputs, metadata, modification times), for
    a test that changes what is there: the jobs' relative script paths stay valid next to the same
    workflow copy."""
    assert dest.parent == work.parent, "the copy must sit next to the original"
    shutil.copytree(work, dest, symlinks=True)
    for lock in (dest / ".snakemake" / "locks").glob("*"):
        lock.unlink()
    return dest


def snakemake_env() -> dict:
    """The environment with this venv's bin first, so rules' `python` is ours."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def snakemake_cmd(workdir: Path, *args: str, snakefile: Path = ROOT / "Snakefile") -> list[str]:
    """`snakemake` of ``snakefile`` in ``workdir``, on 2 cores unless ``args`` say otherwise."""
    cores = [] if "--cores" in args else ["--cores", "2"]
    return [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--directory", str(workdir), *cores, *args]


def snakemake(
    workdir: Path, *args: str, timeout: int = 900, snakefile: Path = ROOT / "Snakefile"
) -> subprocess.CompletedProcess:
    """Run the workflow in ``workdir`` (whose config.yaml it reads)."""
    return subprocess.run(snakemake_cmd(workdir, *args, snakefile=snakefile), cwd=workdir, env=snakemake_env(),
                          capture_output=True, text=True, timeout=timeout)

def planned_jobs(output: str) -> dict[str, int]:
    """The first "Job stats" table of a dry run, as {rule: count}."""
    lines = output.split("Job stats:", 1)[1].splitlines()
    jobs = {}
    for line in lines[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


def planned_with_config(workdir: Path, cfg: dict, snakefile: Path = ROOT / "Snakefile") -> dict[str, int]:
    """Jobs per rule that a dry run plans under ``cfg``; the tiny config is written back after."""
    write_config(workdir, cfg)
    try:
        proc = snakemake(workdir, "-n", "--quiet", "rules", snakefile=snakefile)
    finally:
        write_config(workdir, tiny_config())
    assert proc.returncode == 0, proc.stderr[-2000:]
    return planned_jobs(proc.stdout)


def write_pretrained_stand_ins(work: Path) -> list[str]:
    """A stand-in file at every ``pretrained/*`` path the full-scale configs name (planning reads
    no weights, but Snakemake wants the inputs to exist); returns the file names."""
    names = sorted({m for cfg in (ROOT / "configs").glob("*.yaml")
                    for m in re.findall(r"pretrained/([\w.\-]+)", cfg.read_text())})
    (work / "pretrained").mkdir(exist_ok=True)
    for name in names:
        (work / "pretrained" / name).write_bytes(b"stand-in: planning reads no weights")
    return names

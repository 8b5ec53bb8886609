"""A plain (non-editable) `pip install .` ships the config schema: in a fresh venv, segcore
validates a config and the workflow plans from the repository without the repository's
segcore/ folder on the path."""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from workflow_helpers import ROOT

SOURCES = ("pyproject.toml", "README.md", "segcore", "Snakefile", "rules", "workflow_scripts", "configs", "envs",
           "profiles", "config.yaml")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, a copy of the repository without segcore/) after `pip install .` of a copy."""
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # the dependencies (torch, snakemake, ...) come from this environment, after the venv's own
    # site-packages; lines of a .pth are plain paths, so this environment's editable segcore
    # (itself a .pth finder) does not come along
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                           "--no-build-isolation", "--no-cache-dir", str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    shutil.rmtree(src / "segcore")  # the workflow must now use the installed package
    return python, src, Path(site)


def test_installed_package_holds_and_reads_the_schema(installed, tmp_path):
    python, src, site = installed
    code = ("import segcore, segcore.config as C; print(segcore.__file__); "
            "cfg = C.load_config_file('config.yaml'); C.validate(cfg); print(cfg['train']['momentum'])")
    proc = subprocess.run([str(python), "-c", code], cwd=src, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    location, momentum = proc.stdout.split()
    assert Path(location).is_relative_to(site), location  # not the repository's folder
    assert momentum == "0.9"  # a default filled in from the shipped schema
    assert sorted(p.name for p in (site / "segcore" / "schemas").glob("*.yaml")) == sorted(
        p.name for p in (ROOT / "segcore" / "schemas").glob("*.yaml"))


def test_workflow_dry_run_with_the_installed_package(installed, tmp_path):
    python, src, _ = installed
    shutil.copy2(src / "config.yaml", tmp_path / "config.yaml")
    proc = subprocess.run([str(python), "-m", "snakemake", "-s", str(src / "Snakefile"), "--directory", str(tmp_path),
                           "--cores", "1", "-n", "--quiet", "rules"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "results_table" in proc.stdout and "distill_stage3" in proc.stdout

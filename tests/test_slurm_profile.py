"""profiles/slurm without a cluster: its entries, its installation for `snakemake --profile slurm`,
and what it makes of the jobs (dry runs). The real cluster run is tests/test_slurm_cluster.py."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_helpers import ROOT, snakemake_env, tiny_config, write_config

PROFILE = ROOT / "profiles" / "slurm"
INSTALL = PROFILE / "install.py"
LAUNCH = re.compile(r"\$\(\[ (\d+) -gt 1 \] && echo torchrun --standalone --nproc_per_node=(\d+) \|\| echo python\)")

pytest.importorskip("snakemake_executor_plugin_slurm", reason="snakemake-executor-plugin-slurm not installed")


def test_every_entry_is_commented_and_gpu_rules_are_consistent():
    text = PROFILE.joinpath("config.yaml").read_text()
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert "#" in line, f"profile entry without a comment: {line!r}"
    profile = yaml.safe_load(text)
    assert profile["executor"] == "slurm" and profile["jobs"] >= 1
    assert profile["slurm-status-command"] == "squeue"  # sacct hangs on clusters without slurmdbd
    # a failed job is never resubmitted (a non-zero exit fails the same way again); a preempted
    # job or one whose node failed is requeued by Slurm itself (sbatch --requeue)
    assert profile["retries"] == 0 and profile["slurm-requeue"] is True
    assert profile["rerun-incomplete"] is True  # after a killed Snakemake, training resumes
    # profiles/default is applied on top as the workflow profile, and its keys win
    local = yaml.safe_load(ROOT.joinpath("profiles", "default", "config.yaml").read_text())
    assert not {"retries", "slurm-requeue", "slurm-no-requeue"} & set(local)
    machine_only = {"gpu", "gres", "tasks", "cpus_per_task", "slurm_partition", "slurm_account"}
    assert not machine_only & set(profile["default-resources"])
    for rule, res in profile["set-resources"].items():
        assert "gres" not in res and "tasks" not in res and "cpus_per_task" not in res, rule
        assert res["gpu"] >= 1 and {"cpus_per_gpu", "mem_mb", "runtime"} <= set(res), rule


def install(xdg: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(snakemake_env(), XDG_CONFIG_HOME=str(xdg))
    return subprocess.run([sys.executable, str(INSTALL), *args], env=env, capture_output=True, text=True, timeout=60)


def test_install_keeps_values_and_never_overwrites_a_foreign_profile(tmp_path):
    xdg = tmp_path / "xdg"
    assert install(xdg, "--partition", "cpu", "--account", "proj").returncode == 0
    installed = xdg / "snakemake" / "slurm" / "config.yaml"
    assert install(xdg, "--gpu-partition", "gpu").returncode == 0  # a second call keeps the first values
    profile = yaml.safe_load(installed.read_text())
    assert profile["default-resources"]["slurm_partition"] == "'cpu'"
    assert profile["default-resources"]["slurm_account"] == "'proj'"
    assert all(res["slurm_partition"] == "'gpu'" for res in profile["set-resources"].values())
    assert install(xdg, "--account", "").returncode == 0  # "" clears a value
    assert "slurm_account" not in yaml.safe_load(installed.read_text())["default-resources"]
    assert install(xdg, "--account", "x; rm -rf /").returncode != 0
    foreign = xdg / "snakemake" / "other" / "config.yaml"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("executor: slurm\n")
    proc = install(xdg, "--name", "other")
    assert proc.returncode == 1 and "not written by this script" in proc.stderr
    assert foreign.read_text() == "executor: slurm\n"


def dry_run(workdir: Path, profile: str, cwd: Path, xdg: Path | None = None) -> str:
    env = snakemake_env()
    if xdg:
        env["XDG_CONFIG_HOME"] = str(xdg)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--profile", profile, "-s", str(ROOT / "Snakefile"),
                           "--directory", str(workdir), "-n", "-p"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def jobs_of(output: str) -> list[dict]:
    """Rule, resources and text (with the shell command) of each job of a dry run's listing."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        resources = dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {}
        jobs.append({"rule": rule, "resources": resources, "shell": block})
    return jobs


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("dry")
    cfg = tiny_config()
    # a global batch the profile's 4-GPU rules can split (batch 2 stops at parse time: test_cluster_check.py)
    cfg["train"] = dict(cfg["train"], batch_size=4)
    write_config(work, cfg)
    return work


def test_bare_profile_name_resolves_to_the_installed_copy_from_the_repository_root(demo_dir, tmp_path):
    xdg = tmp_path / "xdg"
    assert install(xdg, "--partition", "cpu", "--gpu-partition", "gpu", "--account", "proj").returncode == 0
    out = dry_run(demo_dir, "slurm", cwd=ROOT, xdg=xdg)  # the user's words, standing in the repo root
    assert "Using profiles slurm and workflow specific profile" in out
    jobs = jobs_of(out)
    assert jobs
    for job in jobs:
        res = job["resources"]
        if job["rule"] == "all":
            continue
        assert res.get("slurm_account") == "proj", job["rule"]
        assert res.get("slurm_partition") == ("gpu" if int(res.get("gpu", 0)) else "cpu"), job["rule"]


def test_training_jobs_get_gpus_and_torchrun_only_with_the_slurm_profile(demo_dir):
    profile = yaml.safe_load(PROFILE.joinpath("config.yaml").read_text())["set-resources"]
    seen = set()
    for job in jobs_of(dry_run(demo_dir, str(PROFILE), cwd=demo_dir)):
        m = LAUNCH.search(job["shell"])
        if not m:
            continue
        seen.add(job["rule"])
        assert job["rule"] in profile, f"training rule {job['rule']} has no set-resources entry in profiles/slurm"
        assert m.group(1) == m.group(2) == job["resources"]["gpu"] == str(profile[job["rule"]]["gpu"]), job["rule"]
        assert "gres" not in job["resources"] and "tasks" not in job["resources"]
    assert {"source_only", "oracle", "warmup", "simclr", "proda_stage1", "cpsl_stage1", "distill_stage2",
            "distill_stage3"} <= seen
    local = [job for job in jobs_of(dry_run(demo_dir, str(ROOT / "profiles" / "default"), cwd=demo_dir))
             if LAUNCH.search(job["shell"])]
    assert {job["rule"] for job in local} == seen
    assert all(LAUNCH.search(job["shell"]).group(1) == "0" for job in local)  # one plain process locally

"""A training job killed (SIGKILL) mid-way resumes from its rolling state on the next run of the
workflow and ends exactly where an uninterrupted run ends (deterministic on CPU: one thread per
job, data order and views a function of (seed, iteration), RNG states saved with the state).

One working folder per rule, a copy of the tiny workflow's finished one (its inputs are built):
the job with more iterations, uninterrupted first (the reference), then forced to run again,
killed at a random iteration after its first rolling state, and the workflow is run again.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from workflow_helpers import copy_workdir, snakemake_cmd, snakemake_env, tiny_config, write_config
from workflow_helpers import snakemake as run_workflow

CHAIN = "gta5_to_cityscapes"
ITERATIONS, EVERY = 40, 4


def resume_config(rule: str) -> dict:
    """The tiny config with more iterations (and a rolling state every 4) for the killed job."""
    cfg = tiny_config()
    longer = {"iterations": ITERATIONS, "checkpoint_every": EVERY, "log_every": 1}
    if rule == "proda_stage1":
        cfg["proda"]["stage1"] = longer
    else:
        cfg[rule] = longer  # per-stage options of a supervised stage
    return cfg


def snakemake(snakefile: Path, workdir: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = run_workflow(workdir, *args, timeout=timeout, snakefile=snakefile)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def training_pids(script: str, marker: str, workdir: Path) -> list[int]:
    """Processes running ``script`` whose command line mentions ``marker`` and whose working
    directory is this test's folder (never another run of the same script on the machine)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if script in cmdline and marker in cmdline and "snakemake" not in cmdline and "bash" not in cmdline:
            try:
                if Path(os.readlink(entry / "cwd")).resolve() != Path(workdir).resolve():
                    continue
            except OSError:
                continue
            pids.append(int(entry.name))
    return pids


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def kill_mid_way(snakefile: Path, workdir: Path, target: str, rule: str, script: str, marker: str, state: Path,
                 log: Path, kill_at: int) -> None:
    """Force ``rule`` to run again for ``target`` and SIGKILL its training process once a rolling
    state exists and the log reports iteration ``kill_at`` (then snakemake itself)."""
    proc = subprocess.Popen(snakemake_cmd(workdir, target, "--forcerun", rule, snakefile=snakefile), cwd=workdir,
                            env=snakemake_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    killed = False
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            done = [int(n) for n in re.findall(r"\] it (\d+)/", log.read_text())] if log.exists() else []
            pids = training_pids(script, marker, workdir)
            if pids and state.exists() and done and max(done) >= kill_at:
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.02)
    finally:
        _kill_group(proc)  # snakemake and anything left of its job
        for pid in training_pids(script, marker, workdir):
            os.kill(pid, signal.SIGKILL)
    assert killed, f"the {rule} job was not caught mid-way (log: {log.read_text()[-500:] if log.exists() else ''})"


def model_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_checkpoint(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        elif isinstance(a[key], dict):
            assert_same_checkpoint(a[key], b[key])
        else:
            assert a[key] == b[key], key


CASES = {
    "proda_stage1": dict(script="train_proda_stage1.py", run="proda/stage1", marker=f"{CHAIN}/proda/stage1"),
    "source_only": dict(script="train_source.py", run="source_only", marker=f"{CHAIN}/source_only"),
}


@pytest.mark.parametrize("rule", list(CASES))
def test_killed_job_resumes_and_matches_an_uninterrupted_run(tiny_workflow, rule):
    case = CASES[rule]
    work = copy_workdir(tiny_workflow.work, tiny_workflow.work.parent / f"resume {rule}")
    snakefile = tiny_workflow.repo / "Snakefile"
    write_config(work, resume_config(rule))
    model = work / f"results/{CHAIN}/{case['run']}/model.pt"
    metrics = work / f"results/{CHAIN}/eval/{case['run']}.json"
    log = work / f"logs/{rule}/{CHAIN}.log"
    state = work / f"work/{CHAIN}/{case['run']}/resume.pt"
    target = str(metrics.relative_to(work))

    snakemake(snakefile, work, target)  # the uninterrupted reference (the new options rerun the job)
    reference_metrics = json.loads(metrics.read_text())
    reference_model = model_state(model)
    assert not state.exists()

    kill_at = random.Random().randint(EVERY + 1, ITERATIONS // 2)  # leaves a wide window to catch the job in
    kill_mid_way(snakefile, work, target, rule, case["script"], case["marker"], state, log, kill_at)
    assert not model.exists()  # the job never finished: no output under its final name
    assert state.exists()

    snakemake(snakefile, work, "--unlock")  # the lock a killed snakemake leaves behind
    # the model (the killed job's output, now missing) and its metrics, which follow from it
    proc = snakemake(snakefile, work, str(model.relative_to(work)), target)  # rerun-incomplete: default profile
    assert re.search(rf"rule {rule}:", proc.stdout + proc.stderr)
    text = log.read_text()
    m = re.search(r"resumed from (.+) at iteration (\d+)", text)
    assert m, text[-2000:]
    assert Path(m.group(1)).name == "resume.pt" and m.group(1).endswith(f"{case['run']}/resume.pt")
    resumed_at = int(m.group(2))
    assert 0 < resumed_at < ITERATIONS and resumed_at % EVERY == 0
    assert json.loads(metrics.read_text()) == reference_metrics
    assert_same_checkpoint(model_state(model), reference_model)
    assert not state.exists()  # cleared once the stage finished

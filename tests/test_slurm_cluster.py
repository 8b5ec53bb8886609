"""The workflow on a real (local, single-node) Slurm cluster through profiles/slurm.

One chain up to its warm-up and the warm-up's evaluation, with the tiny config: CPU jobs (demo
data, conversion), a 2-GPU training job (pretend GPUs: `--gpus=2`, two torchrun processes on
the CPU) and a 1-GPU inference job. Once the training job has written a rolling state it is
requeued (`scontrol requeue`: what Slurm does to a job it preempts with PreemptMode=REQUEUE, or
whose node fails); the profile's `slurm-requeue` made it requeueable, Snakemake's status
polling keeps waiting for it, and the same Slurm job runs again and resumes from that state
instead of starting over. Then a second run has nothing to do, and neither has a local run with
profiles/default (switching profiles reruns nothing). Last, in that folder, a
warm-up whose ImageNet weights file is corrupt (a deterministic failure that only the job's
preflight sees) is submitted exactly once (`retries: 0`) and the run stops with its one-line
error.

Needs root and apt (or Slurm and munge already installed); skipped with the reason otherwise.
The cluster is tests/slurm_cluster.py. Each sequential job costs some seconds of polling, so
the target set is kept small (about three minutes in all on 2 busy cores, cluster included).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slurm_cluster import LocalCluster, Unavailable, ensure_installed
from workflow_helpers import ROOT, snakemake, snakemake_env, tiny_config, write_config

pytestmark = [pytest.mark.workflow, pytest.mark.slurm]

CHAIN = "gta5_to_cityscapes"
TARGET = f"results/{CHAIN}/eval/warmup.json"
ITERATIONS, EVERY = 40, 4           # the warm-up: long enough to be caught after its first rolling state
RUN_TIMEOUT = 480                   # seconds for one snakemake run (timeout -s INT: SIGTERM does not stop it)
PROFILE = ROOT / "profiles" / "slurm"
PROGRESS = re.compile(r"\bit (\d+)/\d+ \(")  # "[<time>] it 5/40 (12.5%) ...": segcore/progress.py


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("a local Slurm cluster needs root (packages, daemons, device nodes)")
    try:
        ensure_installed(log=lambda msg: None)
    except Unavailable as err:
        pytest.skip(f"no local Slurm cluster: {err}")
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        pytest.fail("snakemake-executor-plugin-slurm is not installed: pip install -e '.[test]'")
    c = LocalCluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
    except Unavailable as err:
        pytest.skip(f"no local Slurm cluster: {err}")
    try:
        yield c
    finally:
        c.stop()


def slurm_cmd(workdir: Path, *args: str) -> list[str]:
    """`snakemake --profile profiles/slurm` in ``workdir``, under `timeout -s INT`."""
    return ["timeout", "-s", "INT", "-k", "60", str(RUN_TIMEOUT),
            sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
            "--profile", str(PROFILE), "--slurm-init-seconds-before-status-checks", "2", *args]


def jobs(cluster: LocalCluster) -> dict[str, dict[str, str]]:
    """Every job the cluster has seen (finished ones stay for MinJobAge=3600 s): id -> scontrol fields."""
    ids = cluster.run("squeue", "--states=all", "-h", "-o", "%i").stdout.split()
    out = {}
    for job_id in ids:
        text = cluster.run("scontrol", "show", "job", "-o", job_id).stdout
        out[job_id] = dict(tok.split("=", 1) for tok in text.split() if "=" in tok)
    return out


def rule_of(job: dict) -> str:
    return re.match(r"rule_(.+?)(?:_wildcards_.*)?$", job["Comment"]).group(1)


def time_limit(minutes: int) -> str:
    days, rest = divmod(minutes, 1440)
    text = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{text}" if days else text


def _proc_text(pid: str, name: str) -> str:
    try:
        return (Path("/proc") / pid / name).read_bytes().replace(b"\0", b"\n").decode(errors="replace")
    except OSError:
        return ""


def training_ranks(workdir: Path) -> set[tuple[str, str, str]]:
    """(RANK, WORLD_SIZE, CUDA_VISIBLE_DEVICES) of the torchrun workers of train_source.py in ``workdir``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or "train_source.py" not in _proc_text(entry.name, "cmdline"):
            continue
        try:
            if Path(os.readlink(entry / "cwd")).resolve() != workdir.resolve():
                continue
        except OSError:
            continue
        env = dict(line.split("=", 1) for line in _proc_text(entry.name, "environ").splitlines() if "=" in line)
        if "LOCAL_RANK" in env:
            found.add((env.get("RANK"), env.get("WORLD_SIZE"), env.get("CUDA_VISIBLE_DEVICES")))
    return found


def job_state(cluster: LocalCluster, job_id: str) -> str:
    return cluster.run("squeue", "-h", "--states=all", "-j", job_id, "-o", "%T", check=False).stdout.strip()


def iterations_done(log: Path) -> list[int]:
    text = log.read_text() if log.exists() else ""
    return [int(n) for n in re.findall(PROGRESS, text)]


def requeue(cluster: LocalCluster, job_id: str, log: Path, rec: dict) -> None:
    """Requeue a running job as Slurm's preemption does, then let it start again at once."""
    cluster.run("scontrol", "requeue", job_id)  # fails unless the job was submitted with --requeue
    states = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # killed, then pending again (or briefly REQUEUED, COMPLETING)
        state = job_state(cluster, job_id)
        if not states or states[-1] != state:
            states.append(state)
        if state not in ("RUNNING", "COMPLETING", "REQUEUED", ""):
            break
        time.sleep(0.1)
    # the killed job's last iteration (the requeued one truncates the log when it starts)
    rec.update(requeued=job_id, requeued_at=max(iterations_done(log)), requeue_states=states)
    # a requeued job is eligible only after about two minutes; that wait tests nothing here
    cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    """Run the target set through Slurm, requeue the warm-up job once mid-way, then run again."""
    work = tmp_path_factory.mktemp("slurm wf")  # a space: paths must survive sbatch and srun
    cfg = tiny_config()
    # a global batch every GPU rule of the profile can split (4 GPUs; batch 2 stops at parse time)
    cfg["train"] = dict(cfg["train"], batch_size=4)
    cfg["warmup"] = {"mode": "adversarial", "iterations": ITERATIONS, "checkpoint_every": EVERY, "log_every": 1}
    write_config(work, cfg)
    env = cluster.env(snakemake_env())
    log = work / f"logs/warmup/{CHAIN}.log"
    state = work / f"work/{CHAIN}/warmup/resume.pt"
    rec = {"work": work, "cfg": cfg, "ranks": set()}

    start = time.monotonic()
    proc = subprocess.Popen(slurm_cmd(work, TARGET), cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            rec["ranks"] |= training_ranks(work)
            done = iterations_done(log)
            if state.exists() and done and max(done) > EVERY:
                running = cluster.run("squeue", "-h", "-t", "RUNNING", "-o", "%i|%k").stdout.split()
                ids = [line.split("|")[0] for line in running if line.split("|")[1].startswith("rule_warmup")]
                if ids:
                    rec["ranks"] |= training_ranks(work)
                    requeue(cluster, ids[0], log, rec)
                    break
            time.sleep(0.05)
        out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Snakemake cancels its Slurm jobs on SIGINT
            proc.communicate(timeout=60)
    rec.update(first=proc.returncode, first_out=out, first_s=time.monotonic() - start,
               log=log.read_text() if log.exists() else "",
               jobs=jobs(cluster))

    start = time.monotonic()
    again = subprocess.run(slurm_cmd(work, TARGET), cwd=work, env=env, capture_output=True, text=True,
                           timeout=RUN_TIMEOUT + 90)
    rec.update(second=again.returncode, second_out=again.stdout + again.stderr, second_s=time.monotonic() - start,
               jobs_after=jobs(cluster))
    print(f"\nSlurm runs: first {rec['first_s']:.0f} s ({len(rec['jobs'])} jobs), second {rec['second_s']:.0f} s;"
          f" requeued job states {rec.get('requeue_states')}")
    return rec


def test_first_run_completes_through_sbatch(slurm_run):
    out = slurm_run["first_out"]
    assert slurm_run["first"] == 0, out[-5000:]
    assert "steps (100%) done" in out, out[-3000:]
    assert (slurm_run["work"] / TARGET).is_file()
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (.+?)\)", out)
    # each job submitted once: the requeued one came back under its own id, not as a new attempt
    assert sorted(j for j, _ in submitted) == sorted(slurm_run["jobs"]), "a job Slurm ran that Snakemake did not submit"
    assert "Error in rule" not in out and "Trying to restart" not in out, out[-3000:]
    for _, slurm_log in submitted:  # the plugin's per-job logs (slurm-keep-successful-logs)
        assert Path(slurm_log).is_file(), slurm_log


def test_every_job_got_the_resources_of_the_profile(slurm_run):
    profile = yaml.safe_load(PROFILE.joinpath("config.yaml").read_text())
    default, per_rule = profile["default-resources"], profile["set-resources"]
    jobs_ = slurm_run["jobs"]
    rules = sorted(rule_of(j) for j in jobs_.values())
    assert rules == sorted(["demo_gta5", "demo_cityscapes", "convert", "convert", "warmup", "evaluate"])
    for job_id, job in jobs_.items():
        rule = rule_of(job)
        want = {**default, **per_rule.get(rule, {})}
        assert job["Partition"] == "main", (rule, job)          # no partition in the profile: the default one
        assert job["NumTasks"] == "1", (rule, job)               # one task; torchrun makes the processes
        assert job["MinMemoryNode"] == f"{want['mem_mb']}M", (rule, job)
        assert job["TimeLimit"] == time_limit(want["runtime"]), (rule, job)
        if want.get("gpu"):
            assert job["TresPerJob"] == f"gres:gpu:{want['gpu']}", (rule, job)
            assert job["CpusPerTres"] == f"gres:gpu:{want['cpus_per_gpu']}", (rule, job)
            assert int(job["NumCPUs"]) == want["gpu"] * want["cpus_per_gpu"], (rule, job)
        else:
            assert "TresPerJob" not in job and "CpusPerTres" not in job, (rule, job)
        assert job["JobState"] == "COMPLETED", (rule, job)
        assert job["Requeue"] == "1", (rule, job)  # sbatch --requeue (slurm-requeue); the cluster's default is 0
        assert job["Restarts"] == ("1" if job_id == slurm_run.get("requeued") else "0"), (rule, job)
    assert per_rule["warmup"]["gpu"] == 2  # what the next test relies on


def test_two_gpu_training_job_ran_two_torchrun_processes(slurm_run):
    # the workers of `torchrun --nproc_per_node=2` inside the --gpus=2 job: ranks 0 and 1 of 2,
    # both seeing the job's two (pretend) GPUs
    assert slurm_run["ranks"] == {("0", "2", "0,1"), ("1", "2", "0,1")}, slurm_run["ranks"]


def test_requeued_training_job_ran_again_and_resumed_from_its_rolling_state(slurm_run):
    assert "requeued" in slurm_run, "the warm-up job was not caught mid-way"
    # Snakemake's squeue polling saw the job leave RUNNING and waited instead of failing it
    assert slurm_run["requeue_states"][-1] == "PENDING", slurm_run["requeue_states"]
    text = slurm_run["log"]  # the log of the job's second run
    m = re.search(r"resumed from (.+) at iteration (\d+)", text)
    assert m, text[-2000:]
    assert m.group(1).endswith(f"{CHAIN}/warmup/resume.pt")
    resumed_at = int(m.group(2))
    assert 0 < resumed_at <= slurm_run["requeued_at"] and resumed_at % EVERY == 0
    done = [int(n) for n in re.findall(PROGRESS, text)]
    assert min(done) == resumed_at + 1 and max(done) == ITERATIONS  # went on, did not start over
    work = slurm_run["work"]
    assert (work / f"results/{CHAIN}/warmup/model.pt").is_file()
    assert not (work / f"work/{CHAIN}/warmup/resume.pt").exists()  # cleared once the stage finished


def test_benchmark_file_of_every_job(slurm_run):
    work = slurm_run["work"]
    for rel in ("demo/gta5", "demo/cityscapes", "convert/gta5", "convert/cityscapes", f"warmup/{CHAIN}",
                f"evaluate/{CHAIN}/warmup"):
        lines = (work / "logs/benchmark" / f"{rel}.tsv").read_text().splitlines()
        assert lines[0].split("\t")[0] == "s" and len(lines) == 2, rel


def test_second_run_submits_nothing(slurm_run):
    assert slurm_run["second"] == 0, slurm_run["second_out"][-3000:]
    assert "Nothing to be done" in slurm_run["second_out"]
    assert slurm_run["jobs_after"].keys() == slurm_run["jobs"].keys()


def test_local_profile_has_nothing_to_do_after_the_cluster_run(slurm_run):
    proc = snakemake(slurm_run["work"], "--profile", str(ROOT / "profiles" / "default"), "-n", TARGET, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def failing_run(cluster, slurm_run):
    """Last, in the finished folder: the warm-up again, with a corrupt ImageNet weights file
    (a new input: only the warm-up is out of date).

    Snakemake only sees that the file exists; the job's own preflight cannot read it, so the
    job exits non-zero, the same way on every attempt."""
    work = slurm_run["work"]
    bad = work / "imagenet-corrupt.pth"
    bad.write_text("not a checkpoint\n")
    cfg = dict(slurm_run["cfg"], model=dict(slurm_run["cfg"]["model"], imagenet_weights=str(bad)))
    write_config(work, cfg)
    slurm_logs = work / ".snakemake/slurm_logs/rule_warmup"
    logs_before = set(slurm_logs.rglob("*.log"))
    jobs_before = jobs(cluster)
    proc = subprocess.run(slurm_cmd(work, f"results/{CHAIN}/warmup/model.pt"), cwd=work,
                          env=cluster.env(snakemake_env()), capture_output=True, text=True, timeout=RUN_TIMEOUT + 90)
    jobs_now = jobs(cluster)
    return {"work": work, "bad": bad, "rc": proc.returncode, "out": proc.stdout + proc.stderr,
            "new_jobs": {i: j for i, j in jobs_now.items() if i not in jobs_before},
            "new_slurm_logs": set(slurm_logs.rglob("*.log")) - logs_before}


def test_deterministic_failure_is_submitted_once_and_stops_with_its_error(failing_run):
    out = failing_run["out"]
    assert failing_run["rc"] != 0, out[-3000:]
    new = failing_run["new_jobs"]
    assert [rule_of(j) for j in new.values()] == ["warmup"], new    # one submission, no retry
    (job,) = new.values()
    assert job["JobState"] == "FAILED" and job["Restarts"] == "0", job  # nor requeued by Slurm
    assert len(re.findall(r"has been submitted with SLURM jobid", out)) == 1, out[-3000:]
    assert len(failing_run["new_slurm_logs"]) == 1, failing_run["new_slurm_logs"]
    assert "Trying to restart" not in out
    # the job's one-line error, printed by Snakemake (show-failed-logs) and in the job's log
    error = f"{failing_run['bad']}: cannot be read by torch.load(weights_only=True)"
    assert error in out, out[-3000:]
    log = (failing_run["work"] / f"logs/warmup/{CHAIN}.log").read_text()
    # once (rank 0's; the other rank exits silently). torchrun's own report of the failed
    # worker follows it in the log
    assert log.count(error) == 1, log[-2000:]
    assert not (failing_run["work"] / f"results/{CHAIN}/warmup/model.pt").exists()

#!/usr/bin/env python3
"""A real single-node Slurm cluster on this machine: for the Slurm integration test, and for
trying `snakemake --profile profiles/slurm` by hand.

    python tests/slurm_cluster.py up [--dir DIR]    # then sbatch, squeue, snakemake --profile profiles/slurm
    python tests/slurm_cluster.py status [--dir DIR]
    python tests/slurm_cluster.py down [--dir DIR]

What it does (reference: Debian bookworm, Slurm 22.05, munge 0.5; needs root):

* installs `slurmctld slurmd slurm-client munge` with apt-get when they are missing;
* writes slurm.conf and gres.conf into its own folder (DIR, default /tmp/dass-slurm; the test
  uses a temporary one); clients find the cluster through SLURM_CONF, and /etc/slurm/slurm.conf
  becomes a link to it while the cluster runs, because the Snakemake job step strips SLURM_*
  variables before its `srun` (it refuses to start if that file is someone else's);
* one node `localhost` (127.0.0.1) in one partition `main`, on free TCP ports, without
  accounting (no slurmdbd: `sacct` does not work, use `squeue`/`scontrol show job`);
* jobs are requeueable (`scontrol requeue`, preemption, node failure) only when submitted
  with `sbatch --requeue` (JobRequeue=0); a requeued job is eligible again after Slurm's own
  delay of about two minutes (`scontrol update JobId=<id> StartTime=now` skips it);
* the node declares more than this machine has (16 CPUs, 64 GB, 4 GPUs by default, with
  SlurmdParameters=config_overrides) so that every job of profiles/slurm can be scheduled:
  the cluster checks what jobs ask for and runs them, it does not measure speed;
* pretend GPUs: character devices made with mknod (the numbers of /dev/null) listed in
  gres.conf, so that a `--gpus=2` job gets CUDA_VISIBLE_DEVICES=0,1 as on a GPU node (torch
  still finds no CUDA device and runs on the CPU);
* starts munged as the munge user (unless a working munged is already there: then it is left
  alone), slurmctld, then `slurmd -N localhost`, each in the foreground as a child process
  (so its pid is known exactly), and waits until the node is `idle`;
* stops only what it started, by pid: first it cancels the jobs of its own cluster, then
  slurmd, slurmctld and (if it started it) munged. The pids are kept in DIR/cluster.json so
  that `down` from another process stops the same ones.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
SBIN = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin"))
DEFAULT_DIR = Path("/tmp/dass-slurm")
MUNGE_RUN = Path("/run/munge")
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
CONF_HEADER = "# Written by tests/slurm_cluster.py"


class Unavailable(RuntimeError):
    """This machine cannot run a local Slurm cluster (not root, no apt, install failed)."""


def _which(name: str) -> str | None:
    return shutil.which(name, path=SBIN)


def missing_binaries() -> list[str]:
    return [b for b in ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "munged", "munge", "unmunge")
            if _which(b) is None]


def ensure_installed(log=print) -> None:
    """Install the Debian packages when a binary is missing; Unavailable (one line) if impossible."""
    if not missing_binaries():
        return
    if os.geteuid() != 0:
        raise Unavailable(f"Slurm is not installed ({', '.join(missing_binaries())} missing) and installing needs root")
    apt = _which("apt-get")
    if apt is None:
        raise Unavailable("Slurm is not installed and there is no apt-get to install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # wait for another apt/dpkg instead of failing on its lock
    install = [apt, "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    log(f"installing {' '.join(PACKAGES)} with apt-get")
    proc = subprocess.run(install, env=env, capture_output=True, text=True)
    if proc.returncode != 0:  # stale or missing package lists: update once, then retry
        subprocess.run([apt, "-o", "DPkg::Lock::Timeout=300", "update", "-q"], env=env, capture_output=True, text=True)
        proc = subprocess.run(install, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or missing_binaries():
        last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["?"])[-1]
        raise Unavailable(f"apt-get could not install Slurm: {last}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _running(state_file: Path) -> bool:
    """Whether a cluster whose state is in ``state_file`` still has a live daemon."""
    try:
        started = json.loads(state_file.read_text()).get("started", [])
    except (OSError, ValueError):
        return False
    return any(_alive(s["pid"]) and s["name"] in _cmdline(s["pid"]) for s in started)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class LocalCluster:
    """One slurmctld + one slurmd (+ munged if none runs) with their files under ``root``."""

    def __init__(self, root: Path = DEFAULT_DIR, cpus: int = 16, memory_mb: int = 65536, gpus: int = 4):
        self.root = Path(root).resolve()
        self.cpus, self.memory_mb, self.gpus = cpus, memory_mb, gpus
        self.conf = self.root / "etc" / "slurm.conf"
        self.state_file = self.root / "cluster.json"
        self.started: list[dict] = []   # {"name", "pid"} in start order
        self.linked = False              # /etc/slurm/slurm.conf is our link
        self._procs: dict[int, subprocess.Popen] = {}

    # -- what clients need -------------------------------------------------------------
    def env(self, base: dict | None = None) -> dict:
        """An environment whose Slurm commands (and Snakemake's plugin) talk to this cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = env.get("PATH", "") + os.pathsep + "/usr/sbin"
        return env

    def run(self, *cmd: str, check: bool = True, timeout: int = 30) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env(), capture_output=True, text=True, check=check, timeout=timeout)

    def node_state(self) -> str:
        proc = self.run("sinfo", "-h", "-N", "-n", "localhost", "-o", "%t", check=False, timeout=15)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def job_ids(self) -> list[str]:
        proc = self.run("squeue", "-h", "-o", "%i", check=False, timeout=15)
        return proc.stdout.split() if proc.returncode == 0 else []

    # -- files -------------------------------------------------------------------------
    def write_config(self) -> None:
        for sub in ("etc", "state", "spool", "log", "dev"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(self.gpus):
            dev = self.root / "dev" / f"fakegpu{i}"
            if not (dev.exists() and stat.S_ISCHR(dev.stat().st_mode)):
                dev.unlink(missing_ok=True)
                os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
        r = self.root
        self.conf.write_text(f"""\
{CONF_HEADER}: a single-node cluster for tests; see that file.
ClusterName=dasstest
SlurmctldHost=localhost
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
# the node below declares more than this machine has; slurmd accepts it with this
SlurmdParameters=config_overrides
# without it a job that names no memory takes the whole node
DefMemPerCPU=500
# finished jobs stay visible to squeue and `scontrol show job` for an hour
MinJobAge=3600
# jobs are not requeueable unless submitted with `sbatch --requeue` (as on many clusters)
JobRequeue=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} Boards=1 SocketsPerBoard=1 CoresPerSocket={self.cpus} \
ThreadsPerCore=1 RealMemory={self.memory_mb} Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
        last = self.gpus - 1
        files = f"{r}/dev/fakegpu[0-{last}]" if self.gpus > 1 else f"{r}/dev/fakegpu0"
        (self.conf.parent / "gres.conf").write_text(f"NodeName=localhost Name=gpu File={files}\n")

    def _save_state(self) -> None:
        self.state_file.write_text(json.dumps({"slurm_conf": str(self.conf), "started": self.started,
                                               "linked": self.linked}, indent=1))

    def _link_system_conf(self) -> None:
        """/etc/slurm/slurm.conf -> our slurm.conf (srun inside a Snakemake job finds no SLURM_CONF)."""
        if SYSTEM_CONF.is_symlink():
            target = Path(os.readlink(SYSTEM_CONF))
            try:
                ours = target.read_text().startswith(CONF_HEADER)
            except OSError:
                ours = target.name == "slurm.conf"  # dangling: a cluster of ours whose folder is gone
            if not ours:
                raise Unavailable(f"{SYSTEM_CONF} belongs to another Slurm installation; not replacing it")
            if target != self.conf and _running(target.parent.parent / "cluster.json"):
                raise Unavailable(f"{SYSTEM_CONF} belongs to another running test cluster ({target})")
            SYSTEM_CONF.unlink()
        elif SYSTEM_CONF.exists():
            raise Unavailable(f"{SYSTEM_CONF} belongs to another Slurm installation; not replacing it")
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.symlink_to(self.conf)
        self.linked = True
        self._save_state()

    def _unlink_system_conf(self) -> None:
        if self.linked and SYSTEM_CONF.is_symlink() and Path(os.readlink(SYSTEM_CONF)) == self.conf:
            SYSTEM_CONF.unlink()
        self.linked = False

    # -- daemons -----------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], **kw) -> int:
        out = open(self.root / "log" / f"{name}.out", "ab")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, **kw)
        out.close()
        self._procs[proc.pid] = proc
        self.started.append({"name": name, "pid": proc.pid})
        self._save_state()
        return proc.pid

    def _munge_works(self) -> bool:
        if not MUNGE_RUN.joinpath("munge.socket.2").exists():
            return False
        try:
            cred = subprocess.run([_which("munge"), "-n"], capture_output=True, timeout=10)
            return cred.returncode == 0 and subprocess.run(
                [_which("unmunge")], input=cred.stdout, capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def _start_munge(self) -> None:
        if self._munge_works():
            return  # someone else's munged: use it, never stop it
        import pwd
        munge = pwd.getpwnam("munge")
        MUNGE_RUN.mkdir(parents=True, exist_ok=True)
        os.chown(MUNGE_RUN, munge.pw_uid, munge.pw_gid)
        os.chmod(MUNGE_RUN, 0o755)
        # as the munge user: started as root, munged refuses its log file as insecure
        self._spawn("munged", [_which("munged"), "--foreground", "--force"], user=munge.pw_uid, group=munge.pw_gid,
                    extra_groups=[])
        self._wait(self._munge_works, 20, "munged did not answer (munge -n | unmunge)")

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            dead = [s["name"] for s in self.started if not _alive(s["pid"])]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting: {what}\n{self.logs()}")
            time.sleep(0.3)
        raise RuntimeError(f"timed out: {what}\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munged.out", "slurmctld.out", "slurmd.out"):
            path = self.root / "log" / name
            if path.exists():
                parts.append(f"--- {path}\n{_tail(path)}")
        return "\n".join(parts)

    def start(self, timeout: float = 90) -> LocalCluster:
        if _running(self.state_file):
            raise RuntimeError(f"a cluster from {self.root} is still running; stop it first (down --dir {self.root})")
        ensure_installed()
        self.write_config()
        self._link_system_conf()
        try:
            self._start_munge()
            conf = str(self.conf)
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-f", conf], env=self.env())
            self._spawn("slurmd", [_which("slurmd"), "-D", "-N", "localhost", "-f", conf], env=self.env())
            # just after a start the node is `unk` for a moment; a job submitted then waits ~30 s
            self._wait(lambda: self.node_state() == "idle", timeout, "node `localhost` to become idle")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 20) -> None:
        """Cancel this cluster's jobs, then stop the daemons this object started (by pid)."""
        if not self.started and self.state_file.exists():
            saved = json.loads(self.state_file.read_text())
            self.started, self.linked = saved.get("started", []), saved.get("linked", False)
        names = {s["name"] for s in self.started if _alive(s["pid"])}
        if {"slurmctld", "slurmd"} <= names:
            ids = self.job_ids()
            if ids:
                self.run("scancel", *ids, check=False)
                deadline = time.monotonic() + timeout
                while self.job_ids() and time.monotonic() < deadline:
                    time.sleep(0.5)
        order = {"slurmd": 0, "slurmctld": 1, "munged": 2}
        for entry in sorted(self.started, key=lambda s: order.get(s["name"], 9)):
            self._stop_pid(entry["name"], entry["pid"], timeout)
        self.started = []
        self._unlink_system_conf()
        self._save_state()

    def _stop_pid(self, name: str, pid: int, timeout: float) -> None:
        proc = self._procs.pop(pid, None)
        if not _alive(pid) or (proc is None and name not in _cmdline(pid)):
            if proc is not None:
                proc.wait()
            return  # gone, or the pid now belongs to another program
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        if proc is not None:
            proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="A local single-node Slurm cluster (see the module doc).")
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"its folder (default {DEFAULT_DIR})")
    p.add_argument("--cpus", type=int, default=16)
    p.add_argument("--memory-mb", type=int, default=65536)
    p.add_argument("--gpus", type=int, default=4, help="pretend GPUs of the node")
    a = p.parse_args(argv)
    cluster = LocalCluster(a.dir, cpus=a.cpus, memory_mb=a.memory_mb, gpus=a.gpus)
    try:
        if a.action == "up":
            cluster.start()
            print(f"Slurm is up (node localhost: {a.cpus} CPUs, {a.memory_mb} MB, {a.gpus} pretend GPUs).")
            print(f"Slurm commands find it through {SYSTEM_CONF} -> {cluster.conf} (or SLURM_CONF). Try:")
            print("  snakemake --profile profiles/slurm")
            print(f"then stop it with: python {sys.argv[0]} down --dir {a.dir}")
        elif a.action == "down":
            cluster.stop()
            print("Slurm is down.")
        else:
            print(cluster.run("sinfo", check=False).stdout or "not running")
            print(cluster.run("squeue", check=False).stdout)
    except Unavailable as err:
        print(f"unavailable: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

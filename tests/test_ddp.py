"""Data-parallel training gives the single-process result: one process with the global batch B
and two gloo processes (CPU) with B/2 each take the same steps, for the adversarial warm-up,
ProDA stage 1, CPSL stage 1, distillation and SimCLR, with BatchNorm in training mode (global
statistics), active dropout, the EMA teacher, moving prototypes, and CPSL's learnt prototypes,
their EMA and its feature memory (all-gathered entries, Sinkhorn over the global batch, pixel
sampling, CutMix and the contrast against the memory). Plus the sharding of the loader and the
one-line error of a batch the processes do not divide.

How the runs are compared (why this holds on any x86 CPU). One process and two processes do
not compute the same floats: the gradient all-reduce, BatchNorm's global statistics and the
global normalisers sum in another order, which changes the step by float rounding (a few 1e-6
of the update here). Two runs left to themselves amplify that: the tiny networks are far from
converged, and a rounding-level change can also flip a near-tie of a discrete decision (the
argmax of a rectified pseudo-label, a pixel of a 128-pixel crop), after which the runs differ
by ~1e-2 of an update. Tolerances on a free-running comparison therefore sit at the edge of
rounding and pass or fail with the machine and the option values (``distillation: 0`` did).

So every step is compared on its own, from the same state ("teacher forcing"): the single
process runs ITERS steps and keeps its rolling state after each one; the two processes start
from scratch for step 1 and then, for every later step k, resume from the single process's
state of step k - 1 (written as their own resume state) and run exactly step k. After one step
from identical states the only difference left is that step's rounding, which cannot grow, so
every tensor of the state (model, optimiser, teacher, prototypes, memory, the discriminator's
optimiser) and the final output must agree within

    RTOL_STEP * (largest change of that tensor in one step)
        + ULPS * eps32 * (max|tensor| + largest change of any tensor of its part in one step)

Measured on 2 cores: the rounding of a step is 1e-6 to 1e-5 of the step, and up to 1.6e-2 of it
where a near-tie flips a discrete choice (e.g. a max-pool window or a ReLU at zero routing one
pixel's gradient elsewhere; seen in distillation with ``distillation: 0``). RTOL_STEP = 5e-2 sits above
that and more than 10x below what a real error does: a rank training on rank 0's slice, a
normaliser counted on one rank or a gather that drops a rank's part changed the first step by
0.6 to 2 times the step itself (a gather error in the prototypes or the memory also makes the
ranks diverge, which the loops' end-of-run check reports). Every step also resumes under DDP
(the single process's state read by both ranks, logged once by rank 0).
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_convert import make_gta5

from segcore import config as C
from segcore.atomic import save_torch
from segcore.data.convert import convert_dataset
from segcore.data.datasets import SegmentationDataset, infinite_loader
from segcore.data.lab_transfer import compute_lab_stats, write_lab_stats
from segcore.models.checkpoint import save_model
from segcore.models.deeplabv2 import build_deeplabv2
from segcore.pseudo.class_distribution import argmax_counts, write_class_distribution
from segcore.pseudo.store import HardWriter, SoftStore, SoftWriter
from segcore.train import common, cpsl_stage1, distill_loop, proda_stage1, simclr_loop, source_loop
from segcore.train import distributed as D

ROOT = Path(__file__).resolve().parents[1]
NC, BATCH, ITERS = 19, 4, 3
SIZE = (48, 24)  # (W, H) of the tiny images
TINY = {"batch_size": BATCH, "crop": [32, 16], "base_width": 48, "iterations": ITERS, "checkpoint_every": 1,
        "log_every": 1}
RTOL_STEP, ULPS = 5e-2, 64
EPS32 = float(torch.finfo(torch.float32).eps)


# ----------------------------------------------------------------------------- jobs

class Stop(Exception):
    """Raised on every rank right after the rolling state of the wanted iteration was written."""


def _options(stage: str, **extra) -> dict:
    cfg = C.load_config_file(ROOT / "config.yaml")
    C.validate(cfg)
    return dict(C.stage_options(cfg, stage), **TINY, **extra)


def make_jobs(data: Path, out: Path) -> dict:
    """One job per loop, writing under ``out`` (one folder per process count)."""
    spec = {"manifest": str(data / "data" / "manifest.csv"), "split": "train", "resize": None}
    jobs = {
        "warmup": source_loop.SupervisedJob(
            mode="adversarial", labelled=spec, unlabelled=spec, num_classes=NC, arch="small",
            options=_options("warmup", lr=0.01, adv_weight=0.1, disc_lr=1e-3), seed=5,
            out=str(out / "warmup.pt"), workdir=str(out / "work_warmup"), device="cpu"),
        "stage1": proda_stage1.Stage1Job(
            source=spec, target=spec, num_classes=NC,
            options=_options("proda.stage1", lr=0.01, proto_momentum=0.05, ema_momentum=0.9, regular_w=0.1),
            seed=6, init=str(data / "init.pt"), prototypes=str(data / "protos.pt"), soft_labels=str(data / "soft.h5"),
            out=str(out / "stage1.pt"), workdir=str(out / "work_stage1"), device="cpu"),
        # 4 images x 8 of the 28 pixels at stride 8 per step: the memory of 64 is full after 2
        # steps, so step 3 uses it in Sinkhorn and, without CutMix, in
        # the contrast (weighted up from the official 0.001 so that it matters here)
        "cpsl": cpsl_stage1.CPSLStage1Job(
            source=spec, target=spec, num_classes=NC,
            options=_options("cpsl.stage1", lr=1e-3, ema_momentum=0.9, proto_ema_momentum=0.9, samples_per_image=8,
                             queue_length=64, cutmix_p=0.5, contrast_lambda=0.1),
            seed=5,  # CutMix at step 2, the contrast at step 3
            init=str(data / "init.pt"), prototypes=str(data / "protos.pt"), soft_labels=str(data / "soft_full.h5"),
            class_distribution=str(data / "cd.json"), out=str(out / "cpsl.pt"),
            out_prototypes=str(out / "cpsl_protos.pt"), workdir=str(out / "work_cpsl"), device="cpu",
            lab_stats=str(data / "lab_stats.json")),
        "distill": distill_loop.DistillJob(
            source=spec, target=spec, num_classes=NC, arch="small", options=_options("proda.stage2", lr=0.002,
                                                                                        threshold=0.5),
            seed=7, teacher=str(data / "teacher.pt"), hard_labels=str(data / "hard.h5"),
            student_init=str(data / "init_clr.pt"), init_kind="checkpoint", stage="proda_stage3",
            out=str(out / "distill.pt"), workdir=str(out / "work_distill"), device="cpu"),
        "simclr": simclr_loop.SimCLRJob(
            images=[spec], arch="small", num_classes=NC, seed=8, out=str(out / "simclr.pt"),
            workdir=str(out / "work_simclr"), device="cpu",
            options={"iterations": ITERS, "batch_size": BATCH, "crop": [32, 16], "checkpoint_every": 1,
                     "log_every": 1, "optimizer": "sgd", "lr": 1e-5, "warmup": 0.0}),
    }
    return jobs


# Learning rates: small enough that the tiny runs take ordinary steps (an untrained net's SimCLR
# gradients at batch 4 have norms of ~500, hence SGD at 1e-5; prototypes that collapse onto the
# features make the sqrt of the distances ill-conditioned, hence proto_momentum 0.05). With the
# step-by-step comparison below the tolerance no longer depends on them.
MODULES = {"warmup": source_loop, "stage1": proda_stage1, "cpsl": cpsl_stage1, "distill": distill_loop,
           "simclr": simclr_loop}
OUTPUTS = {"warmup": ("warmup.pt", "model"), "stage1": ("stage1.pt", "model"), "cpsl": ("cpsl.pt", "model"),
           "distill": ("distill.pt", "model"), "simclr": ("simclr.pt", "state_dict")}
WORK = {"warmup": "work_warmup", "stage1": "work_stage1", "cpsl": "work_cpsl", "distill": "work_distill",
        "simclr": "work_simclr"}


def run_until(name: str, job, log, stop_at: int | None = None) -> None:
    """Run ``job``; with ``stop_at``, stop on every rank right after the rolling state of that
    iteration was written; after every iteration rank 0 keeps that state as ``state_<i>.pt``."""
    module, work = MODULES[name], Path(job.workdir)

    def after(done, *_):
        if D.is_main() and done < ITERS:
            shutil.copy(work / "resume.pt", work / f"state_{done}.pt")
        if done == stop_at:
            raise Stop

    if "on_iteration" in inspect.signature(module.run).parameters:
        run = lambda: module.run(job, log=log, on_iteration=after)  # noqa: E731
    else:  # loops without the hook: through their snapshot function
        real = module.snapshot

        def snapshot(state, iteration, parts):
            real(state, iteration, parts)
            after(iteration)

        module.snapshot, run = snapshot, lambda: module.run(job, log=log)  # noqa: E731
    try:
        run()
        assert stop_at is None, f"{name}: did not stop at {stop_at}"
    except Stop:
        pass
    finally:
        if "on_iteration" not in inspect.signature(module.run).parameters:
            module.snapshot = real


def run_step_by_step(name: str, job, one: Path, log) -> None:
    """Two processes: step 1 from scratch, then every step k from the single process's state of
    step k - 1 (under this run's own fingerprint), to the final output."""
    work = Path(job.workdir)
    run_until(name, job, log, stop_at=1)
    D.barrier()
    fp = load(work / "resume.pt")["fingerprint"] if D.is_main() else None
    for k in range(2, ITERS + 1):
        if D.is_main():
            state = load(one / WORK[name] / f"state_{k - 1}.pt")
            state["fingerprint"] = fp
            save_torch(work / "resume.pt", state)
        D.barrier()
        run_until(name, job, log, stop_at=k if k < ITERS else None)
        D.barrier()


def _worker(rank: int, world: int, port: int, data: str, one: str, out: str, names: list) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    D.init(device="cpu")
    try:
        assert D.world_size() == world and D.rank() == rank
        torch.manual_seed(123)  # per-sample draws of the global batch: the single-process ones
        part = D.global_rand((2, 5))
        torch.manual_seed(123)
        assert torch.equal(D.all_gather_cat(part), torch.rand(2 * world, 5))
        jobs = make_jobs(Path(data), Path(out))
        lines = []
        for name in names:
            run_step_by_step(name, jobs[name], Path(one), lines.append)
        if D.is_main():
            (Path(out) / "log.txt").write_text("\n".join(lines))
    finally:
        D.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("ddp_data")
    make_gta5(base / "raw", n=8, size=SIZE)
    convert_dataset("gta5", base / "raw", base / "data", workers=1, progress=False)
    keys = [ln.split(",")[0] for ln in (base / "data" / "manifest.csv").read_text().splitlines()[1:]]
    torch.manual_seed(0)
    meta = {"arch": "small", "num_classes": NC, "bn_clr": False}
    save_model(base / "init.pt", build_deeplabv2(NC, "small"), meta)
    save_model(base / "init_clr.pt", build_deeplabv2(NC, "small", bn_clr=True), dict(meta, bn_clr=True))
    teacher = build_deeplabv2(NC, "small")
    with torch.no_grad():  # a teacher with some opinion (the official init is nearly uniform)
        teacher.layer5.head[1].weight.normal_(0.0, 1.0)
    save_model(base / "teacher.pt", teacher, meta)
    torch.save({"protos": torch.randn(NC, 64) * 0.05}, base / "protos.pt")
    g = torch.Generator().manual_seed(1)
    with SoftWriter(base / "soft.h5", keys, NC, (3, 6)) as w:
        for i in range(len(keys)):
            w.write(i, torch.softmax(torch.randn(NC, 3, 6, generator=g) * 3, dim=0))
    # CPSL keeps the soft labels of the full image too: at the model's output grid of the image
    with torch.no_grad():
        hw = tuple(build_deeplabv2(NC, "small").eval()(torch.zeros(1, 3, SIZE[1], SIZE[0]))["out"].shape[-2:])
    with SoftWriter(base / "soft_full.h5", keys, NC, hw) as w:
        for i in range(len(keys)):
            w.write(i, torch.softmax(torch.randn(NC, *hw, generator=g) * 3, dim=0))
    with SoftStore(base / "soft_full.h5") as store:  # CPSL's class prior
        write_class_distribution(base / "cd.json", argmax_counts(store))
    images = SegmentationDataset(base / "data" / "manifest.csv", "train", NC, with_labels=False)
    write_lab_stats(base / "lab_stats.json", keys, compute_lab_stats(images), source={})  # CPSL's colour transfer
    rng = np.random.default_rng(2)
    with HardWriter(base / "hard.h5", keys, (SIZE[1], SIZE[0]), num_classes=NC, conf_encoding="float16") as w:
        for i in range(len(keys)):
            w.write(i, rng.integers(0, NC, (SIZE[1], SIZE[0])).astype(np.uint8),
                    rng.random((SIZE[1], SIZE[0])).astype(np.float32))
    return base


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """Every loop with one process (here, its state kept after every step) and step by step with
    two spawned gloo processes."""
    names = list(MODULES)
    one = tmp_path_factory.mktemp("one")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    lines = []
    try:
        jobs = make_jobs(data, one)
        for name in names:
            run_until(name, jobs[name], lines.append)
    finally:
        torch.set_num_threads(threads)
    (one / "log.txt").write_text("\n".join(lines))
    two = tmp_path_factory.mktemp("two")
    mp.spawn(_worker, args=(2, _free_port(), str(data), str(one), str(two), names), nprocs=2, join=True)
    return one, two


# ----------------------------------------------------------------------------- checks

def _flat(obj, prefix=""):
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flat(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _flat(v, f"{prefix}[{i}]")


# Adam's step is m / sqrt(v) per element: rounding of a gradient element near zero becomes a
# step of up to +-lr, whatever the tolerance. The warm-up's discriminator (Adam) is therefore
# checked through its optimiser's moments (linear in the gradient and its square, in ``d_opt``),
# not through its weights; every other part uses SGD.
SKIP = ("rng", "fingerprint", "history", "validations", "disc.")


def _floats(state: dict, skip=SKIP) -> dict:
    return {k: v for k, v in _flat(state) if not k.startswith(skip)}


def step_sizes(states: list) -> dict:
    """Per tensor: the largest change from one state to the next (float64)."""
    flats = [_floats(s) for s in states]
    out = {}
    for k, x in flats[0].items():
        if x.is_floating_point():
            out[k] = max(float((b[k].double() - a[k].double()).abs().max()) if x.numel() else 0.0
                         for a, b in zip(flats, flats[1:]))
    return out


def assert_step_close(a: dict, b: dict, sizes: dict, what: str) -> float:
    """``b`` (two processes) within one step's rounding of ``a`` (one process): every float
    tensor within RTOL_STEP of its largest one-step change plus ULPS float32 ulps of its scale
    and of its part's largest step, the rest equal. Returns the largest difference in units of the step size."""
    fa, fb = _floats(a), _floats(b)
    assert fa.keys() == fb.keys(), what
    part_step = {}
    for k, v in sizes.items():
        part_step[k.split(".", 1)[0]] = max(part_step.get(k.split(".", 1)[0], 0.0), v)
    worst = 0.0
    for k in fa:
        x, y = fa[k], fb[k]
        assert x.shape == y.shape and x.dtype == y.dtype, f"{what}: {k}"
        if x.is_floating_point() and x.numel():
            diff = float((x.double() - y.double()).abs().max())
            scale = float(x.double().abs().max())
            step = sizes.get(k, 0.0)
            # + ulps of the part's largest step: an element whose exact gradient is 0 (a bias
            # before a BatchNorm) moves by the rounding of the others' terms
            bound = RTOL_STEP * step + ULPS * EPS32 * (scale + part_step.get(k.split(".", 1)[0], 0.0))
            assert diff <= bound, (f"{what}: {k}: max difference {diff:.3g}, allowed {bound:.3g} "
                                   f"(one step changes it by up to {step:.3g}, scale {scale:.3g})")
            worst = max(worst, diff / step if step else 0.0)
        elif not x.is_floating_point():
            assert torch.equal(x, y), f"{what}: {k}"
    return worst


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def one_process_states(one: Path, name: str) -> list:
    return [load(one / WORK[name] / f"state_{k}.pt") for k in range(1, ITERS)]


@pytest.mark.parametrize("name", list(MODULES))
def test_two_processes_match_one(runs, data, name):
    one, two = runs
    work = WORK[name]
    states = one_process_states(one, name)
    sizes = step_sizes(states)
    for k in range(1, ITERS):  # the rolling states (model, optimiser, teacher, prototypes, disc, ...)
        sb = load(two / work / f"state_{k}.pt")
        assert states[k - 1]["iteration"] == sb["iteration"] == k
        assert_step_close(states[k - 1], sb, sizes, f"{name} step {k}")
    # the last step: the declared output written by rank 0, against the single process's
    file, key = OUTPUTS[name]
    a, b = load(one / file)[key], load(two / file)[key]
    part = "net" if name == "simclr" else "model"  # the trained network's part in the state
    inner = "backbone." if name == "simclr" else ""  # SimCLR writes the backbone only
    last = {f"out.{k}": sizes.get(f"{part}.{inner}{k}", 0.0) for k in _floats(a)}
    assert_step_close({"out": a}, {"out": b}, last, f"{name} step {ITERS}")
    # the steps did something the comparison can see: the weights moved by far more than the bound
    assert max(v for k, v in sizes.items() if k.startswith(f"{part}.")) > 1e-5, name
    if name == "stage1":
        assert {"teacher", "prototypes"} <= set(states[0])
        assert not torch.equal(states[0]["prototypes"]["protos"], load(data / "protos.pt")["protos"])
    if name == "cpsl":  # the memory (full after step 2) and the learnt prototypes are in the state
        assert int(states[1]["memory"]["count"]) == 64 and {"teacher", "prototypes"} <= set(states[0])
    # every later step of the two processes resumed from a state, logged once (rank 0); cleared at the end
    log = (two / "log.txt").read_text()
    for k in range(1, ITERS):
        assert log.count(f"{work}/resume.pt at iteration {k}") == 1, (name, k)
    for folder in (one, two):
        assert not (folder / work / "resume.pt").exists()
    assert log.count(f"it {ITERS}/{ITERS}") == len(MODULES)


def test_cpsl_prototypes_and_memory_match(runs, data):
    """CPSL: the learnt prototypes P and their EMA P' written by rank 0 are the single process's
    (within the last step's rounding), they moved, and the contrast against the memory ran in
    both runs."""
    one, two = runs
    a, b = load(one / "cpsl_protos.pt"), load(two / "cpsl_protos.pt")
    sizes = step_sizes(one_process_states(one, "cpsl"))
    assert_step_close(a, b, {"protos": sizes["prototypes.weight"], "protos_ema": sizes["prototypes.ema"]},
                      "cpsl prototypes")
    start = torch.nn.functional.normalize(load(data / "protos.pt")["protos"], dim=1)
    for key in ("protos", "protos_ema"):
        assert float((a[key] - start).abs().max()) > 1e-4, key
    for folder in (one, two):
        assert " con " in (folder / "log.txt").read_text()


def test_logged_losses_are_global(runs):
    """Rank 0 prints the losses of the global batch (averaged over ranks with global counts)."""
    one, two = runs

    def values(folder):
        out = []
        for line in (folder / "log.txt").read_text().splitlines():
            if "it " in line and "/" in line and (" | " in line or line.startswith("it ")):
                fields = (line.split(" | ", 1)[1] if " | " in line else line.split("(")[0]).split()
                names = [i for i in range(len(fields) - 1) if not _number(fields[i]) and _number(fields[i + 1])]
                out.append([float(fields[i + 1]) for i in names if fields[i] not in ("lr", "it")])
        return out

    a, b = values(one), values(two)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        np.testing.assert_allclose(y, x, rtol=2e-3, atol=2e-4)  # 4 printed decimals


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------------- units

def test_rank_shards_are_the_single_process_batch(data):
    ds = SegmentationDataset(data / "data" / "manifest.csv", "train", NC, with_labels=False)
    whole = infinite_loader(ds, 4, seed=3, start=1)
    halves = [infinite_loader(ds, 4, seed=3, start=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):  # across an epoch boundary (8 images, 2 batches per epoch)
        batch = next(whole)
        parts = [next(h) for h in halves]
        assert torch.equal(torch.cat([p["index"] for p in parts]), batch["index"])
        assert torch.equal(torch.cat([p["image"] for p in parts]), batch["image"])


def test_batch_not_divisible_is_one_line_error(monkeypatch, data):
    monkeypatch.setattr(D, "_CTX", D.Context(rank=1, world_size=3, local_world_size=3))
    with pytest.raises(ValueError) as err:
        D.local_batch(4)
    assert "batch_size 4 is not divisible by the number of processes 3" in str(err.value)
    assert "\n" not in str(err.value)
    job = make_jobs(data, data / "unused")["warmup"]
    with pytest.raises(ValueError, match="not divisible"):
        source_loop.run(job)
    assert D.rank_slice(6) == slice(2, 4) and D.threads_per_rank(8) == 2


def test_one_process_helpers_are_identities():
    assert not D.active() and D.is_main() and D.world_size() == 1
    t = torch.randn(3, requires_grad=True)
    assert D.all_gather_cat(t) is t and D.sum_over_ranks(t) is t and D.all_reduce_sum(t) is t
    assert torch.equal(D.global_mean(torch.tensor(6.0), torch.tensor(0), min_count=1), torch.tensor(6.0))
    model = build_deeplabv2(NC, "small")
    assert D.prepare_model(model) is model
    assert type(model.bn1) is torch.nn.BatchNorm2d
    acc = common.Accel.from_options({"amp": True, "channels_last": True}, "cpu")
    assert not acc.amp and not acc.channels_last  # CUDA-only switches are no-ops on the CPU


def test_jobs_are_plain_dataclasses(data):
    for job in make_jobs(data, data / "x").values():
        assert dataclasses.is_dataclass(job) and copy.deepcopy(job) == job

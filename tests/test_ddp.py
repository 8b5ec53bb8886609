"""Data-parallel training gives the single-process result: one process with the global batch B
and two gloo processes (CPU) with B/2 each end with the same parameters (float tolerance) for
the adversarial warm-up, ProDA stage 1, CPSL stage 1, distillation and SimCLR, with BatchNorm in
training mode (global statistics), active dropout, the EMA teacher, moving prototypes, and CPSL's
learnt prototypes, their EMA and its feature memory (all-gathered entries, Sinkhorn over the
global batch, pixel sampling, CutMix and the contrast against the memory). Each loop is
stopped right after its rolling state of iteration 2 (the states are compared too: model,
optimiser, teacher, prototypes, memory) and resumed under the same process count to the end.
Plus the sharding of the loader and the one-line error of a batch the processes do not divide.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from segcore import config as C
from segcore.data.convert import convert_dataset
from segcore.data.datasets import SegmentationDataset, infinite_loader
from segcore.models.checkpoint import save_model
from segcore.models.deeplabv2 import build_deeplabv2
from segcore.pseudo.class_distribution import argmax_counts, write_class_distribution
from segcore.pseudo.store import HardWriter, SoftStore, SoftWriter
from segcore.train import common, cpsl_stage1, distill_loop, distributed as D, proda_stage1, simclr_loop, source_loop
from test_convert import make_gta5

ROOT = Path(__file__).resolve().parents[1]
NC, BATCH, ITERS, EVERY = 19, 4, 4, 2
SIZE = (48, 24)  # (W, H) of the tiny images
TINY = {"batch_size": BATCH, "crop": [32, 16], "base_width": 48, "iterations": ITERS, "checkpoint_every": EVERY,
        "log_every": 1}


# ----------------------------------------------------------------------------- jobs

class Stop(Exception):
    """Raised on every rank right after the rolling state of iteration EVERY was written."""


def _stopping_snapshot(real):
    def snapshot(state, iteration, parts):
        real(state, iteration, parts)
        if iteration == EVERY:
            raise Stop

    return snapshot


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
        # steps, so steps 3 and 4 (after the resume) use it in Sinkhorn and, without CutMix, in
        # the contrast (weighted up from the official 0.001 so that it matters here)
        "cpsl": cpsl_stage1.CPSLStage1Job(
            source=spec, target=spec, num_classes=NC,
            options=_options("cpsl.stage1", lr=1e-3, ema_momentum=0.9, proto_ema_momentum=0.9, samples_per_image=8,
                             queue_length=64, cutmix_p=0.5, contrast_lambda=0.1),
            seed=5,  # CutMix at steps 2 and 4, the contrast at step 3
            init=str(data / "init.pt"), prototypes=str(data / "protos.pt"), soft_labels=str(data / "soft_full.h5"),
            class_distribution=str(data / "cd.json"), out=str(out / "cpsl.pt"),
            out_prototypes=str(out / "cpsl_protos.pt"), workdir=str(out / "work_cpsl"), device="cpu"),
        "distill": distill_loop.DistillJob(
            source=spec, target=spec, num_classes=NC, arch="small", options=_options("proda.stage2", lr=0.002,
                                                                                        threshold=0.5),
            seed=7, teacher=str(data / "teacher.pt"), hard_labels=str(data / "hard.h5"),
            student_init=str(data / "init_clr.pt"), init_kind="checkpoint", stage="proda_stage3",
            out=str(out / "distill.pt"), workdir=str(out / "work_distill"), device="cpu"),
        "simclr": simclr_loop.SimCLRJob(
            images=[spec], arch="small", num_classes=NC, seed=8, out=str(out / "simclr.pt"),
            workdir=str(out / "work_simclr"), device="cpu",
            options={"iterations": ITERS, "batch_size": BATCH, "crop": [32, 16], "checkpoint_every": EVERY,
                     "log_every": 1, "optimizer": "sgd", "lr": 1e-5, "warmup": 0.0}),
    }
    return jobs


# Learning rates: small enough that the tiny runs stay out of the chaotic regime where float
# rounding (1e-6 relative per step, e.g. BN over 2 samples per rank vs 4) is amplified by large
# steps: the SimCLR gradients of an untrained net at batch 4 have norms of ~500 (hence SGD at
# 1e-5; with Adam, parameters whose exact gradient is 0, such as bn_pretrain.bias before the
# projection head's BN, move by +-lr on the sign of rounding noise), and prototypes that collapse
# onto the features make the sqrt of the distances ill-conditioned (hence proto_momentum 0.05).
# CPSL's self-training loss (CE + RCE + MRKLD on a random head) moves the weights by ~0.3 per
# step at lr 1e-2, where 1e-7 of rounding grows 40x a step: hence 1e-3.
MODULES = {"warmup": source_loop, "stage1": proda_stage1, "cpsl": cpsl_stage1, "distill": distill_loop,
           "simclr": simclr_loop}


def run_stopped_then_resumed(name: str, job, log) -> None:
    """Run until the rolling state of iteration EVERY (kept aside as stopped.pt), then resume."""
    module = MODULES[name]
    if name == "simclr":  # its own snapshot code: stop through on_iteration instead
        def stop(done, loss):
            if done == EVERY:
                raise Stop
        run = lambda: module.run(job, log=log, on_iteration=stop)  # noqa: E731
    else:
        real = module.snapshot
        module.snapshot = _stopping_snapshot(real)
        run = lambda: module.run(job, log=log)  # noqa: E731
    try:
        run()
        raise AssertionError(f"{name}: did not stop")
    except Stop:
        pass
    finally:
        if name != "simclr":
            module.snapshot = real
    work = Path(job.workdir)
    D.barrier()  # rank 0 has written the state
    if D.is_main():
        shutil.copy(work / "resume.pt", work / "stopped.pt")
    D.barrier()
    module.run(job, log=log)


def _worker(rank: int, world: int, port: int, data: str, out: str, names: list) -> None:
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
            run_stopped_then_resumed(name, jobs[name], lines.append)
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
    rng = np.random.default_rng(2)
    with HardWriter(base / "hard.h5", keys, (SIZE[1], SIZE[0]), num_classes=NC, conf_encoding="float16") as w:
        for i in range(len(keys)):
            w.write(i, rng.integers(0, NC, (SIZE[1], SIZE[0])).astype(np.uint8),
                    rng.random((SIZE[1], SIZE[0])).astype(np.float32))
    return base


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """Every loop with one process (here) and with two spawned gloo processes."""
    names = list(MODULES)
    one = tmp_path_factory.mktemp("one")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    lines = []
    try:
        jobs = make_jobs(data, one)
        for name in names:
            run_stopped_then_resumed(name, jobs[name], lines.append)
    finally:
        torch.set_num_threads(threads)
    (one / "log.txt").write_text("\n".join(lines))
    two = tmp_path_factory.mktemp("two")
    mp.spawn(_worker, args=(2, _free_port(), str(data), str(two), names), nprocs=2, join=True)
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


def assert_states_close(a: dict, b: dict, skip=("rng",), rtol=1e-4, atol=1e-5) -> float:
    """Every float tensor within ``rtol`` of its own scale (max |x|) plus ``atol``; the rest equal.
    Returns the largest absolute difference."""
    fa = {k: v for k, v in _flat(a) if not k.startswith(skip)}
    fb = {k: v for k, v in _flat(b) if not k.startswith(skip)}
    assert fa.keys() == fb.keys()
    worst = 0.0
    for k in fa:
        x, y = fa[k], fb[k]
        assert x.shape == y.shape and x.dtype == y.dtype, k
        if x.is_floating_point() and x.numel():
            diff = float((x.double() - y.double()).abs().max())
            scale = float(x.double().abs().max())
            assert diff <= rtol * scale + atol, f"{k}: max difference {diff:.3g} at scale {scale:.3g}"
            worst = max(worst, diff)
        elif not x.is_floating_point():
            assert torch.equal(x, y), k
    return worst


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


OUTPUTS = {"warmup": ("warmup.pt", "model"), "stage1": ("stage1.pt", "model"), "cpsl": ("cpsl.pt", "model"),
           "distill": ("distill.pt", "model"), "simclr": ("simclr.pt", "state_dict")}
WORK = {"warmup": "work_warmup", "stage1": "work_stage1", "cpsl": "work_cpsl", "distill": "work_distill",
        "simclr": "work_simclr"}


@pytest.mark.parametrize("name", list(MODULES))
def test_two_processes_match_one(runs, data, name):
    one, two = runs
    file, key = OUTPUTS[name]
    a, b = load(one / file), load(two / file)
    worst = assert_states_close(a[key], b[key])
    # the runs moved the weights far beyond the tolerance (the comparison means something)
    init = {"warmup": None, "stage1": data / "init.pt", "cpsl": data / "init.pt", "distill": data / "init_clr.pt",
            "simclr": None}[name]
    if init is not None:
        moved = max(float((a[key][k].double() - v.double()).abs().max())
                    for k, v in load(init)["model"].items() if v.is_floating_point())
        assert moved > 100 * max(worst, 1e-6), (name, moved, worst)
    # the rolling state of iteration 2 (model, optimiser, teacher, prototypes, disc, ...)
    work = WORK[name]
    sa, sb = load(one / work / "stopped.pt"), load(two / work / "stopped.pt")
    assert sa["iteration"] == sb["iteration"] == EVERY
    assert_states_close(sa, sb, skip=("rng", "fingerprint", "history"))
    if name == "stage1":
        assert "teacher" in sa and "prototypes" in sa
        assert not torch.equal(sa["prototypes"]["protos"], load(data / "protos.pt")["protos"])
    if name == "cpsl":  # the memory (full at iteration 2) and the learnt prototypes are in the state
        assert int(sa["memory"]["count"]) == 64 and {"teacher", "prototypes"} <= set(sa)
    # resumed under DDP at iteration 2, logged once (rank 0), state cleared at the end
    for folder in (one, two):
        log = (folder / "log.txt").read_text()
        assert f"{work}/resume.pt at iteration {EVERY}" in log
        assert not (folder / work / "resume.pt").exists()
    assert (two / "log.txt").read_text().count(f"it {ITERS}/{ITERS}") == len(MODULES)


def test_cpsl_prototypes_and_memory_match(runs, data):
    """CPSL: the learnt prototypes P and their EMA P' written by rank 0 are the single process's
    (float tolerance), they moved, and the contrast against the memory ran in both runs."""
    one, two = runs
    a, b = load(one / "cpsl_protos.pt"), load(two / "cpsl_protos.pt")
    worst = assert_states_close(a, b)
    start = torch.nn.functional.normalize(load(data / "protos.pt")["protos"], dim=1)
    for key in ("protos", "protos_ema"):
        moved = float((a[key] - start).abs().max())
        assert moved > 100 * max(worst, 1e-6), (key, moved, worst)
    for folder in (one, two):
        assert " con " in (folder / "log.txt").read_text()


def test_logged_losses_are_global(runs):
    """Rank 0 prints the losses of the global batch (averaged over ranks with global counts)."""
    one, two = runs

    def values(folder):
        out = []
        for line in (folder / "log.txt").read_text().splitlines():
            if line.startswith("it "):
                parts = line.split("(")[0].split()
                out.append([float(parts[i + 1]) for i in range(4, len(parts) - 1, 2)])
        return out

    a, b = values(one), values(two)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        np.testing.assert_allclose(y, x, rtol=2e-3, atol=2e-4)  # 4 printed decimals


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

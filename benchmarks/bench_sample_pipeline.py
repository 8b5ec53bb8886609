"""Training-sample pipeline: the source + target sample pairs per second one loader worker
delivers to ProDA's and CPSL's stages, against the pairs per second their step consumes.

The datasets are the loops' own (``proda_stage1.data_sets``, ``cpsl_stage1.data_sets``,
``distill_loop.data_sets``) with the options of configs/gta5_to_cityscapes.yaml, on generated
data written by this script: GTA5 at ProDA's 1914x1052 and CPSL's 2048x1024, Cityscapes at
2048x1024, crop 896x512 at base width 2200, soft labels at output stride 8 (19x129x257
float16 store), hard labels at full resolution (the workflow's threshold store), the target's
LAB statistics (rule lab_stats). A pair = one source sample + one target sample, produced
in this process, i.e. by one worker on one core. ``--size small`` scales every size down
(train_step.py's small sizes, crop 32x16 of 48x24; seconds; what CI runs).

Baseline: the pairs/s of the ProDA stage-1 step of benchmarks/train_step.py (the real step,
fp32 on the CPU, bf16 + channels_last on CUDA), measured in the same run on this device, or
``--step-rate`` (images/s of that benchmark's stage-1 row, e.g. from a GPU run). CPSL's stage-1
step does at least the same work (three student passes and the teacher on the full image) and
the distillation steps less, so their rows against this rate are a lower (CPSL) and upper
(distillation) estimate of what one worker covers. The H200 rows use the estimate of
bench_pseudo_store.py (32 target images/s) until train_step.py runs on a GPU.

Also: CPSL's LAB transfer of one source image in float32 with the statistics artifact against
float64 with the reference's statistics computed on each read (the transfer before this
artifact). Check (exit 1): the float32 transfer stays within 0.1/255 of float64.
"""
from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, best_times, check, parse_args  # noqa: E402

from segcore.config import load_config_file, stage_options, validate  # noqa: E402
from segcore.data import demo  # noqa: E402
from segcore.data.convert import convert_dataset  # noqa: E402
from segcore.data.lab_transfer import compute_lab_stats, lab_stats, lab_transfer, write_lab_stats  # noqa: E402
from segcore.pseudo.store import HardWriter, SoftWriter  # noqa: E402
from segcore.train import cpsl_stage1, distill_loop, proda_stage1  # noqa: E402
from segcore.train.common import image_set  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
C = 19
H200_TARGET_IMAGES_PER_S = 32.0  # bench_pseudo_store.NEEDED: an estimate until train_step.py runs on a GPU
SIZES = {  # GTA5 ProDA (W, H), GTA5 CPSL, Cityscapes, crop, base width, images per set, timed pairs
    "small": dict(gta=(56, 31), gta_cpsl=(48, 24), cs=(48, 24), crop=(32, 16), base_width=48,  # train_step's
                  images=2, pairs=4),
    "full": dict(gta=(1914, 1052), gta_cpsl=(2048, 1024), cs=(2048, 1024), crop=(896, 512), base_width=2200,
                 images=6, pairs=12),
}


def make_data(base: Path, size: dict) -> dict:
    """Generated GTA5 (one set per size) and Cityscapes sets in the converted layout, with the
    soft and hard stores and the LAB statistics of the target."""
    n = size["images"]
    for name, wh in (("gta", size["gta"]), ("gta_cpsl", size["gta_cpsl"])):
        demo.make_gta5(base / name, n, size=wh)
        convert_dataset("gta5", base / name, base / f"{name}_c", workers=1, progress=False)
    demo.make_cityscapes(base / "cs", n, 1, size=size["cs"])
    convert_dataset("cityscapes", base / "cs", base / "cs_c", workers=1, progress=False)
    specs = {"source": {"manifest": str(base / "gta_c/manifest.csv"), "split": "train", "resize": list(size["gta"])},
             "source_cpsl": {"manifest": str(base / "gta_cpsl_c/manifest.csv"), "split": "train",
                             "resize": list(size["gta_cpsl"])},
             "target": {"manifest": str(base / "cs_c/manifest.csv"), "split": "train", "resize": list(size["cs"])}}
    images = image_set(specs["target"], C)
    w, h = size["cs"]
    g = torch.Generator().manual_seed(0)
    soft_hw = (h // 8 + 1, w // 8 + 1)  # DeepLabV2's output grid of the full image (129x257 at 2048x1024)
    with SoftWriter(base / "soft.h5", images.keys, C, soft_hw) as writer:
        for i in range(n):
            logits = torch.nn.functional.interpolate(torch.randn(1, C, 9, 17, generator=g) * 5, size=soft_hw,
                                                     mode="bilinear", align_corners=False)[0]
            writer.write(i, torch.softmax(logits, dim=0))
    rng = np.random.default_rng(0)
    with HardWriter(base / "hard.h5", images.keys, (h, w), num_classes=C, conf_encoding="thresholds",
                    conf_thresholds=[0.95]) as writer:
        for i in range(n):
            label = np.repeat(np.repeat(rng.integers(0, C, (h // 32 + 1, w // 32 + 1)), 32, 0), 32, 1)[:h, :w]
            writer.write(i, label.astype(np.uint8), rng.random((h, w)).astype(np.float32))
    write_lab_stats(base / "lab.json", images.keys, compute_lab_stats(images), source=specs["target"])
    return specs


def options(cfg: dict, stage: str, size: dict) -> dict:
    return dict(stage_options(cfg, stage), crop=list(size["crop"]), base_width=size["base_width"])


def stage_sets(base: Path, specs: dict, cfg: dict, size: dict) -> dict:
    """(source set, target views) of each stage, built by the loops' own ``data_sets``."""
    common = dict(num_classes=C, seed=0, out="", workdir="")
    sets = {
        "ProDA stage 1": proda_stage1.data_sets(proda_stage1.Stage1Job(
            source=specs["source"], target=specs["target"], options=options(cfg, "proda.stage1", size), init="",
            prototypes="", soft_labels=str(base / "soft.h5"), **common)),
        "CPSL stage 1": cpsl_stage1.data_sets(cpsl_stage1.CPSLStage1Job(
            source=specs["source_cpsl"], target=specs["target"], options=options(cfg, "cpsl.stage1", size), init="",
            prototypes="", soft_labels=str(base / "soft.h5"), class_distribution="", out_prototypes="",
            lab_stats=str(base / "lab.json"), **common)),
    }
    for method, source in (("proda", "source"), ("cpsl", "source_cpsl")):
        sets[f"{'ProDA' if method == 'proda' else 'CPSL'} stage 2"] = distill_loop.data_sets(distill_loop.DistillJob(
            source=specs[source], target=specs["target"], arch="small", options=options(cfg, f"{method}.stage2", size),
            teacher="", hard_labels=str(base / "hard.h5"), student_init="", init_kind="checkpoint",
            stage=f"{method}_stage2", lab_stats=str(base / "lab.json"), **common))
    return sets


def pairs_per_second(src, tgt, n_images: int, pairs: int) -> tuple[float, float, float]:
    """(pairs/s, source samples/s, target samples/s) of one process, drawing view seeds as the
    loops do (a new seed per sample)."""
    def timed(ds):
        t0 = time.perf_counter()
        for i in range(pairs):
            ds[(i % n_images, 1000 + i)]
        return time.perf_counter() - t0

    src[(0, 0)], tgt[(0, 0)]  # warm-up: file handles, caches
    s, t = timed(src), timed(tgt)
    return pairs / (s + t), pairs / s, pairs / t


def step_pairs_per_second(size_name: str, ours: dict) -> float:
    """Pairs/s of the ProDA stage-1 step of train_step.py on this device (batch B: B pairs), at
    this benchmark's crop and target size."""
    import train_step

    from segcore.train.common import Accel

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = dict(train_step.SIZES[size_name], crop=ours["crop"], full=ours["cs"], base_width=ours["base_width"])
    if device.type == "cpu" and size_name == "full":
        size.update(warm=1, steps=1)  # a ResNet-101 step takes about a minute on two cores
    else:
        size.update(warm=3, steps=3)  # the first CPU steps of a process are several times slower
    g = torch.Generator().manual_seed(0)
    src, tgt = train_step.source_batch(size, g), train_step.target_batch(size, g)
    accel = Accel(device, amp=device.type == "cuda", channels_last=device.type == "cuda")
    seconds, _, _ = train_step.measure("stage1", size, accel, src, tgt)
    return size["batch"] / seconds


def lab_rows(table: Table, base: Path, specs: dict) -> None:
    images = image_set(specs["source_cpsl"], C)
    reference = image_set(specs["target"], C)
    image, ref_image = images.load_image(0), reference.load_image(0)
    mean, std = lab_stats(ref_image)
    ours, old = best_times([lambda: lab_transfer(image, mean.float(), std.float()),
                            lambda: lab_transfer(image, *lab_stats(reference.load_image(0)), dtype=torch.float64)])
    table.add("CPSL LAB transfer of one source image, s (less is better): float32 + statistics artifact "
              "vs float64 + reference statistics per read", ours, old, ratio=ours / old)
    diff = float((lab_transfer(image, mean, std).double()
                  - lab_transfer(image, mean, std, dtype=torch.float64).double()).abs().max()) * 255
    check(diff < 0.1, f"float32 LAB transfer within 0.1/255 of float64 (max {diff:.4f}/255)")


def main():
    def extra(p):
        p.add_argument("--step-rate", type=float, default=None,
                       help="images/s (source + target) of train_step.py's ProDA stage-1 row to set against, "
                            "instead of measuring the fp32/bf16 step here")

    args = parse_args(__doc__.splitlines()[0], extra)
    size = SIZES[args.size]
    cfg = load_config_file(ROOT / "configs" / "gta5_to_cityscapes.yaml")
    validate(cfg)
    table = Table(f"training-sample pipeline, crop {size['crop'][0]}x{size['crop'][1]} of "
                  f"{size['cs'][0]}x{size['cs'][1]} targets: pairs/s of one worker (ours) vs pairs/s the step "
                  "consumes (baseline)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one loader worker = one core
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        specs = make_data(base, size)
        lab_rows(table, base, specs)
        rates = {name: pairs_per_second(src, tgt, size["images"], size["pairs"])
                 for name, (src, tgt) in stage_sets(base, specs, cfg, size).items()}
    torch.set_num_threads(threads)  # the step gets the machine
    step = args.step_rate / 2 if args.step_rate else step_pairs_per_second(args.size, size)
    where = "given" if args.step_rate else ("this GPU" if torch.cuda.is_available() else "this CPU")
    for name, (pair, src, tgt) in rates.items():
        table.add(f"{name}: pairs/s of one worker (source {src:.3g}/s, target {tgt:.3g}/s) vs the "
                  f"stage-1 step ({where})", pair, step)
    if args.size == "full":
        need = H200_TARGET_IMAGES_PER_S
        for name, (pair, _, _) in rates.items():
            table.add(f"{name}: workers an H200 job needs (estimate: {need:g} pairs/s), fewer is better",
                      math.ceil(need / pair), None)
    table.note("a pair = one source + one target sample, what one image of each half of a batch costs; one "
               "worker = this process on one core (torch threads 1)")
    table.print()


if __name__ == "__main__":
    main()

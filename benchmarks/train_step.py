"""Training step throughput: fp32 eager against bf16 autocast + channels_last (+ torch.compile).

The real step functions of the loops (``source_loop.train_step`` with the LS-GAN
discriminator: the adversarial warm-up; ``proda_stage1.train_step``: source CE, EMA teacher
on the full target images, rectification, prototype consistency, moving prototypes, EMA
update) on synthetic batches of the real shapes, already on the device (no loader). Per step:
images/s (global batch: B source + B target images per step), peak device memory, model
FLOPs per step counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and
matmuls, forward + backward, teacher forward included), achieved TFLOP/s and MFU against the
device's dense bf16 peak (``--peak-tflops``, else a small table: H200/H100 989, A100 312).

``--size small``: the CPU demo network (``small``), tiny crop 32x16 of 48x24 images, batch 2
(seconds; what CI runs).
``--size full``: DeepLabV2-ResNet101, the official crop 896x512 of 2048x1024 Cityscapes images
(configs/gta5_to_cityscapes.yaml), global batch 4, on one device (under DDP each GPU gets
B/W). On CUDA also checks that the bf16 step has no host-device synchronisation
(``torch.cuda.set_sync_debug_mode``). In the training loops bf16 and channels_last act on
CUDA only; on the CPU this benchmark forces them to show what they would do there.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, check, parse_args  # noqa: E402

from segcore.data.strong_view import StrongView  # noqa: E402
from segcore.data.transforms import WeakView, apply_view  # noqa: E402
from segcore.models.deeplabv2 import build_deeplabv2  # noqa: E402
from segcore.models.discriminator import FCDiscriminator  # noqa: E402
from segcore.pseudo.prototypes import PrototypeBank  # noqa: E402
from segcore.train import proda_stage1, source_loop  # noqa: E402
from segcore.train.common import Accel, make_sgd  # noqa: E402
from segcore.train.ema import EMATeacher  # noqa: E402

C = 19
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0}  # dense, per GPU
SIZES = {  # arch, crop (W, H), full target image (W, H), base width, batch, warm-up / timed steps
    "small": dict(arch="small", crop=(32, 16), full=(48, 24), base_width=48, batch=2, warm=1, steps=2),
    "full": dict(arch="resnet101", crop=(896, 512), full=(2048, 1024), base_width=2200, batch=4, warm=3, steps=10),
}
OPTS = {  # official recipe (configs/gta5_to_cityscapes.yaml); values do not change the cost
    "lr": 2.5e-4, "head_lr_mult": 10, "momentum": 0.9, "weight_decay": 2e-4, "adv_weight": 0.01,
    "label_stride": 4, "label_geometry": "direct", "proto_temperature": 1.0, "train_thred": 0.0, "rce": True,
    "rce_alpha": 0.1, "rce_beta": 1.0, "regular_w": 0.1, "proto_consistW": 10.0, "moving_prototype": True,
    "proto_momentum": 1e-4,
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def source_batch(size, g):
    w, h = size["crop"]
    labels = torch.randint(0, C, (size["batch"], h, w), generator=g)
    labels[torch.rand(labels.shape, generator=g) < 0.1] = 255
    return {"image": torch.rand(size["batch"], 3, h, w, generator=g), "label": labels}


def target_batch(size, g):
    """What TargetViews yields: full image, weak crop, strong view, their params, soft labels."""
    (fw, fh), stride = size["full"], OPTS["label_stride"]
    weak_view = WeakView(base_width=size["base_width"], crop=size["crop"], scale_range=(0.5, 1.5), flip_p=0.5)
    strong_view = StrongView()
    samples = []
    for _ in range(size["batch"]):
        full = torch.rand(3, fh, fw, generator=g)
        weak, _, pw = weak_view(full, None, generator=g)
        strong, ps = strong_view(weak, generator=g)
        soft_full = F.softmax(torch.randn(C, math.ceil(fh / 8), math.ceil(fw / 8), generator=g) * 3, dim=0)
        samples.append({"full": full, "weak": weak, "strong": strong, "view": pw, "strong_view": ps,
                        "soft": apply_view(soft_full, pw, "bilinear", stride=stride)})
    return default_collate(samples)


def pinned(batch):
    """Pinned host memory, as the CUDA loaders give (nested view params included)."""
    if isinstance(batch, dict):
        return {k: pinned(v) for k, v in batch.items()}
    return batch.pin_memory() if torch.is_tensor(batch) else batch


def build(kind, size, accel, seed=0):
    """A step closure of ``kind`` ("warmup" / "stage1") with its own networks and optimisers."""
    torch.manual_seed(seed)
    model = build_deeplabv2(C, size["arch"])
    accel.place(model)
    optimizer = make_sgd(model, OPTS)
    model.train()
    if kind == "warmup":
        disc = accel.place(FCDiscriminator(C))
        d_opt = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.9, 0.99))
        accel.compiled(model, disc)

        def step(s, t):
            return source_loop.train_step(model, optimizer, s, OPTS, accel, disc=disc, d_opt=d_opt,
                                          target_images=t["weak"])
        return step
    teacher = EMATeacher(model, momentum=0.999, train_mode=True)
    bank = PrototypeBank.from_protos(torch.randn(C, model.feature_dim) * 0.1).to(accel.device)
    accel.compiled(model, teacher.module)

    def step(s, t):
        return proda_stage1.train_step(model, teacher, bank, optimizer, s, t, OPTS, accel, C)
    return step


def measure(kind, size, accel, src, tgt, sync_check=False):
    step = build(kind, size, accel)
    dev = accel.device
    s, t = accel.batch(src), accel.batch(tgt)
    losses = None
    for _ in range(size["warm"] + (3 if accel.compile else 0)):
        losses = step(s, t)
    if sync_check:  # one more step with every host-device synchronisation reported
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step(accel.batch(src), accel.batch(tgt))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
        check(not syncs, f"{kind}: no host-device synchronisation in the bf16 step"
              + (f" (found {len(syncs)}: {syncs[0]})" if syncs else ""))
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(size["steps"]):
        losses = step(s, t)
    sync(dev)
    seconds = (time.perf_counter() - t0) / size["steps"]
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    loss = sum(float(v) for v in losses.values())
    return seconds, peak, loss


def count_flops(kind, size, device, src, tgt):
    accel = Accel(device)
    step = build(kind, size, accel)
    with FlopCounterMode(display=False) as counter:
        step(accel.batch(src), accel.batch(tgt))
    return counter.get_total_flops()


def peak_tflops(args, device):
    if args.peak_tflops:
        return args.peak_tflops
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_BF16_TFLOPS.items():
            if key in name:
                return value
    return None


def main():
    def extra(p: argparse.ArgumentParser):
        p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
        p.add_argument("--peak-tflops", type=float, default=None,
                       help="dense bf16 peak of the device in TFLOP/s for the MFU (default: table, H200 989)")
        p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                       help="add a bf16+channels_last+compile column (auto: full size on CUDA)")

    args = parse_args(__doc__.splitlines()[0], extra)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size = SIZES[args.size]
    use_compile = args.compile == "on" or (args.compile == "auto" and args.size == "full" and device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    g = torch.Generator().manual_seed(0)
    src, tgt = source_batch(size, g), target_batch(size, g)
    if device.type == "cuda":
        src, tgt = pinned(src), pinned(tgt)
    configs = [("fp32 eager", Accel(device)), ("bf16+channels_last", Accel(device, amp=True, channels_last=True))]
    if use_compile:
        configs.append(("bf16+channels_last+compile", Accel(device, amp=True, channels_last=True, compile=True)))
    peak = peak_tflops(args, device)
    b = size["batch"]
    table = Table(f"training step, {size['arch']} crop {size['crop'][0]}x{size['crop'][1]} batch {b}, "
                  f"{device.type}: {configs[-1][0]} (ours) vs fp32 eager (baseline)")
    for kind, label in (("warmup", "warm-up (adversarial) step"), ("stage1", "ProDA stage-1 step")):
        flops = count_flops(kind, size, device, src, tgt)
        results = {}
        for name, accel in configs:
            results[name] = measure(kind, size, accel, src, tgt,
                                    sync_check=device.type == "cuda" and name == "bf16+channels_last")
        base = results["fp32 eager"]
        rel = abs(results["bf16+channels_last"][2] - base[2]) / max(abs(base[2]), 1e-9)
        check(all(math.isfinite(r[2]) for r in results.values()) and rel < 0.05,
              f"{kind}: bf16 step losses finite and within 5% of fp32 ({rel:.2%})")
        for name, (seconds, mem, _) in results.items():
            if name == "fp32 eager":
                continue
            tag = f"{label} [{name}]"
            table.add(f"{tag}: images/s ({b} source + {b} target)", 2 * b / seconds, 2 * b / base[0])
            table.add(f"{tag}: ms per step", seconds * 1e3, base[0] * 1e3, ratio=base[0] / seconds)
            table.add(f"{tag}: peak memory, GiB (less is better)", mem, base[1])
            table.add(f"{tag}: achieved TFLOP/s", flops / seconds / 1e12, flops / base[0] / 1e12)
            if peak:
                table.add(f"{tag}: MFU (of {peak:g} TFLOP/s bf16 dense)", flops / seconds / 1e12 / peak,
                          flops / base[0] / 1e12 / peak)
        table.add(f"{label}: model GFLOP per step (fwd+bwd, FlopCounterMode)", flops / 1e9, flops / 1e9)
    if not peak:
        table.note("no peak given for this device (--peak-tflops): MFU rows skipped")
    if device.type != "cuda":
        table.note("CPU: no peak-memory figure; bf16/channels_last forced here, the loops use them on CUDA only")
        table.note(f"{torch.get_num_threads()} torch CPU threads")
    if not use_compile:
        table.note("torch.compile column off (--compile on to add it; auto = full size on CUDA)")
    table.print()


if __name__ == "__main__":
    main()

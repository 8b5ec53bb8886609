"""Demo gains against the seed noise: each row's spread over the seeds of a finished multi-seed
run, and each gain the demo claims against that spread, for several sizes of the val split.

``--from DIR``: a finished run with several seeds (``configs/three_seeds.yaml``: the first seed in
``results/{chain}/``, the others in ``results/{chain}/seed_<s>/``). The script renders a larger
Cityscapes val split with the run's demo settings (the demo draws image i of a split from
(seed, split, i) alone, so its first images are the run's val images), converts it, and
evaluates every checkpoint of every seed once on it, keeping one confusion matrix per image: the
mIoU on the first n images is then a sum. Check: on the run's own val count every mIoU equals
the run's metrics file.

Rows: ours = a gain the demo claims (mean over seeds of the per-seed difference of two rows),
baseline = the larger std over seeds of its two rows, ratio = gain / spread (above 1: the gain
is larger than the seed noise). One block per val size.
``--size small``: two untrained small networks per row on a tiny rendered val split in a
temporary folder (the code path only; no meaning in the numbers).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import Table, check, parse_args  # noqa: E402

from segcore.data import demo  # noqa: E402
from segcore.data.convert import convert_dataset  # noqa: E402
from segcore.data.datasets import SegmentationDataset  # noqa: E402
from segcore.methods.warmup import upsample  # noqa: E402
from segcore.metrics import confusion_matrix, summarize  # noqa: E402
from segcore.models.checkpoint import load_model  # noqa: E402

# the gains the demo claims: (row, the row it improves on); a row a chain lacks is skipped
GAINS = [
    ("warmup", "source_only"),
    ("proda/stage1", "warmup"),
    ("proda/stage2", "proda/stage1"),
    ("proda/stage3", "proda/stage2"),
    ("cpsl/stage1", "warmup"),
    ("cpsl/stage2", "cpsl/stage1"),
    ("cpsl/stage3", "cpsl/stage2"),
    ("ddb/r1_ckd", "source_only"),
    ("ddb/r2_ckd", "source_only"),
    ("seco/proda_stage1/retrain", "proda/stage1"),
    ("uvpt/swin/adapted", "uvpt/swin/source"),
    ("uvpt/mit/adapted", "uvpt/mit/source"),
    ("oracle", "source_only"),
]


def seed_roots(results: Path, chain: str) -> list[Path]:
    """The run folders of ``chain``, one per seed: the chain's own, then each seed_<s>."""
    base = results / chain
    return [base] + sorted(p for p in base.glob("seed_*") if p.is_dir())


def runs_of(root: Path) -> dict[str, dict]:
    """{run: metrics} of every metrics file under ``root/eval`` (not those of other seeds)."""
    out = {}
    for path in sorted((root / "eval").rglob("*.json")):
        out[path.relative_to(root / "eval").with_suffix("").as_posix()] = json.loads(path.read_text())
    return out


@torch.no_grad()
def per_image_matrices(model_path, manifest, num_classes: int, resize, batch_size: int = 16) -> np.ndarray:
    """[images, C, C] confusion matrices of one checkpoint on the val split, as the evaluation
    computes them (logits upsampled to the label's size, argmax)."""
    model, _ = load_model(model_path, expect_num_classes=num_classes)
    model.eval()
    ds = SegmentationDataset(manifest, "val", num_classes, resize=resize, resize_label=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
    mats = []
    for batch in loader:
        labels = batch["label"]
        pred = upsample(model(batch["image"])["out"], labels.shape[-2:]).argmax(1)
        mats += [confusion_matrix(p, lab, num_classes).cpu().numpy() for p, lab in zip(pred, labels)]
    return np.stack(mats)[render_order(ds.keys)]


def render_order(keys: list[str]) -> np.ndarray:
    """The manifest rows (sorted by key) in the order the demo rendered them: val image i is
    ``{city}_{i // len(cities):06d}_000019`` with city ``cities[i % len(cities)]``, so the first
    n of that order are the images of a demo with ``val_count: n``."""
    cities = demo.CITIES["val"]
    stems = [k.rsplit("/", 1)[-1].split("_") for k in keys]  # val/<city>/<city>_<seq>_000019
    index = [int(seq) * len(cities) + cities.index(city) for city, seq, *_ in stems]
    return np.argsort(index)


def miou(mats: np.ndarray, n: int, num_classes: int) -> float:
    return summarize(mats[:n].sum(0), num_classes)[f"mIoU{num_classes}"]


def render_val(config: dict, count: int, tmp: Path) -> Path:
    """A converted Cityscapes val split of ``count`` images with the run's demo settings."""
    cfg = config["demo"]
    city = cfg["cityscapes"]
    raw = tmp / "cityscapes"
    demo.make_cityscapes(raw, 1, count, size=tuple(city["size"]), seed=cfg["seed"], shift=cfg["shift"])
    convert_dataset("cityscapes", raw, tmp / "converted", workers=1, progress=False)
    return tmp / "converted" / "manifest.csv"


def measure(workdir: Path, val_counts: list[int], table: Table) -> None:
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    run_val = int(config["demo"]["cityscapes"]["val_count"])
    counts = sorted(set(val_counts) | {run_val})
    resize = config["datasets"]["cityscapes"]["resize"]
    mismatches = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = render_val(config, max(counts), Path(tmp))
        for chain in config["run_chains"]:
            nc = config["chains"][chain]["num_classes"]
            roots = seed_roots(workdir / "results", chain)
            if len(roots) < 2:
                raise SystemExit(f"{workdir / 'results' / chain}: one seed only; a spread needs a run with several")
            per_seed = [runs_of(r) for r in roots]
            runs = [r for r in per_seed[0] if all(r in s for s in per_seed)]
            scores = {}  # run -> {n: [mIoU per seed]}
            for run in runs:
                scores[run] = {n: [] for n in counts}
                for metrics in (s[run] for s in per_seed):
                    mats = per_image_matrices(workdir / metrics["checkpoint"]["path"], manifest, nc, resize)
                    for n in counts:
                        scores[run][n].append(miou(mats, n, nc))
                    if abs(scores[run][run_val][-1] - metrics[f"mIoU{nc}"]) > 1e-6:
                        mismatches.append(f"{chain} {run}")
            table.note(f"{chain}: {len(roots)} seeds, {len(runs)} rows; val sizes {counts} (the run's: {run_val})")
            for n in counts:
                for run in runs:
                    s = scores[run][n]
                    table.note(f"{chain} val {n}: {run} {statistics.mean(s):.2f} ± {statistics.stdev(s):.2f}")
                for row, ref in GAINS:
                    if row not in scores or ref not in scores:
                        continue
                    a, b = scores[row][n], scores[ref][n]
                    gain = statistics.mean(x - y for x, y in zip(a, b))
                    spread = max(statistics.stdev(a), statistics.stdev(b))
                    table.add(f"{chain} val {n}: {row} - {ref}, mIoU points", gain, spread,
                              ratio=gain / spread if spread else None)
    check(not mismatches, f"every mIoU on the run's val count equals its metrics file {mismatches[:3] or ''}")


def small_run(tmp: Path) -> Path:
    """Two 'seeds' of two rows of untrained small networks, with their metrics files."""
    from segcore.evaluate import evaluate
    from segcore.models.checkpoint import save_model
    from segcore.models.deeplabv2 import build_deeplabv2

    config = {"demo": {"seed": 1, "shift": 1.0, "cityscapes": {"val_count": 3, "size": [64, 32]}},
              "datasets": {"cityscapes": {"resize": [64, 32]}}, "run_chains": ["gta5_to_cityscapes"],
              "chains": {"gta5_to_cityscapes": {"num_classes": 19}}}
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    # the run's own val split, rendered as the workflow's demo rule does (not by render_val)
    demo.make_cityscapes(tmp / "raw", 1, 3, size=(64, 32), seed=1, shift=1.0)
    convert_dataset("cityscapes", tmp / "raw", tmp / "val", workers=1, progress=False)
    manifest = tmp / "val" / "manifest.csv"
    for k, root in enumerate(["results/gta5_to_cityscapes", "results/gta5_to_cityscapes/seed_7"]):
        for j, run in enumerate(["source_only", "warmup"]):
            torch.manual_seed(10 * k + j)
            model = build_deeplabv2(19, arch="small")
            path = tmp / root / run / "model.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_model(path, model, {"arch": "small", "num_classes": 19, "bn_clr": False, "stage": run})
            metrics = evaluate(model, manifest, "val", 19, resize=[64, 32], log=lambda _: None)
            metrics["checkpoint"] = {"path": str(path.relative_to(tmp))}
            out = tmp / root / "eval" / f"{run}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(metrics))
    return tmp


def main():
    def extra(p):
        p.add_argument("--from", dest="from_dir", help="a finished multi-seed run (its folder)")
        p.add_argument("--val-counts", type=int, nargs="+", default=[50, 100, 200, 400],
                       help="val split sizes to compare (the first n images)")
    args = parse_args(__doc__.splitlines()[0], extra)
    table = Table("demo gains against the seed spread")
    if args.from_dir:
        os.chdir(args.from_dir)  # the manifests list paths relative to the run's folder
        measure(Path("."), args.val_counts, table)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            measure(small_run(Path(tmp)), [2, 3], table)
    table.note("ours: the gain (mean of the per-seed differences); baseline: the larger std over seeds of "
               "its two rows; ratio > 1: the gain is above the seed noise")
    table.print()


if __name__ == "__main__":
    main()

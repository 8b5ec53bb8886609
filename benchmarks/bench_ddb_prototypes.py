"""DDB prototypes: our one deterministic pass against the official four passes over random crops.

The official ``cal_prototype.py`` runs the path student (eval mode) over the target train set
with the training pipeline: random crops of the resized images with flips, not shuffled,
batch 4, four epochs, one running mean per class. Ours (rule ``ddb_prototypes``) makes one
pass over the whole resized images. Both fold the same image-level class means
(``segcore.methods.ddb.prototypes.path_prototypes``); only the images differ.

Rows per path teacher: time of a pass (ours) against the four random-crop passes (baseline);
the cosine similarity of the two prototypes of each class (mean and worst over the classes both
have); their relative distance ||ours - official|| / ||official||. Per chain: the share of
target-train pixels whose CKD label (argmax of the prototype-weighted ensemble of both paths)
is the same with either set of prototypes.

``--from DIR``: the round-1 ST students of a finished run (``results/{chain}/ddb/r1_st_{cu,ca}``),
its target train set and its ``ddb.st`` crop and target width. ``--size small``: untrained
``small_v1c`` networks on a tiny rendered Cityscapes in a temporary folder.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import Table, check, parse_args  # noqa: E402

from segcore.data import demo  # noqa: E402
from segcore.data.convert import convert_dataset  # noqa: E402
from segcore.data.datasets import SegmentationDataset  # noqa: E402
from segcore.methods.ddb.data import ddb_view, image_crops  # noqa: E402
from segcore.methods.ddb.ensemble import ensemble, teacher_probs  # noqa: E402
from segcore.methods.ddb.prototypes import path_prototypes  # noqa: E402
from segcore.models.checkpoint import load_model  # noqa: E402
from segcore.models.ddb_net import build_ddb_net  # noqa: E402

OFFICIAL_EPOCHS = 4


def four_pass_prototypes(model, spec: dict, num_classes: int, crop, base_width: int, seed: int = 0):
    """The official recipe: ``OFFICIAL_EPOCHS`` unshuffled passes over random crops with flips."""
    crops = image_crops(spec, num_classes, ddb_view(base_width, crop, 0.5))
    torch.manual_seed(seed)  # the crops draw from the global generator (plain indices)
    return path_prototypes(model, torch.utils.data.ConcatDataset([crops] * OFFICIAL_EPOCHS), batch_size=4)


@torch.no_grad()
def ckd_label_agreement(models: dict, ours: dict, official: dict, ds) -> float:
    """Share of pixels whose ensemble label is the same with ``ours`` and ``official`` prototypes."""
    same = total = 0
    for i in range(len(ds)):
        image = ds[i]["image"][None]
        outs = {p: models[p](image) for p in models}
        labels = []
        for bank in (ours, official):
            probs = [teacher_probs(outs[p], bank[p].protos, image.shape[-2:]) for p in ("cu", "ca")]
            labels.append(ensemble(*probs)[1])
        same += int((labels[0] == labels[1]).sum())
        total += labels[0].numel()
    return same / total


def compare(table: Table, chain: str, models: dict, spec: dict, num_classes: int, crop, base_width: int) -> None:
    whole = SegmentationDataset(spec["manifest"], spec["split"], num_classes, resize=spec["resize"],
                                with_labels=False)
    ours, official = {}, {}
    for path, model in models.items():
        model.eval()
        t0 = time.perf_counter()
        ours[path] = path_prototypes(model, whole, batch_size=4)
        t1 = time.perf_counter()
        official[path] = four_pass_prototypes(model, spec, num_classes, crop, base_width)
        t2 = time.perf_counter()
        table.add(f"{chain} {path}: prototype pass, seconds (less is better)", t1 - t0, t2 - t1)
        both = (ours[path].counts > 0) & (official[path].counts > 0)
        a, b = ours[path].protos[both], official[path].protos[both]
        cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
        rel = float((a - b).norm() / b.norm())
        check(bool(both.any()), f"{chain} {path}: classes found by both passes")
        table.add(f"{chain} {path}: cosine of the prototypes, mean over {int(both.sum())} classes",
                  float(cos.mean()), 1.0)
        table.add(f"{chain} {path}: cosine of the prototypes, worst class", float(cos.min()), 1.0)
        table.add(f"{chain} {path}: relative distance of the prototypes", rel, None)
        only = int(((ours[path].counts > 0) != (official[path].counts > 0)).sum())
        table.note(f"{chain} {path}: {only} class(es) found by one pass only")
    agree = ckd_label_agreement(models, ours, official, whole)
    table.add(f"{chain}: CKD labels the same with either prototypes, % of target-train pixels", 100 * agree, 100.0)


def from_run(workdir: Path, table: Table) -> None:
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    st = config["ddb"]["st"]
    for chain in config["run_chains"]:
        nc = config["chains"][chain]["num_classes"]
        target = config["chains"][chain]["target"]
        spec = {"manifest": str(workdir / f"results/data/{target}/manifest.csv"), "split": "train",
                "resize": config["datasets"][target]["resize"]}
        models = {p: load_model(workdir / f"results/{chain}/ddb/r1_st_{p}/model.pt", expect_num_classes=nc)[0]
                  for p in ("cu", "ca")}
        compare(table, chain, models, spec, nc, st["crop"], st["target_base_width"])


def small(tmp: Path, table: Table) -> None:
    demo.make_cityscapes(tmp / "raw", 6, 1, size=(64, 32), seed=1)
    convert_dataset("cityscapes", tmp / "raw", tmp / "cs", workers=1, progress=False)
    spec = {"manifest": str(tmp / "cs/manifest.csv"), "split": "train", "resize": [64, 32]}
    models = {}
    for k, path in enumerate(("cu", "ca")):
        torch.manual_seed(k)
        models[path] = build_ddb_net(19, arch="small_v1c")
    compare(table, "tiny", models, spec, 19, (48, 24), 64)


def main():
    def extra(p):
        p.add_argument("--from", dest="from_dir", help="a finished run with DDB (its folder)")
    args = parse_args(__doc__.splitlines()[0], extra)
    torch.set_num_threads(1)
    table = Table("DDB prototypes: one pass against four random-crop passes")
    if args.from_dir:
        os.chdir(args.from_dir)  # the manifests list paths relative to the run's folder
        from_run(Path("."), table)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            small(Path(tmp), table)
    table.print()


if __name__ == "__main__":
    main()

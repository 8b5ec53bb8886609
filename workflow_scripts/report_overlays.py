"""Qualitative overlays of one chain: a fixed set of target val images, their ground truth and
the prediction of each run (rules/report.smk, segcore/report/overlays.py)."""
import argparse
import json
import sys

import torch

from segcore import preflight
from segcore.data.datasets import SegmentationDataset
from segcore.report.overlays import plot_overlays, predict, select_images


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--manifest", required=True, help="manifest.csv of the converted target set")
    p.add_argument("--split", default="val", help="split the images come from")
    p.add_argument("--resize", default="null", help="JSON [W, H] the models see (the evaluation's), or null")
    p.add_argument("--num-classes", type=int, required=True, help="classes of the chain (19 or 16)")
    p.add_argument("--images", required=True,
                   help="JSON: an int n (the first n images of the split) or a list of manifest keys")
    p.add_argument("--run", nargs=2, action="append", required=True, metavar=("LABEL", "MODEL"),
                   help="one row of predictions: its label and checkpoint (repeatable)")
    p.add_argument("--chain", required=True, help="the chain (for the title)")
    p.add_argument("--out", required=True, help="figure to write (.png)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    try:
        images = json.loads(a.images)
    except json.JSONDecodeError:
        raise ValueError(f"--images: not JSON ({a.images!r})") from None
    if not (isinstance(images, int) or (isinstance(images, list) and all(isinstance(k, str) for k in images))):
        raise ValueError(f"--images: expected an int or a list of manifest keys, got {a.images!r}")
    preflight.check_data({"manifest": a.manifest, "split": a.split}, "--manifest")
    for _, model in a.run:
        preflight.check_checkpoint(model, num_classes=a.num_classes)
    ds = SegmentationDataset(a.manifest, a.split, a.num_classes, resize=json.loads(a.resize), resize_label=False)
    indices = select_images(ds, images)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    runs = [(label, predict(model, ds, indices, a.num_classes, device)) for label, model in a.run]
    plot_overlays(ds, indices, runs, a.num_classes, a.chain, a.out)
    print(f"{a.chain}: {len(indices)} images x {len(runs)} runs -> {a.out}", flush=True)


if __name__ == "__main__":
    sys.exit(preflight.run_script(main, "report_overlays.py"))

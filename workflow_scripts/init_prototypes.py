"""Initial class prototypes of the warm-up model on the target train split (rules/pseudo.smk)."""
import argparse
import json
import sys

import torch

from segcore import preflight
from segcore.preflight import run_script
from segcore.atomic import save_torch
from segcore.data.datasets import SegmentationDataset
from segcore.models.checkpoint import load_model
from segcore.pseudo.initial_prototypes import initial_prototypes


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--target", required=True, help="JSON: manifest, split, resize")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    spec = json.loads(a.target)
    preflight.check_checkpoint(a.model, num_classes=a.num_classes)
    preflight.check_data(spec, "--target", labels=False)
    model, _ = load_model(a.model, expect_num_classes=a.num_classes)
    ds = SegmentationDataset(spec["manifest"], spec["split"], a.num_classes, resize=spec["resize"], with_labels=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bank = initial_prototypes(model, ds, a.batch_size, device=device)
    save_torch(a.out, {k: v.cpu() for k, v in bank.state_dict().items()})
    print(f"{a.out}: {bank.num_classes} prototypes of dim {bank.dim}, counts {bank.counts.tolist()}", flush=True)


if __name__ == "__main__":
    sys.exit(run_script(main, "init_prototypes.py"))

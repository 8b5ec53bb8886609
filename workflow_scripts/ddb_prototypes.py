"""Class prototypes of a DDB path teacher on the target train images (one deterministic pass)."""
import argparse
import sys

import torch

from segcore.atomic import save_torch
from segcore.methods.ddb.prototypes import path_prototypes
from segcore.preflight import run_script
from segcore.pseudo.generate import open_model_and_images
from segcore.train.distributed import add_workers_argument, loader_workers


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="the path's ST student checkpoint")
    p.add_argument("--target", required=True, help="JSON: manifest, split, resize of the target train set")
    p.add_argument("--num-classes", type=int, required=True, help="classes of the chain")
    p.add_argument("--resolution", choices=("input", "feature"), default="input",
                   help="class means at the input size (official: features upsampled) or at output stride 8")
    p.add_argument("--min-pixels", type=int, default=10, help="pixels a class needs in an image to count (official 10)")
    p.add_argument("--cap", type=int, default=3000, help="count cap of the running mean (official 3000)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    p.add_argument("--out", required=True, help="prototypes file ({'protos': (C, D), 'counts': (C,)})")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    add_workers_argument(p)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, ds, device = open_model_and_images(a.model, a.target, a.num_classes)
    bank = path_prototypes(model, ds, a.batch_size, device=device, resolution=a.resolution,
                           min_pixels=a.min_pixels, cap=a.cap,
                           num_workers=loader_workers(a.workers, device))
    save_torch(a.out, {k: v.cpu() for k, v in bank.state_dict().items()})
    print(f"{a.out}: {bank.num_classes} prototypes of dim {bank.dim}, counts {bank.counts.tolist()}", flush=True)


if __name__ == "__main__":
    sys.exit(run_script(main, "ddb_prototypes.py"))

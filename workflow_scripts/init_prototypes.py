"""Initial class prototypes of the warm-up model on the target train split (rules/pseudo.smk)."""
import argparse
import sys

import torch

from segcore.atomic import save_torch
from segcore.preflight import run_script
from segcore.pseudo.generate import open_model_and_images
from segcore.pseudo.initial_prototypes import initial_prototypes
from segcore.train.distributed import add_workers_argument, loader_workers


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="warm-up checkpoint (model.pt)")
    p.add_argument("--target", required=True, help="JSON: manifest, split, resize")
    p.add_argument("--num-classes", type=int, required=True, help="classes of the chain")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    p.add_argument("--out", required=True, help="prototypes file to write (prototypes.pt)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    add_workers_argument(p)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, ds, device = open_model_and_images(a.model, a.target, a.num_classes)
    bank = initial_prototypes(model, ds, a.batch_size, device=device, num_workers=loader_workers(a.workers, device))
    save_torch(a.out, {k: v.cpu() for k, v in bank.state_dict().items()})
    print(f"{a.out}: {bank.num_classes} prototypes of dim {bank.dim}, counts {bank.counts.tolist()}", flush=True)


if __name__ == "__main__":
    sys.exit(run_script(main, "init_prototypes.py"))

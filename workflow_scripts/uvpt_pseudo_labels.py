"""Uni-UVPT pseudo-labels: the source model's argmax on target train (no flip, every pixel
kept, as the official generate_pseudo_label.py), with its float16 confidence, into the hard
pseudo-label store that the adaptation and its correction read (rules/uvpt.smk)."""
import argparse
import sys

import torch

from segcore.preflight import run_script
from segcore.pseudo.generate import generate_hard, open_model_and_images
from segcore.pseudo.store import HardWriter
from segcore.train.distributed import add_workers_argument, loader_workers


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="the uvpt_source checkpoint (model.pt)")
    p.add_argument("--target", required=True, help="JSON: manifest, split, resize of the target train set")
    p.add_argument("--num-classes", type=int, required=True, help="classes of the chain")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    p.add_argument("--out", required=True, help="HDF5 store to write")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    add_workers_argument(p)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, ds, device = open_model_and_images(a.model, a.target, a.num_classes)
    model.to(device)
    h, w = ds.load_image(0).shape[-2:]
    with HardWriter(a.out, ds.keys, (h, w), num_classes=a.num_classes, conf_encoding="float16") as writer:
        generate_hard(model, ds, writer, batch_size=a.batch_size, flip=False, device=device,
                      num_workers=loader_workers(a.workers, device))
    print(f"{a.out}: source-model pseudo-labels of {len(ds)} images", flush=True)


if __name__ == "__main__":
    sys.exit(run_script(main, "uvpt_pseudo_labels.py"))

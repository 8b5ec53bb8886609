"""Pseudo-labels of a checkpoint on the target train split, into an HDF5 store
(rules/pseudo.smk): soft (softmax at the output stride) or hard (flip-averaged argmax and
confidence at full resolution)."""
import argparse
import sys

import torch

from segcore.preflight import run_script
from segcore.pseudo.generate import generate_hard, generate_soft, open_model_and_images
from segcore.pseudo.store import HardWriter, SoftWriter
from segcore.train.distributed import add_workers_argument, loader_workers


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kind", required=True, choices=("soft", "hard"),
                   help="soft: the warm-up's softmax; hard: a stage's flip-averaged labels and confidence")
    p.add_argument("--model", required=True, help="checkpoint whose predictions are stored (model.pt)")
    p.add_argument("--target", required=True, help="JSON: manifest, split, resize")
    p.add_argument("--num-classes", type=int, required=True, help="classes of the chain")
    p.add_argument("--encoding", default="float16", help="soft store encoding (float16 or topk)")
    p.add_argument("--conf-thresholds", default="",
                   help="hard store: comma-separated thresholds the confidence is kept exact for (uint8 codes, "
                        "a thirtieth of the official files); empty = the float16 confidence (any threshold)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    p.add_argument("--out", required=True, help="HDF5 store to write")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    add_workers_argument(p)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, ds, device = open_model_and_images(a.model, a.target, a.num_classes)
    model.to(device)
    workers = loader_workers(a.workers, device)
    h, w = ds.load_image(0).shape[-2:]
    if a.kind == "soft":
        with torch.no_grad():
            oh, ow = model.eval()(torch.zeros(1, 3, h, w, device=device))["out"].shape[-2:]
        with SoftWriter(a.out, ds.keys, a.num_classes, (oh, ow), encoding=a.encoding) as writer:
            generate_soft(model, ds, writer, batch_size=a.batch_size, device=device, num_workers=workers)
    else:
        listed = [float(t) for t in a.conf_thresholds.split(",") if t.strip()]
        enc = {"conf_encoding": "thresholds", "conf_thresholds": listed} if listed else {"conf_encoding": "float16"}
        with HardWriter(a.out, ds.keys, (h, w), num_classes=a.num_classes, **enc) as writer:
            generate_hard(model, ds, writer, batch_size=a.batch_size, flip=True, device=device,
                          num_workers=workers)
    print(f"{a.out}: {a.kind} pseudo-labels of {len(ds)} images", flush=True)


if __name__ == "__main__":
    sys.exit(run_script(main, "pseudo_labels.py"))

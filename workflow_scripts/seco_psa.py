"""SeCo step 1: the base stage's confident pixels aggregated into regions (PSA), into a SeCo
label store. SAM when --options names a SAM checkpoint, else the classical proposer."""
import argparse
import json
import os
import sys

import torch

from segcore import preflight
from segcore.pseudo.store import HardStore
from segcore.seco.confident import check_rankable, confident_pixels
from segcore.seco.proposers import make_proposer
from segcore.seco.psa import aggregate_set
from segcore.seco.refined_store import RefinedWriter
from segcore.train.common import image_set


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--hard-labels", required=True, help="the base stage's hard pseudo-label store (float16 confidence)")
    p.add_argument("--target", required=True, help="JSON: manifest, split, resize of the target train set")
    p.add_argument("--num-classes", type=int, required=True, help="the chain's class count (19 or 16)")
    p.add_argument("--base", required=True, help="the base stage's name, e.g. proda/stage1 (recorded in the store)")
    p.add_argument("--options", required=True,
                   help="JSON: fraction, scope (class|global), min_share, min_thing_pixels, sam {checkpoint, name, "
                        "prompts, generator}, classical {superpixels, scale, sigma, min_size, grow_steps, colour_tol}")
    p.add_argument("--out", required=True, help="the PSA label store to write")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=os.environ.get("SEGCORE_DEVICE", "auto"),
                   help="where SAM runs: auto (default, or $SEGCORE_DEVICE): CUDA when available, else the CPU")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    opts = json.loads(a.options)
    keys = preflight.check_data(json.loads(a.target), "--target", labels=False)
    preflight.check_store(a.hard_labels, "hard", keys, a.num_classes)
    store = HardStore(a.hard_labels, expect_keys=keys, expect_classes=a.num_classes)
    check_rankable(store)
    proposer = make_proposer(opts, a.num_classes, None if a.device == "auto" else a.device)
    images = image_set(json.loads(a.target), a.num_classes)
    labels, keep_from = confident_pixels(store, opts.get("fraction", 0.5), opts.get("scope", "class"))
    with RefinedWriter(a.out, keys, store.size_hw, a.num_classes, "psa", proposer.name, a.base) as w:
        aggregate_set(images, labels, proposer, w, a.num_classes, opts.get("min_share", 0.2),
                      opts.get("min_thing_pixels", 10), log=lambda s: print(s, flush=True))
    print(f"{a.out}: PSA labels of {len(keys)} images ({proposer.name})", flush=True)


if __name__ == "__main__":
    sys.exit(preflight.run_script(main, "seco_psa.py"))

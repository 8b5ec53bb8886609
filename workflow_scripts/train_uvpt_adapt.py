"""Uni-UVPT adaptation (source-free): prompt adapters on the frozen source encoder, trained on
the source model's hard pseudo-labels of target train with adaptive pseudo-label correction.
Reads no source data."""
import argparse
import json
import sys

from segcore import preflight
from segcore.models.uvpt_presets import UVPT_ARCHS
from segcore.train import distributed, uvpt_adapt


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", required=True, help="JSON: manifest, split, resize of the target train set")
    p.add_argument("--num-classes", type=int, required=True, help="classes of the chain")
    p.add_argument("--init", required=True, help="the uvpt_source checkpoint (the source-free hand-over point)")
    p.add_argument("--pseudo-labels", required=True, help="hard pseudo-label store of the source model on target train")
    p.add_argument("--options", required=True, help="JSON of the stage's training, loss and correction options")
    p.add_argument("--seed", type=int, required=True, help="random seed")
    p.add_argument("--out", required=True, help="checkpoint to write (model.pt)")
    p.add_argument("--workdir", required=True, help="folder of the rolling resume state (removed at the end)")
    distributed.add_launch_arguments(p)
    distributed.launch(_run, p.parse_args())


def _run(a):
    opts = json.loads(a.options)
    preflight.check_options(opts, "--options")
    for key in ("crop", "correction", "prompt_lr_mult", "entropy_weight", "consistency_weight", "prompt_weight",
                "confidence_threshold"):
        if key not in opts:
            raise ValueError(f"--options: lacks '{key}'")
    keys = preflight.check_data(json.loads(a.target), "--target", batch_size=opts.get("batch_size"), labels=False)
    meta = preflight.check_checkpoint(a.init, num_classes=a.num_classes)
    if meta["arch"] not in UVPT_ARCHS or meta.get("adapter"):
        raise ValueError(f"{a.init}: not a Uni-UVPT source checkpoint (arch {meta['arch']!r})")
    preflight.check_store(a.pseudo_labels, "hard", keys, a.num_classes)
    job = uvpt_adapt.UVPTAdaptJob(target=json.loads(a.target), num_classes=a.num_classes, options=opts, seed=a.seed,
                                  init=a.init, pseudo_labels=a.pseudo_labels, out=a.out, workdir=a.workdir,
                                  num_workers=distributed.loader_workers(a.workers))
    uvpt_adapt.run(job, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    sys.exit(distributed.run_script(main, "train_uvpt_adapt.py"))

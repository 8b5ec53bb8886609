"""Train the source-only baseline, the oracle or the adversarial warm-up (rules/source.smk)."""
import argparse
import json
import sys
from pathlib import Path

from segcore import preflight
from segcore.train import best, distributed, source_loop


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mode", required=True, choices=source_loop.MODES,
                   help="source_only / oracle: labels only; adversarial: the warm-up with its discriminator")
    p.add_argument("--labelled", required=True, help="JSON: manifest, split, resize of the labelled set")
    p.add_argument("--unlabelled", default=None,
                   help="JSON: manifest, split, resize of the target images (adversarial)")
    p.add_argument("--num-classes", type=int, required=True, help="classes of the chain")
    p.add_argument("--arch", required=True, help="network (the config's model.arch)")
    p.add_argument("--imagenet-weights", default="", help="ImageNet backbone weights file (empty: random init)")
    p.add_argument("--options", required=True, help="JSON of the stage's training options")
    p.add_argument("--seed", type=int, required=True, help="random seed")
    p.add_argument("--out", required=True, help="checkpoint to write (model.pt)")
    p.add_argument("--workdir", required=True,
                   help="folder of the rolling resume state (kept after a kill, removed at the end)")
    best.add_arguments(p)
    distributed.add_launch_arguments(p)
    distributed.launch(_run, p.parse_args())


def _run(a):
    opts = json.loads(a.options)
    preflight.check_options(opts, "--options")
    preflight.check_data(json.loads(a.labelled), "--labelled", batch_size=opts.get("batch_size"))
    if a.unlabelled:
        preflight.check_data(json.loads(a.unlabelled), "--unlabelled", batch_size=opts.get("batch_size"), labels=False)
    if a.imagenet_weights and not Path(a.imagenet_weights).is_file():
        raise ValueError(f"{a.imagenet_weights}: ImageNet weights not found (config key 'model.imagenet_weights')")
    selection = best.from_arguments(a, a.num_classes)
    job = source_loop.SupervisedJob(
        mode=a.mode, labelled=json.loads(a.labelled), num_classes=a.num_classes, arch=a.arch,
        options=json.loads(a.options), seed=a.seed, out=a.out, workdir=a.workdir,
        num_workers=distributed.loader_workers(a.workers), best=selection,
        unlabelled=json.loads(a.unlabelled) if a.unlabelled else None,
        imagenet_weights=a.imagenet_weights or None)
    source_loop.run(job, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    sys.exit(distributed.run_script(main, "train_source.py"))

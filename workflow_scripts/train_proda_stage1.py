"""ProDA stage 1: prototypical denoising from the warm-up model (rules/proda.smk)."""
import argparse
import json

import torch

from segcore.train import proda_stage1


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--source", required=True, help="JSON: manifest, split, resize of the labelled source set")
    p.add_argument("--target", required=True, help="JSON: manifest, split, resize of the target train set")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--options", required=True, help="JSON of the stage's options")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--init", required=True, help="warm-up checkpoint")
    p.add_argument("--prototypes", required=True)
    p.add_argument("--soft-labels", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    job = proda_stage1.Stage1Job(
        source=json.loads(a.source), target=json.loads(a.target), num_classes=a.num_classes,
        options=json.loads(a.options), seed=a.seed, init=a.init, prototypes=a.prototypes,
        soft_labels=a.soft_labels, out=a.out, workdir=a.workdir)
    proda_stage1.run(job, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    main()

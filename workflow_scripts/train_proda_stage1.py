"""ProDA stage 1: prototypical denoising from the warm-up model (rules/proda.smk)."""
import argparse
import json
import sys
from pathlib import Path

from segcore import preflight
from segcore.train import best, distributed, proda_stage1


def main():
    p = argparse.ArgumentParser(description=__doc__)
    preflight.add_source_target_arguments(p)
    p.add_argument("--init", required=True, help="warm-up checkpoint")
    p.add_argument("--prototypes", required=True, help="initial prototypes of the warm-up model (prototypes.pt)")
    p.add_argument("--soft-labels", required=True, help="soft pseudo-label store of the warm-up model (soft_labels.h5)")
    p.add_argument("--out", required=True, help="stage-1 checkpoint to write (model.pt)")
    p.add_argument("--workdir", required=True,
                   help="folder of the rolling resume state (kept after a kill, removed at the end)")
    best.add_arguments(p)
    distributed.add_launch_arguments(p)
    distributed.launch(_run, p.parse_args())


def _run(a):
    opts, keys = preflight.check_source_target(a)
    preflight.check_checkpoint(a.init, num_classes=a.num_classes)
    preflight.check_store(a.soft_labels, "soft", keys, a.num_classes)
    if not Path(a.prototypes).is_file():
        raise ValueError(f"{a.prototypes}: prototypes file not found")
    selection = best.from_arguments(a, a.num_classes)
    job = proda_stage1.Stage1Job(
        source=json.loads(a.source), target=json.loads(a.target), num_classes=a.num_classes,
        options=json.loads(a.options), seed=a.seed, init=a.init, prototypes=a.prototypes,
        soft_labels=a.soft_labels, out=a.out, workdir=a.workdir,
        num_workers=distributed.loader_workers(a.workers), best=selection)
    proda_stage1.run(job, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    sys.exit(distributed.run_script(main, "train_proda_stage1.py"))

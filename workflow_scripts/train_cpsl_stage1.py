"""CPSL stage 1: class-balanced pixel-level self-labeling from the warm-up model (rules/cpsl.smk)."""
import argparse
import json
import sys

from segcore import preflight
from segcore.pseudo.class_distribution import read_class_distribution
from segcore.pseudo.prototypes import load_prototypes
from segcore.train import best, cpsl_stage1, distributed


def main():
    p = argparse.ArgumentParser(description=__doc__)
    preflight.add_source_target_arguments(p)
    p.add_argument("--init", required=True, help="warm-up checkpoint")
    p.add_argument("--prototypes", required=True, help="initial prototypes of the warm-up model")
    p.add_argument("--soft-labels", required=True, help="soft pseudo-label store of the warm-up model (soft_labels.h5)")
    p.add_argument("--class-distribution", required=True, help="class prior JSON (class_distribution rule)")
    p.add_argument("--out", required=True, help="stage-1 checkpoint to write (model.pt)")
    p.add_argument("--out-prototypes", required=True,
                   help="learnt prototypes to write (prototypes.pt, with their EMA copy)")
    p.add_argument("--workdir", required=True,
                   help="folder of the rolling resume state (kept after a kill, removed at the end)")
    best.add_arguments(p)
    distributed.add_launch_arguments(p)
    distributed.launch(_run, p.parse_args())


def _run(a):
    opts, keys = preflight.check_source_target(a)
    preflight.check_checkpoint(a.init, num_classes=a.num_classes)
    preflight.check_store(a.soft_labels, "soft", keys, a.num_classes)
    load_prototypes(a.prototypes, a.num_classes)
    read_class_distribution(a.class_distribution, a.num_classes)
    selection = best.from_arguments(a, a.num_classes)
    job = cpsl_stage1.CPSLStage1Job(
        source=json.loads(a.source), target=json.loads(a.target), num_classes=a.num_classes, options=opts,
        seed=a.seed, init=a.init, prototypes=a.prototypes, soft_labels=a.soft_labels,
        class_distribution=a.class_distribution, out=a.out, out_prototypes=a.out_prototypes, workdir=a.workdir,
        num_workers=distributed.loader_workers(a.workers), best=selection, lab_stats=a.lab_stats)
    cpsl_stage1.run(job, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    sys.exit(distributed.run_script(main, "train_cpsl_stage1.py"))

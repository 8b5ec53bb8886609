"""ProDA/CPSL stage 2 or 3: distillation of a stage's model into a student (rules/proda.smk)."""
import argparse
import json
import sys
from pathlib import Path

from segcore import preflight
from segcore.train import best, distill_loop, distributed


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--stage", required=True,
                   help="METHOD_stageN, e.g. proda_stage2 (recorded in the checkpoint)")
    preflight.add_source_target_arguments(p)
    p.add_argument("--arch", required=True, help="network of the student (the config's model.arch)")
    p.add_argument("--teacher", required=True, help="checkpoint of the previous stage, the teacher (model.pt)")
    p.add_argument("--hard-labels", required=True, help="the teacher's hard pseudo-labels (hard_labels.h5)")
    p.add_argument("--student-init", required=True,
                   help="initialisation of the student: SimCLR or ImageNet backbone file, or a checkpoint")
    p.add_argument("--init-kind", required=True, choices=("simclr", "imagenet", "checkpoint"),
                   help="simclr / imagenet: --student-init is a backbone file (stage 2); checkpoint: a full"
                   " model (stage 3)")
    p.add_argument("--out", required=True, help="checkpoint of this stage to write (model.pt)")
    p.add_argument("--workdir", required=True,
                   help="folder of the rolling resume state (kept after a kill, removed at the end)")
    best.add_arguments(p)
    distributed.add_launch_arguments(p)
    distributed.launch(_run, p.parse_args())


def _run(a):
    opts, keys = preflight.check_source_target(a)
    preflight.check_checkpoint(a.teacher, num_classes=a.num_classes)
    if a.init_kind == "checkpoint":
        preflight.check_checkpoint(a.student_init, num_classes=a.num_classes, arch=a.arch)
    elif not Path(a.student_init).is_file():
        raise ValueError(f"{a.student_init}: {'SimCLR' if a.init_kind == 'simclr' else 'ImageNet'} backbone not found")
    preflight.check_store(a.hard_labels, "hard", keys, a.num_classes)
    selection = best.from_arguments(a, a.num_classes)
    job = distill_loop.DistillJob(
        source=json.loads(a.source), target=json.loads(a.target), num_classes=a.num_classes, arch=a.arch,
        options=json.loads(a.options), seed=a.seed, teacher=a.teacher, hard_labels=a.hard_labels,
        student_init=a.student_init, init_kind=a.init_kind, stage=a.stage, out=a.out, workdir=a.workdir,
        num_workers=distributed.loader_workers(a.workers), best=selection, lab_stats=a.lab_stats)
    distill_loop.run(job, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    sys.exit(distributed.run_script(main, "train_distill.py"))

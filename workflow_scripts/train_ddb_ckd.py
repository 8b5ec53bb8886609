"""DDB cross-path knowledge distillation: a fresh student from the round's cu and ca teachers."""
import argparse
import json
import sys

from segcore import preflight
from segcore.methods.ddb.cli import add_data_arguments, check_data_arguments
from segcore.methods.ddb.options import CKD, check_keys
from segcore.pseudo.prototypes import load_prototypes
from segcore.train import ddb_ckd, distributed


def main():
    p = argparse.ArgumentParser(description=__doc__)
    add_data_arguments(p)
    for k in ddb_ckd.TEACHERS:
        p.add_argument(f"--teacher-{k}", required=True, help=f"the round's ST student of the {k} path")
        p.add_argument(f"--prototypes-{k}", required=True, help=f"prototypes of the {k} teacher (ddb_prototypes)")
    p.add_argument("--out", required=True, help="the distilled student checkpoint (model.pt)")
    p.add_argument("--workdir", required=True, help="folder of the rolling resume state")
    distributed.add_launch_arguments(p)
    distributed.launch(_run, p.parse_args())


def _run(a):
    opts = check_data_arguments(a)
    check_keys(opts, CKD)
    teachers = {k: getattr(a, f"teacher_{k}") for k in ddb_ckd.TEACHERS}
    protos = {k: getattr(a, f"prototypes_{k}") for k in ddb_ckd.TEACHERS}
    for k in ddb_ckd.TEACHERS:
        preflight.check_checkpoint(teachers[k], num_classes=a.num_classes)
        load_prototypes(protos[k], a.num_classes)
    job = ddb_ckd.CKDJob(
        source=json.loads(a.source), target=json.loads(a.target), num_classes=a.num_classes, options=opts,
        seed=a.seed, arch=a.arch, teachers=teachers, prototypes=protos, out=a.out, workdir=a.workdir,
        round=a.round, imagenet=a.imagenet, num_workers=distributed.loader_workers(a.workers))
    ddb_ckd.run(job, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    sys.exit(distributed.run_script(main, "train_ddb_ckd.py"))

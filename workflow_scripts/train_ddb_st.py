"""DDB self-training of one bridging path (cu: cross-domain CutMix, ca: ClassMix) for one round."""
import argparse
import json
import sys

from segcore import preflight
from segcore.methods.ddb.cli import add_data_arguments, check_data_arguments
from segcore.methods.ddb.options import PATH_KEYS, ST, check_keys
from segcore.train import ddb_st, distributed


def main():
    p = argparse.ArgumentParser(description=__doc__)
    add_data_arguments(p)
    p.add_argument("--path", required=True, choices=ddb_st.PATHS, help="bridging path: cu (CutMix) or ca (ClassMix)")
    p.add_argument("--init", default=None, help="round > 1: the previous round's CKD student checkpoint")
    p.add_argument("--out", required=True, help="the path's student checkpoint (model.pt)")
    p.add_argument("--workdir", required=True, help="folder of the rolling resume state")
    distributed.add_launch_arguments(p)
    distributed.launch(_run, p.parse_args())


def _run(a):
    opts = check_data_arguments(a)
    check_keys(opts, ST + PATH_KEYS[a.path])
    if a.round > 1:
        if not a.init:
            raise ValueError(f"--init: round {a.round} starts from the previous round's CKD student; none given")
        preflight.check_checkpoint(a.init, num_classes=a.num_classes, arch=a.arch)
    elif a.init:
        raise ValueError("--init: round 1 starts from ImageNet, not from a checkpoint")
    job = ddb_st.STJob(
        source=json.loads(a.source), target=json.loads(a.target), num_classes=a.num_classes, options=opts,
        seed=a.seed, path=a.path, arch=a.arch, out=a.out, workdir=a.workdir, round=a.round, init=a.init,
        imagenet=a.imagenet, num_workers=distributed.loader_workers(a.workers))
    ddb_st.run(job, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    sys.exit(distributed.run_script(main, "train_ddb_st.py"))

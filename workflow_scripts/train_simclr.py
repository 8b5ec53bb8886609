"""Pretrain the DeepLabV2 backbone with SimCLR on target (and source) images (the `simclr` rule).

Writes {"state_dict": backbone weights in DeepLabV2 key names, "meta": {...}}, the format
that the student initialisation of ProDA stages 2 and 3 reads (load_simclr_backbone).
"""
import argparse
import json
import sys

from segcore import preflight
from segcore.train import distributed, simclr_loop


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", required=True,
                   help='JSON list of image sets: [{"manifest": ..., "split": ..., "resize": [W, H] or null}, ...]')
    p.add_argument("--arch", required=True, help="network whose backbone is pretrained (the config's model.arch)")
    p.add_argument("--num-classes", type=int, required=True, help="classes of the chain (size of the network's head)")
    p.add_argument("--options", default="{}", help="JSON overrides of simclr_loop.DEFAULT_OPTIONS")
    p.add_argument("--seed", type=int, required=True, help="random seed")
    p.add_argument("--out", required=True, help="backbone file to write (backbone.pt)")
    p.add_argument("--workdir", required=True, help="folder of the rolling resume state")
    distributed.add_launch_arguments(p)
    distributed.launch(_run, p.parse_args(argv))


def _run(a):
    images = json.loads(a.images)
    if isinstance(images, dict):
        images = [images]
    opts = json.loads(a.options)
    preflight.check_options(opts, "--options")
    for spec in images:
        preflight.check_data(spec, "--images", labels=False)
    job = simclr_loop.SimCLRJob(images=images, arch=a.arch, num_classes=a.num_classes,
                                options=opts, seed=a.seed, out=a.out, workdir=a.workdir,
                                num_workers=distributed.loader_workers(a.workers))
    simclr_loop.run(job, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    sys.exit(distributed.run_script(main, "train_simclr.py"))

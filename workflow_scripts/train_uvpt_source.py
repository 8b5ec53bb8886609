"""Uni-UVPT source pre-training: encoder (Swin-B / MiT-B5 or a small preset) + DAFormer head
on the labelled source set (the only Uni-UVPT stage that reads source data)."""
import argparse
import json
import sys

from segcore import preflight
from segcore.models.uvpt import build_uvpt, load_imagenet_encoder
from segcore.models.uvpt_presets import PRESETS
from segcore.train import distributed, uvpt_source


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--source", required=True, help="JSON: manifest, split, resize of the labelled source set")
    p.add_argument("--num-classes", type=int, required=True, help="classes of the chain")
    p.add_argument("--backbone", required=True, choices=sorted(PRESETS), help="encoder preset")
    p.add_argument("--imagenet-weights", default="",
                   help="ImageNet encoder file: torchvision's Swin layout, or SegFormer's released MiT layout "
                        "(empty: random init)")
    p.add_argument("--options", required=True, help="JSON of the stage's training options")
    p.add_argument("--seed", type=int, required=True, help="random seed")
    p.add_argument("--out", required=True, help="checkpoint to write (model.pt)")
    p.add_argument("--workdir", required=True, help="folder of the rolling resume state (removed at the end)")
    distributed.add_launch_arguments(p)
    distributed.launch(_run, p.parse_args())


def _run(a):
    opts = json.loads(a.options)
    preflight.check_options(opts, "--options")
    preflight.check_data(json.loads(a.source), "--source", batch_size=opts.get("batch_size"))
    if a.imagenet_weights:  # read and matched before any training (one-line error naming the file)
        load_imagenet_encoder(build_uvpt(a.backbone, a.num_classes), a.imagenet_weights)
    job = uvpt_source.UVPTSourceJob(source=json.loads(a.source), num_classes=a.num_classes, backbone=a.backbone,
                                    options=opts, seed=a.seed, out=a.out, workdir=a.workdir,
                                    imagenet_weights=a.imagenet_weights or None,
                                    num_workers=distributed.loader_workers(a.workers))
    uvpt_source.run(job, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    sys.exit(distributed.run_script(main, "train_uvpt_source.py"))

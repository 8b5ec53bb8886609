"""Evaluate one checkpoint on the target split and write its metrics as JSON (rules/evaluate.smk)."""
import argparse
import json
import sys

import torch

from segcore import preflight
from segcore.atomic import write_json
from segcore.evaluate import evaluate, evaluation_record
from segcore.models.checkpoint import load_model
from segcore.preflight import run_script
from segcore.train.distributed import add_workers_argument, loader_workers


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="checkpoint to evaluate (model.pt)")
    p.add_argument("--manifest", required=True, help="manifest.csv of the converted target set")
    p.add_argument("--split", required=True, help="split of the manifest to evaluate (val, or train)")
    p.add_argument("--num-classes", type=int, required=True,
                   help="classes of the chain (19, or 16 for SYNTHIA: mIoU16 and mIoU13)")
    p.add_argument("--resize", default="null", help="JSON [W, H] or null")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    p.add_argument("--out", required=True, help="metrics JSON to write")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    add_workers_argument(p)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    preflight.check_checkpoint(a.model, num_classes=a.num_classes)
    preflight.check_data({"manifest": a.manifest, "split": a.split}, "--manifest")
    model, _ = load_model(a.model, expect_num_classes=a.num_classes)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = evaluate(model, a.manifest, a.split, a.num_classes, resize=json.loads(a.resize),
                      batch_size=a.batch_size, device=device,
                      num_workers=loader_workers(a.workers, device))
    result = evaluation_record(result, a.model)
    write_json(a.out, result)
    key = "mIoU19" if a.num_classes == 19 else "mIoU16"
    print(f"{a.model}: {key} {result[key]:.2f} on {result['images']} images", flush=True)


if __name__ == "__main__":
    sys.exit(run_script(main, "evaluate.py"))

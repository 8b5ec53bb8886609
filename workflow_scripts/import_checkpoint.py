"""A released ProDA/CPSL checkpoint (the official .pkl layout) in segcore's format, in place of
training its stage (warmup.mode: import, rules/source.smk; released.replace, rules/released.smk), or
for the `released` row of the results table (released.checkpoints; no --val).

The released files are the official best-on-val checkpoints, so the one file is both the stage's
last and its best-on-val checkpoint; its metrics on the evaluation split go to --best-metrics,
labelled as selected there by the authors.
"""
import argparse
import sys
import warnings

import torch

from segcore import preflight
from segcore.atomic import write_json
from segcore.data.classes import class_names
from segcore.models.checkpoint import save_model
from segcore.models.deeplabv2 import build_deeplabv2
from segcore.models.weights import read_official_checkpoint, strict_load
from segcore.train import best


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--released", required=True, help="the released checkpoint (.pkl, ['ResNet101']['model_state'])")
    p.add_argument("--allow-pickle", action="store_true",
                   help="read the file with a full unpickle if torch.load(weights_only=True) refuses it"
                   " (unpickling can run code: only for a file you trust)")
    p.add_argument("--stage", required=True, help="the stage it stands for (recorded in the checkpoint), e.g. warmup")
    p.add_argument("--arch", required=True, help="its network (the config's model.arch; released: resnet101)")
    p.add_argument("--num-classes", type=int, required=True, help="classes of the chain (19, or 16 for SYNTHIA)")
    p.add_argument("--out", required=True, help="checkpoint to write (model.pt)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    best.add_arguments(p)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    selection = best.from_arguments(a, a.num_classes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = read_official_checkpoint(a.released, allow_pickle=a.allow_pickle)
    for w in caught:  # the full unpickle, said in one line
        print(f"import_checkpoint.py: warning: {w.message}", file=sys.stderr, flush=True)
    # stages 2 and 3 of a SimCLR-initialised student carry the bn_clr layer (bn_pretrain.*)
    bn_clr = any(k.startswith("bn_pretrain.") for k in state)
    model = build_deeplabv2(a.num_classes, a.arch, bn_clr=bn_clr)
    strict_load(model, state, a.released)
    meta = {"arch": a.arch, "num_classes": a.num_classes, "bn_clr": bn_clr,
            "classes": list(class_names(a.num_classes)), "stage": a.stage, "init": "released", "released": a.released}
    save_model(a.out, model, meta)
    if selection is not None:
        save_model(selection.model_out, model, dict(meta, selected={"on": "the evaluation split, by the authors",
                                                                     "released": a.released}))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        metrics = selection.validate(model.to(device), device)
        write_json(selection.metrics_out, {**metrics, "checkpoint": {"path": selection.model_out},
                                           "selected": {"on": "the evaluation split, by the authors",
                                                        "released": a.released}})
        print(f"{a.released}: {selection.key} {metrics[selection.key]} on {metrics['images']} images", flush=True)


if __name__ == "__main__":
    sys.exit(preflight.run_script(main, "import_checkpoint.py"))

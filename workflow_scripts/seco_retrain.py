"""SeCo step 3: re-training on the SCC labels, as UDA self-training (source + SCC target labels
on the strong view) or as UniMatch (labelled subset with SCC labels, unlabelled rest)."""
import argparse
import json
import sys

from segcore import preflight
from segcore.seco.refined_store import RefinedStore
from segcore.train import distributed, seco_retrain


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--recipe", required=True, choices=seco_retrain.RECIPES, help="re-training recipe")
    p.add_argument("--source", default=None, help="JSON: manifest, split, resize of the labelled source set "
                                                  "(self_training only)")
    p.add_argument("--target", required=True, help="JSON: manifest, split, resize of the target train set")
    p.add_argument("--num-classes", type=int, required=True, help="the chain's class count (19 or 16)")
    p.add_argument("--options", required=True, help="JSON of the re-training options (seco.retrain)")
    p.add_argument("--seed", type=int, required=True, help="seed of the run")
    p.add_argument("--init", required=True, help="checkpoint the network starts from (the base stage's model)")
    p.add_argument("--refined", required=True, help="the SCC label store (seco_scc.py)")
    p.add_argument("--out", required=True, help="the re-trained model to write")
    p.add_argument("--workdir", required=True, help="folder of the rolling resume state")
    distributed.add_launch_arguments(p)
    distributed.launch(_run, p.parse_args())


def _run(a):
    opts = json.loads(a.options)
    preflight.check_options(opts, "--options")
    keys = preflight.check_data(json.loads(a.target), "--target", batch_size=opts.get("batch_size"), labels=False)
    if a.recipe == "self_training":
        if not a.source:
            raise ValueError("--source: the self_training recipe needs the labelled source set")
        preflight.check_data(json.loads(a.source), "--source", batch_size=opts.get("batch_size"))
    preflight.check_checkpoint(a.init, num_classes=a.num_classes)
    RefinedStore(a.refined, expect_keys=keys, expect_classes=a.num_classes, expect_stage="scc").close()
    job = seco_retrain.RetrainJob(recipe=a.recipe, source=json.loads(a.source) if a.source else None,
                                  target=json.loads(a.target), num_classes=a.num_classes, refined=a.refined,
                                  init=a.init, options=opts, seed=a.seed, out=a.out, workdir=a.workdir,
                                  num_workers=distributed.loader_workers(a.workers))
    seco_retrain.run(job, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    sys.exit(distributed.run_script(main, "seco_retrain.py"))

"""SeCo step 2: semantic connectivity correction. Trains the connectivity classifier on the
PSA components, scores them, keeps / relabels / drops each one, writes the SCC label store."""
import argparse
import json
import sys
from pathlib import Path

from segcore import preflight
from segcore.seco.refined_store import RefinedStore
from segcore.train import distributed, seco_scc


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", required=True, help="JSON: manifest, split, resize of the target train set")
    p.add_argument("--num-classes", type=int, required=True, help="the chain's class count (19 or 16)")
    p.add_argument("--psa-labels", required=True, help="the PSA label store (seco_psa.py)")
    p.add_argument("--options", required=True, help="JSON of the SCC options (seco.scc; see segcore/train/seco_scc.py)")
    p.add_argument("--seed", type=int, required=True, help="seed of the classifier's training")
    p.add_argument("--out", required=True, help="the SCC label store to write")
    p.add_argument("--workdir", required=True, help="folder of the rolling resume state")
    distributed.add_launch_arguments(p)
    distributed.launch(_run, p.parse_args())


def _run(a):
    opts = json.loads(a.options)
    preflight.check_options(opts, "--options")
    keys = preflight.check_data(json.loads(a.target), "--target", labels=False)
    RefinedStore(a.psa_labels, expect_keys=keys, expect_classes=a.num_classes, expect_stage="psa").close()
    if opts.get("imagenet") and not Path(opts["imagenet"]).is_file():
        raise ValueError(f"{opts['imagenet']}: ImageNet ResNet weights not found (seco.scc.imagenet)")
    job = seco_scc.SCCJob(target=json.loads(a.target), num_classes=a.num_classes, psa_labels=a.psa_labels,
                          options=opts, seed=a.seed, out=a.out, workdir=a.workdir,
                          num_workers=distributed.loader_workers(a.workers))
    seco_scc.run(job, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    sys.exit(distributed.run_script(main, "seco_scc.py"))

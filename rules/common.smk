# Shared helpers: config validation, chain lookups, the code version of a stage.
import hashlib
import json
import shlex
import sys
from pathlib import Path

from segcore import config as segconfig
from segcore.data.classes import class_names

try:
    segconfig.validate(config)
except segconfig.ConfigError as err:
    # one line naming the key, before any job is planned
    sys.exit(f"Invalid configuration: {err}")

CHAINS = config["run_chains"]
DATASETS = sorted({d for c in config["chains"].values() for d in (c["source"], c["target"])})
WORKDIR = config["workdir"]
# scripts by absolute path, so the workflow also runs with --directory elsewhere
SCRIPTS = str(Path(workflow.basedir) / "workflow_scripts")

# rows of the results table: run folder -> (method, stage)
BASELINE_RUNS = {
    "source_only": ("source_only", "final"),
    "warmup": ("proda", "warmup"),
    "oracle": ("oracle", "final"),
}


wildcard_constraints:
    chain="|".join(config["chains"]),
    dataset="|".join(DATASETS),
    run="[a-z0-9_]+(/[a-z0-9_]+)*",


def chain_cfg(name):
    return config["chains"][name]


def manifest(dataset):
    return f"results/data/{dataset}/manifest.csv"


def data_spec(dataset, split):
    """JSON handed to training scripts: which converted set to read, and at which size."""
    return json.dumps({"manifest": manifest(dataset), "split": split,
                       "resize": config["datasets"][dataset]["resize"]})


def stage_options_json(stage):
    opts = segconfig.stage_options(config, stage)
    if stage == "warmup":
        opts.update({k: config["warmup"][k] for k in segconfig.WARMUP_ONLY_KEYS if k != "mode"})
    return json.dumps(opts, sort_keys=True)


def imagenet_input():
    path = config["model"]["imagenet_weights"]
    return [path] if path else []


def code_version(*paths):
    """Hash of the source files a stage runs, passed as a param so that Snakemake reruns
    the stage (and what follows) when its code changes (README: "Code changes")."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(workflow.basedir) / p
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p]
        for f in files:
            h.update(f.relative_to(workflow.basedir).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


CODE_DATA = ["segcore/data/classes.py", "segcore/data/io.py", "segcore/data/convert.py",
             "segcore/data/layouts.py", "workflow_scripts/convert.py"]
CODE_TRAIN = ["segcore/data", "segcore/models", "segcore/train", "segcore/methods/warmup.py",
              "segcore/atomic.py", "workflow_scripts/train_source.py"]
CODE_EVAL = ["segcore/data", "segcore/models", "segcore/metrics.py", "segcore/evaluate.py",
             "workflow_scripts/evaluate.py"]

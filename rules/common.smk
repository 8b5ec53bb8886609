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


def repo_path(path):
    """A config path relative to the working directory, else to this repository (shipped files)."""
    if path is None or Path(path).is_absolute() or Path(path).exists():
        return path
    return str(Path(workflow.basedir) / path)


PUBLISHED = repo_path(config["published_results"])
# scripts by absolute path, so the workflow also runs with --directory elsewhere
SCRIPTS = str(Path(workflow.basedir) / "workflow_scripts")

# How a training rule starts its script: one process per GPU under torchrun when the job has
# more than one GPU, else one plain process (no GPU, or one). `resources.gpu` is 0 in every
# training rule (local runs) and a profile raises it per rule (profiles/slurm). Resources are
# not params, so switching profiles reruns nothing; the command template stays the same.
TRAIN_LAUNCH = ("$([ {resources.gpu} -gt 1 ] && echo torchrun --standalone --nproc_per_node={resources.gpu}"
                " || echo python)")

# rows of the results table: run folder -> (method, stage)
TABLE_RUNS = {
    "source_only": ("source_only", "source_only"),
    "warmup": ("proda", "warmup"),
    "proda/stage1": ("proda", "stage1"),
    "proda/stage2": ("proda", "stage2"),
    "proda/stage3": ("proda", "stage3"),
    "cpsl/stage1": ("cpsl", "stage1"),
    "cpsl/stage2": ("cpsl", "stage2"),
    "cpsl/stage3": ("cpsl", "stage3"),
    "oracle": ("oracle", "oracle"),
}


wildcard_constraints:
    chain="|".join(config["chains"]),
    dataset="|".join(DATASETS),
    run="[a-z0-9_]+(/[a-z0-9_]+)*",
    method="proda|cpsl",


def chain_cfg(name):
    return config["chains"][name]


def manifest(dataset):
    return f"results/data/{dataset}/manifest.csv"


def data_spec(dataset, split):
    """JSON handed to training scripts: which converted set to read, and at which size."""
    return json.dumps({"manifest": manifest(dataset), "split": split,
                       "resize": config["datasets"][dataset]["resize"]})


def stage_options_json(stage):
    return json.dumps(segconfig.stage_options(config, stage), sort_keys=True)


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
              "segcore/atomic.py", "segcore/preflight.py", "workflow_scripts/train_source.py"]
CODE_PSEUDO = ["segcore/data", "segcore/models", "segcore/pseudo", "segcore/methods/warmup.py", "segcore/preflight.py",
               "workflow_scripts/pseudo_labels.py", "workflow_scripts/init_prototypes.py"]
# the methods modules each stage imports (not the whole folder: a change to the distillation
# code must not rerun stage 1)
CODE_STAGE1 = CODE_TRAIN + ["segcore/methods/__init__.py", "segcore/methods/losses.py", "segcore/methods/proda.py",
                            "segcore/methods/rectify.py", "segcore/pseudo", "workflow_scripts/train_proda_stage1.py"]
CODE_DISTILL = CODE_TRAIN + ["segcore/methods/__init__.py", "segcore/methods/losses.py", "segcore/methods/distill.py",
                             "segcore/pseudo/store.py", "segcore/pseudo/store_base.py", "segcore/pseudo/hard_store.py",
                             "workflow_scripts/train_distill.py"]
# CPSL stage 1 reuses ProDA's self-training loss and the rectification helpers
CODE_CPSL = CODE_TRAIN + ["segcore/methods/__init__.py", "segcore/methods/losses.py", "segcore/methods/proda.py",
                          "segcore/methods/rectify.py", "segcore/methods/cpsl.py", "segcore/methods/sinkhorn.py",
                          "segcore/methods/feature_memory.py", "segcore/pseudo", "workflow_scripts/train_cpsl_stage1.py"]
CODE_CLASS_DISTRIBUTION = ["segcore/pseudo", "segcore/data/classes.py", "segcore/atomic.py", "segcore/preflight.py",
                           "workflow_scripts/class_distribution.py"]
CODE_EVAL = ["segcore/data", "segcore/models", "segcore/metrics.py", "segcore/evaluate.py", "segcore/preflight.py",
             "workflow_scripts/evaluate.py"]

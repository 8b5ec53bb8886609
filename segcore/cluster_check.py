"""Cluster settings that cannot work, found when the workflow is parsed, before any job is
submitted (``rules/cluster_checks.smk`` calls :func:`check_rules` with every rule's final
resources, after a profile's ``set-resources`` or a command-line ``--set-resources``).

Each finding is one line naming the rule, the resource, where it came from and, for the batch
size, the config key, e.g.::

    Invalid cluster settings: rule proda_stage1 gets gpu=4 (set-resources) but config key
    'proda.stage1.batch_size' (merged from train.batch_size) is 2, not divisible by 4

(one line in practice). What is checked, and why it cannot work otherwise:

- ``gpu`` is a whole number >= 0 (it becomes ``sbatch --gpus=N`` and torchrun's process count);
- a rule that starts torchrun with ``gpu`` > 1 runs one process per GPU and splits the global
  batch: every batch size of its stages must be divisible by ``gpu`` (else each rank stops at
  its start with ``batch_size ... is not divisible by the number of processes``);
- a rule that does not start torchrun runs one process: ``gpu`` > 1 would hold GPUs it never
  uses;
- ``cpus_per_gpu`` without a GPU is ignored by the Slurm plugin (the job gets its threads'
  worth of CPUs instead); ``gres`` next to ``gpu`` asks Slurm for the GPUs twice;
- ``cpus_per_gpu``, ``mem_mb`` and ``runtime`` (minutes) are positive numbers.

Pure logic: no Snakemake import, so it is tested on its own (tests/test_cluster_check.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from segcore import config as segconfig

PREFIX = "Invalid cluster settings: "
#: resources that must be positive numbers when set (runtime in minutes)
POSITIVE = ("cpus_per_gpu", "mem_mb", "runtime")


@dataclass(frozen=True)
class BatchKey:
    """The global batch size one stage of a rule trains with, and the config key it comes from."""

    key: str  #: "proda.stage1.batch_size"
    value: object  #: the merged value
    merged_from: str | None = None  #: "train.batch_size" when the stage's section does not set it


@dataclass(frozen=True)
class RuleSettings:
    """What a rule gets: its final resources, where each came from, and what it launches."""

    rule: str
    resources: dict  #: name -> concrete value (an unevaluated expression is left out)
    origin: dict = field(default_factory=dict)  #: name -> "set-resources" / "default-resources" / "rule"
    torchrun: bool = False  #: the rule's command starts one process per GPU when gpu > 1
    batches: tuple[BatchKey, ...] = ()  #: the global batch sizes of the stages it runs


def _section(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def stage_batch(config: dict, stage: str) -> BatchKey:
    """The merged ``batch_size`` of a training stage (``segcore.config.stage_options``)."""
    value = segconfig.stage_options(config, stage).get("batch_size")
    own = _section(config, stage)
    sets_it = isinstance(own, dict) and own.get("batch_size") is not None
    return BatchKey(f"{stage}.batch_size", value, None if sets_it else "train.batch_size")


def options_batch(config: dict, options_json: str) -> BatchKey | None:
    """The batch size of a rule whose ``options`` param is not a declared stage's (the
    ``simclr`` rule: ``simclr.options``): the config section holding exactly these options
    names the key. None when the options carry no batch size (the script's default applies)."""
    try:
        options = json.loads(options_json)
    except (TypeError, ValueError):
        return None
    if not isinstance(options, dict) or options.get("batch_size") is None:
        return None

    def find(node, path):
        if isinstance(node, dict):
            if node == options and path:
                return path
            for key, sub in node.items():
                hit = find(sub, f"{path}.{key}" if path else str(key))
                if hit:
                    return hit
        return None

    where = find(config, "")
    return BatchKey(f"{where}.batch_size" if where else "batch_size", options["batch_size"])


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_number(value):
    """A resource value as a number where it is one (``--set-resources r:gpu=1.5`` arrives as
    the string "1.5"); else the value unchanged."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() else number
    return value


def check_rule(settings: RuleSettings) -> list[str]:
    """Every finding for one rule, each a full line starting with :data:`PREFIX`."""
    res = {name: _as_number(value) for name, value in settings.resources.items() if value is not None}
    rule = settings.rule

    def gets(name):
        return f"rule {rule} gets {name}={res[name]} ({settings.origin.get(name, 'rule')})"

    errors = []
    gpu = res.get("gpu", 0)
    if "gpu" in res and not (_is_number(gpu) and float(gpu).is_integer() and gpu >= 0):
        errors.append(f"{gets('gpu')} but the GPU count must be a whole number >= 0")
        gpu = None
    for name in POSITIVE:
        if name in res and not (_is_number(res[name]) and res[name] > 0):
            errors.append(f"{gets(name)} but {name} must be a positive number")
    if gpu is None:
        return [PREFIX + e for e in errors]
    gpu = int(gpu)
    if res.get("cpus_per_gpu") and gpu == 0 and _is_number(res["cpus_per_gpu"]) and res["cpus_per_gpu"] > 0:
        errors.append(f"{gets('cpus_per_gpu')} but no GPU (gpu=0): the job would get one CPU per thread "
                      f"instead; give it cpus_per_task, or a GPU")
    if gpu > 0 and res.get("gres"):
        errors.append(f"{gets('gres')} next to gpu={gpu}: Slurm would be asked for the GPUs twice; "
                      f"use gpu only")
    if gpu > 1 and not settings.torchrun:
        errors.append(f"{gets('gpu')} but it runs one process (only training rules start one process per GPU): "
                      f"{gpu - 1} GPU(s) would stay idle; give it gpu=1")
    if gpu > 1 and settings.torchrun:
        for batch in settings.batches:
            merged = f" (merged from {batch.merged_from})" if batch.merged_from else ""
            if not (_is_number(batch.value) and int(batch.value) == batch.value):
                continue  # the config schema reports a bad batch size itself
            if int(batch.value) % gpu:
                errors.append(f"{gets('gpu')} but config key '{batch.key}'{merged} is {batch.value}, "
                              f"not divisible by {gpu}")
    return [PREFIX + e for e in errors]


def check_rules(rules) -> list[str]:
    """The findings of every rule, in order."""
    return [line for settings in rules for line in check_rule(settings)]

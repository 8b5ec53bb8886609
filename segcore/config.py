"""Validate the workflow configuration and derive each stage's options from it.

The Snakefile calls ``validate`` at parse time, so a bad config stops the run before
any job starts, with one line that names the key and the reason.

The schema ships inside the package (``segcore/schemas/``, read with importlib.resources, so
a plain ``pip install .`` validates too): ``config.schema.yaml`` holds the shared keys, and
each method declared in :mod:`segcore.stages` adds its own section file. The allowed keys of
every training stage's section are derived when the schema is loaded: the keys of
``train_options`` plus the stage's own properties.
"""
from __future__ import annotations

import copy
from importlib import resources

import yaml
from jsonschema import Draft202012Validator, validators

from segcore.stages import METHODS, TRAIN_STAGES, methods_of_rule

SCHEMA_FILE = "config.schema.yaml"
# libyaml's loader where PyYAML has it: the schema is read each time the Snakefile is parsed
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ConfigError(ValueError):
    """A config value is wrong; the message names the key."""


def _with_defaults(cls):
    validate_properties = cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(cls, {"properties": set_defaults})


_DefaultingValidator = _with_defaults(Draft202012Validator)


def _schema_text(name: str) -> str:
    return resources.files("segcore").joinpath("schemas", name).read_text(encoding="utf-8")


def _resolve(schema: dict, node: dict) -> dict:
    """``node``, or the local ``$defs`` entry its ``$ref`` points at."""
    while "$ref" in node:
        target = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _check_released(config: dict) -> None:
    """``released``: a replaced run has its file for every chain that runs; ``allow_pickle``
    names files of ``checkpoints``."""
    rel = config["released"]
    for run in rel["replace"]:
        lacking = [c for c in config["run_chains"] if run not in rel["checkpoints"].get(c, {})]
        if lacking:
            raise ConfigError(f"config key 'released.replace': {run} needs its released checkpoint under"
                              f" released.checkpoints.{lacking[0]}")
    files = {f for runs in rel["checkpoints"].values() for f in runs.values()}
    for f in rel["allow_pickle"]:
        if f not in files:
            raise ConfigError(f"config key 'released.allow_pickle': {f} is not a file of released.checkpoints")
    for chain in rel["checkpoints"]:
        if chain not in config["chains"]:
            raise ConfigError(f"config key 'released.checkpoints': unknown chain '{chain}'")


def load_schema() -> dict:
    """The full config schema: the shared keys, each declared method's section, and the
    derived allowed keys of every training stage's section."""
    schema = yaml.load(_schema_text(SCHEMA_FILE), Loader=_YAML_LOADER)
    for method in METHODS:
        fragment = yaml.load(_schema_text(method.schema), Loader=_YAML_LOADER)
        for part in ("properties", "$defs"):
            clash = set(fragment.get(part, {})) & set(schema.get(part, {}))
            if clash:
                raise ValueError(f"segcore/schemas/{method.schema}: redefines {part} {sorted(clash)}")
            schema.setdefault(part, {}).update(fragment.get(part, {}))
    train_keys = list(schema["$defs"]["train_options"]["properties"])
    for stage in TRAIN_STAGES:
        node = schema
        for part in stage.split("."):
            node = _resolve(schema, node["properties"][part])
        own = [k for k in node.get("properties", {}) if k not in train_keys]
        node["propertyNames"] = {"enum": train_keys + own}
    return schema


def _key(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _first_error(validator, instance, where: str = ""):
    errors = sorted(validator.iter_errors(instance), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        e = errors[0]
        # a value that fits none of several forms (a chain's source: a name or a list of names):
        # say what is wrong with it in the form it has, not only that no form fits
        while e.validator in ("oneOf", "anyOf") and e.context:
            wrong_type = {c.schema_path[0] for c in e.context if c.validator == "type" and not c.relative_path}
            e = min((c for c in e.context if c.schema_path[0] not in wrong_type), default=e.context[0],
                    key=lambda c: (len(c.relative_path), str(c.relative_path)))
        raise ConfigError(f"config key '{where}{_key(e)}': {e.message}")


def validate(config: dict, schema: dict | None = None) -> dict:
    """Fill in defaults and validate in place; raise ConfigError naming the first bad key."""
    schema = schema or load_schema()
    if "seed" in config:  # the key of earlier versions: one seed, now a list of them
        raise ConfigError(f"config key 'seed': renamed to 'seeds', a list (seeds: [{config['seed']}])")
    _first_error(_DefaultingValidator(schema), config)
    for name in config["run_chains"]:
        if name not in config["chains"]:
            raise ConfigError(f"config key 'run_chains': unknown chain '{name}' (known: {', '.join(config['chains'])})")
    for name, chain in config["chains"].items():
        missing = [d for d in chain_datasets(chain) if d not in config["datasets"]]
        if missing:
            raise ConfigError(f"config key 'chains.{name}': dataset {missing[0]} not configured under 'datasets'")
        if source_datasets(chain) == ["synthia"] and chain["num_classes"] != 16:
            raise ConfigError(
                f"config key 'chains.{name}.num_classes': SYNTHIA chains use the 16-class protocol,"
                f" got {chain['num_classes']}"
            )
    if config["warmup"]["mode"] == "import":
        lacking = [c for c in config["run_chains"] if c not in config["warmup"]["released"]]
        if lacking:
            raise ConfigError(f"config key 'warmup.released': warmup.mode import needs the released checkpoint"
                              f" of chain {lacking[0]}")
    _check_released(config)
    for method in METHODS:  # a method's own seeds replace `seeds` one for one
        own = config.get(method.name, {}).get("seeds")
        if own is not None and len(own) != len(config["seeds"]):
            raise ConfigError(f"config key '{method.name}.seeds': {len(own)} seeds for the {len(config['seeds'])}"
                              " of `seeds` (one each)")
    # every stage's merged options must be valid training options too
    train_schema = dict(schema["$defs"]["train_options"], **{"$defs": schema["$defs"]})
    train_keys = set(schema["$defs"]["train_options"]["properties"])
    for stage in TRAIN_STAGES:
        merged = {k: v for k, v in stage_options(config, stage).items() if k in train_keys}
        _first_error(Draft202012Validator(train_schema), merged, where=f"{stage}.")
    return config


def check_student_init(config: dict) -> None:
    """What the workflow (the Snakefile, after ``validate``) needs of a valid config to run the
    stage-2 students: ImageNet's file for ``student_init: imagenet``; for SimCLR at full scale a
    configured file, since the `simclr` rule is a small demo pretraining. The schema defaults alone
    (a full-scale network, no SimCLR file) are valid, not runnable."""
    for method in methods_of_rule("distill_stage2"):
        init = stage_options(config, f"{method}.stage2")["student_init"]
        if init == "imagenet" and not config["model"]["imagenet_weights"]:
            raise ConfigError(f"config key '{method}.stage2.student_init': imagenet needs model.imagenet_weights")
        if init == "simclr" and not config["simclr"]["weights"] and config["model"]["arch"] != "small":
            raise ConfigError(
                f"config key 'simclr.weights': null with model.arch {config['model']['arch']} would pretrain the"
                f" {method} stage-2 student with the demo's short SimCLR rule; give the SimCLRv2 file, or set"
                f" {method}.stage2.student_init: imagenet"
            )


def source_datasets(chain: dict) -> list[str]:
    """A chain's source dataset(s) as a list: one, or several for a multi-source chain (whose
    source is the union of their converted sets)."""
    source = chain["source"]
    return list(source) if isinstance(source, list) else [source]


def chain_datasets(chain: dict) -> list[str]:
    """Every dataset a chain reads: its source(s), then its target."""
    return source_datasets(chain) + [chain["target"]]


def stage_options(config: dict, stage: str) -> dict:
    """The options of one stage ("warmup", "proda.stage1", ...): `train` with every key of
    the stage's own section on top (its overrides and its method options)."""
    section = config
    for part in stage.split("."):
        section = section.get(part, {})
    opts = copy.deepcopy(config["train"])
    opts.update({k: copy.deepcopy(v) for k, v in section.items() if v is not None})
    return opts


#: keys of a stage's options that the workflow reads, not its training job: how often it
#: validates (its own ``--val-every``) and which checkpoint the next stages read
WORKFLOW_KEYS = ("val_every", "handoff")


def job_options(config: dict, stage: str) -> dict:
    """The options a stage's job gets: ``stage_options`` without :data:`WORKFLOW_KEYS`, so that
    switching the hand-off does not rerun the stage, and stages that never validate (DDB,
    Uni-UVPT, SeCo) do not rerun when ``train.val_every`` changes."""
    return {k: v for k, v in stage_options(config, stage).items() if k not in WORKFLOW_KEYS}


def load_config_file(path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f) or {}

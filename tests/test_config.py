"""The config schema: defaults filled in, and bad values named by key in one line."""
import copy
from pathlib import Path

import pytest

from segcore import config as C

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg():
    return C.load_config_file(ROOT / "config.yaml")


def test_default_config_is_valid_and_defaults_are_filled(cfg):
    C.validate(cfg)
    assert cfg["train"]["momentum"] == 0.9          # from the schema, not config.yaml
    assert cfg["evaluate"]["split"] == "val"
    assert cfg["datasets"]["gta5"]["size_mismatch"] == "error"
    assert cfg["warmup"]["adv_weight"] == 0.01


def test_every_schema_key_has_description_and_default():
    schema = C.load_schema()
    missing = []

    def resolve(sub):  # a local $ref's description/default count as the key's own
        if "$ref" in sub:
            target = schema
            for part in sub["$ref"].lstrip("#/").split("/"):
                target = target[part]
            sub = {**resolve(target), **sub}
        return sub

    def walk(node, path):
        for name, sub in node.get("properties", {}).items():
            sub = resolve(sub)
            if "description" not in sub or "default" not in sub:
                missing.append(f"{path}{name}")
            walk(sub, f"{path}{name}.")
        for name, sub in node.get("$defs", {}).items():
            walk(sub, f"$defs.{name}.")

    walk(schema, "")
    assert missing == []


def test_stage_options_merge_overrides(cfg):
    cfg["oracle"] = {"iterations": 7}
    C.validate(cfg)
    assert C.stage_options(cfg, "oracle")["iterations"] == 7
    assert C.stage_options(cfg, "source_only")["iterations"] == cfg["train"]["iterations"]
    assert C.stage_options(cfg, "warmup")["adv_weight"] == 0.01
    cfg["proda"]["stage1"] = {"proto_consistW": 3.0}
    C.validate(cfg)
    s1 = C.stage_options(cfg, "proda.stage1")
    assert s1["proto_consistW"] == 3.0 and s1["lr"] == 1e-4 and s1["batch_size"] == cfg["train"]["batch_size"]


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"train": {"lr": -0.1}}, "config key 'train.lr': -0.1 is less than or equal to the minimum of 0"),
        ({"model": {"arch": "vgg16"}}, "config key 'model.arch': 'vgg16' is not one of"),
        ({"run_chains": ["gta5_to_mapillary"]}, "config key 'run_chains': unknown chain 'gta5_to_mapillary'"),
        ({"oracle": {"lr": 0}}, "config key 'oracle.lr': 0 is less than or equal to the minimum of 0"),
        ({"warmup": {"mode": "gan"}}, "config key 'warmup.mode': 'gan' is not one of"),
        ({"train": {"crop": [896]}}, "config key 'train.crop'"),
        ({"chains": {"synthia_to_cityscapes": {"source": "synthia", "target": "cityscapes", "num_classes": 19}}},
         "config key 'chains.synthia_to_cityscapes.num_classes': SYNTHIA chains use the 16-class protocol"),
        ({"typo_key": 1}, "'typo_key' was unexpected"),
        # the allowed keys of a stage section are derived from train_options and the stage's own keys
        ({"proda": {"stage1": {"proto_consitW": 1.0}}}, "config key 'proda.stage1': 'proto_consitW' is not one of"),
        ({"cpsl": {"stage2": {"treshold": 0.9}}}, "config key 'cpsl.stage2': 'treshold' is not one of"),
        ({"oracle": {"adv_weight": 0.1}}, "config key 'oracle': 'adv_weight' is not one of"),
    ],
)
def test_bad_config_names_key_and_reason(cfg, patch, message):
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**copy.deepcopy(cfg[key]), **value}
        else:
            cfg[key] = value
    with pytest.raises(C.ConfigError) as err:
        C.validate(cfg)
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_full_scale_configs_are_valid():
    for name in ("gta5_to_cityscapes.yaml", "synthia_to_cityscapes.yaml"):
        cfg = C.load_config_file(ROOT / "config.yaml")
        override = C.load_config_file(ROOT / "configs" / name)
        _deep_update(cfg, override)
        C.validate(cfg)
        assert cfg["model"]["arch"] == "resnet101"
        assert cfg["demo"]["enabled"] is False


def _deep_update(base, new):
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v

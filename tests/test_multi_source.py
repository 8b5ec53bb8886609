"""A multi-source chain (GTA5+SYNTHIA -> Cityscapes): its source is the union of the converted
sets, which every method's source reader takes (the plan of every job: test_full_scale_plan.py)."""
import pytest
import torch

from workflow_helpers import copy_workdir, tiny_config, write_config

MULTI = "gta5_synthia_to_cityscapes"


def test_union_set_draws_from_every_source(tmp_path):
    from segcore.data import demo
    from segcore.data.convert import convert_dataset
    from segcore.data.datasets import UnionSet, open_sets
    from segcore.methods.ddb.data import ddb_view

    demo.make_gta5(tmp_path / "gta", 3, size=(80, 44))
    demo.make_synthia(tmp_path / "syn", 2, size=(64, 38))
    convert_dataset("gta5", tmp_path / "gta", tmp_path / "g", workers=1, progress=False)
    convert_dataset("synthia", tmp_path / "syn", tmp_path / "s", workers=1, progress=False)
    specs = [{"manifest": str(tmp_path / "g/manifest.csv"), "split": "train", "resize": [80, 44]},
             {"manifest": str(tmp_path / "s/manifest.csv"), "split": "train", "resize": [64, 38]}]
    union = open_sets(specs, 19, transform=ddb_view(64, (32, 32), 0.5, cat_max_ratio=0.75))
    assert isinstance(union, UnionSet) and len(union) == 5
    assert union.keys == union.parts[0].keys + union.parts[1].keys
    for i in range(5):
        s = union[(i, 123)]
        assert s["image"].shape == (3, 32, 32) and s["label"].shape == (32, 32) and s["index"] == i
    assert torch.equal(union[(4, 7)]["image"], union.parts[1][(1, 7)]["image"])
    assert open_sets(specs[0], 19).keys == union.parts[0].keys  # one spec: the plain dataset


def multi_source_config(**overrides):
    cfg = tiny_config(**overrides)
    cfg["chains"] = {"gta5_to_cityscapes": {"source": "gta5", "target": "cityscapes", "num_classes": 19},
                     "synthia_to_cityscapes": {"source": "synthia", "target": "cityscapes", "num_classes": 16},
                     MULTI: {"source": ["gta5", "synthia"], "target": "cityscapes", "num_classes": 19}}
    return cfg


def test_multi_source_jobs_train_on_both_sets(tiny_workflow):
    """Source-only and a DDB path run on the union in a real workflow; with the SYNTHIA images gone,
    the same job stops before training with a line naming the missing file."""
    work = copy_workdir(tiny_workflow.work, tiny_workflow.work.parent / "multi source")
    write_config(work, multi_source_config(run_chains=[MULTI]))
    run = tiny_workflow._replace(work=work)
    targets = [f"results/{MULTI}/source_only/model.pt", f"results/{MULTI}/ddb/r1_st_cu/model.pt"]
    proc = run.snakemake(*targets)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "rule convert" not in out  # both converted sets of the finished run are reused
    assert all((work / t).is_file() for t in targets)
    # the SYNTHIA half of the union is read: without one of its labels the job refuses to start
    synthia_label = sorted((work / "results/data/synthia/labels").rglob("*.png"))[0]
    synthia_label.unlink()
    proc = run.snakemake(targets[0], "--forcerun", "source_only")
    assert proc.returncode != 0
    log = (work / f"logs/source_only/{MULTI}.log").read_text()
    assert f"{synthia_label.name}: label listed in results/data/synthia/manifest.csv not found" in log


@pytest.mark.parametrize("source, says", [
    (["gta5"], "source': ['gta5'] is too short"),
    (["gta5", "gta5"], "source': ['gta5', 'gta5'] has non-unique elements"),
    (["gta5", "mapillary"], "source.1': 'mapillary' is not one of ['gta5', 'synthia']"),
    ("mapillary", "source': 'mapillary' is not one of ['gta5', 'synthia']"),
])
def test_a_multi_source_chain_names_two_or_more_known_datasets(source, says):
    from segcore.config import ConfigError, validate

    validate(multi_source_config(run_chains=[MULTI]))  # the good one passes
    cfg = multi_source_config(run_chains=[MULTI])
    cfg["chains"][MULTI]["source"] = source
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value) == f"config key 'chains.{MULTI}.{says}"

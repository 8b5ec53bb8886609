"""DDB in the workflow: its declaration and rows, its config section (official defaults, the
per-path options), and the plan of its rules (two rounds, round 2 from round 1's student).
The tiny end-to-end run, the cu-only rerun and the round-2 checkpoint check are in
test_workflow.py (they share its run)."""
import re

import pytest
import yaml

from segcore import config as segconfig
from segcore import stages
from segcore.methods.ddb.options import CKD, PATH_KEYS, ST, path_options
from workflow_helpers import ROOT, planned_jobs, snakemake, tiny_config, write_config

DDB_STAGES = ("r1_st_cu", "r1_st_ca", "r1_ckd", "r2_st_cu", "r2_st_ca", "r2_ckd")
OFFICIAL = {"iterations": 40000, "batch_size": 4, "crop": [512, 512], "lr": 6.0e-5, "head_lr_mult": 10,
            "weight_decay": 0.01, "poly_power": 1.0, "warmup_iterations": 1500, "warmup_ratio": 1.0e-6,
            "source_base_width": 1280, "target_base_width": 1024, "cat_max_ratio": 0.75, "flip": 0.5,
            "pseudo_threshold": 0.968, "jitter_strength": 0.2, "jitter_p": 0.8, "blur_p": 0.5}


def _validated(cfg):
    return segconfig.validate(cfg)


def _demo_config():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def test_six_rows_per_chain_before_the_oracle():
    runs = {run: ms for run, ms in stages.TABLE_RUNS.items() if ms[0] == "ddb"}
    assert list(runs) == [f"ddb/{s}" for s in DDB_STAGES]
    assert [s for _, s in runs.values()] == list(DDB_STAGES)
    assert stages.METHOD_ORDER.index("ddb") < stages.METHOD_ORDER.index("oracle")
    rules = {s.name: s.rule for s in stages.DDB.stages}
    assert rules == {s: ("ddb_ckd" if s.endswith("ckd") else "ddb_st") for s in DDB_STAGES}
    assert "rules/ddb.smk" in stages.RULE_FILES


def test_published_number_beside_round_two_ckd():
    from segcore.tables import load_published

    pub = load_published(ROOT / "configs" / "published_results.csv")
    row = pub[(pub.method == "ddb") & (pub.chain == "gta5_to_cityscapes")]
    assert row.stage.tolist() == ["r2_ckd"] and row.value.tolist() == [62.7]


def test_schema_defaults_are_the_official_recipe():
    cfg = _validated({})
    st, ckd = segconfig.stage_options(cfg, "ddb.st"), segconfig.stage_options(cfg, "ddb.ckd")
    for opts in (st, ckd):
        assert {k: opts[k] for k in OFFICIAL} == OFFICIAL
        assert opts["freeze_bn"] is False and opts["official_1d_blur"] is False
    assert st["cut_area"] == 0.4 and st["ema_alpha"] == 0.99 and st["later_round_lr_mult"] == 0.1
    assert st["classmix_official_ignore"] is False and st["ema_train_mode"] is True
    assert ckd["official_full_resolution"] is False and ckd["rectify_on_prob"] and not ckd["use_pl_weight"]
    assert cfg["ddb"]["arch"] == "resnet101_v1c"
    assert cfg["ddb"]["prototypes"] == {"resolution": "input", "min_pixels": 10, "cap": 3000, "batch_size": 4}
    # every key the steps read is in the merged options
    assert set(ST) | {k for keys in PATH_KEYS.values() for k in keys} <= set(st)
    assert set(CKD) <= set(ckd)


@pytest.mark.parametrize("chain", ["gta5_to_cityscapes", "synthia_to_cityscapes"])
def test_full_scale_configs_carry_the_official_values_over_the_demo(chain):
    demo = _demo_config()["ddb"]
    full = yaml.safe_load((ROOT / "configs" / f"{chain}.yaml").read_text())["ddb"]
    official = _validated({})["ddb"]
    # --configfile is layered over config.yaml: every key the demo sets is set back
    assert set(demo) <= set(full)
    for section in ("st", "ckd"):
        assert set(demo[section]) <= set(full[section]), section
        for key, value in full[section].items():
            if key != "log_every":
                assert value == official[section][key], (section, key)
    assert full["prototypes"] == {k: v for k, v in official["prototypes"].items() if k != "batch_size"}
    assert full["arch"] == "resnet101_v1c" and full["imagenet_weights"].endswith(".pth")


def test_demo_values_and_bad_keys():
    cfg = _validated(_demo_config())
    assert cfg["ddb"]["arch"] == "small_v1c" and cfg["ddb"]["imagenet_weights"] is None
    bad = _demo_config()
    bad["ddb"]["st"]["cut_aera"] = 0.3
    with pytest.raises(segconfig.ConfigError, match=r"config key 'ddb.st': 'cut_aera' is not one of"):
        _validated(bad)
    bad = _demo_config()
    bad["ddb"]["st"]["cut_area"] = 1.5
    with pytest.raises(segconfig.ConfigError, match=r"config key 'ddb.st.cut_area'"):
        _validated(bad)
    bad = _demo_config()
    bad["ddb"]["arch"] = "resnet101"
    with pytest.raises(segconfig.ConfigError, match=r"config key 'ddb.arch'"):
        _validated(bad)


def test_each_path_gets_only_its_own_options():
    opts = segconfig.stage_options(_validated({}), "ddb.st")
    cu, ca = path_options(opts, "cu"), path_options(opts, "ca")
    assert "cut_area" in cu and "classmix_official_ignore" not in cu
    assert "classmix_official_ignore" in ca and "cut_area" not in ca
    assert {k: v for k, v in cu.items() if k != "cut_area"} == {
        k: v for k, v in ca.items() if k != "classmix_official_ignore"}
    with pytest.raises(ValueError, match="unknown DDB path 'cx'"):
        path_options(opts, "cx")


@pytest.fixture(scope="module")
def planned_round_two(tmp_path_factory):
    work = tmp_path_factory.mktemp("ddb plan")
    write_config(work, tiny_config(run_chains=["gta5_to_cityscapes"]))
    proc = snakemake(work, "-n", "-p", "results/gta5_to_cityscapes/eval/ddb/r2_ckd.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_round_two_plan_starts_from_round_one_student(planned_round_two):
    out = planned_round_two
    jobs = planned_jobs(out)
    assert {k: jobs[k] for k in ("ddb_st", "ddb_prototypes", "ddb_ckd", "evaluate")} == {
        "ddb_st": 4, "ddb_prototypes": 4, "ddb_ckd": 2, "evaluate": 1}
    chain = "results/gta5_to_cityscapes/ddb"
    st = [ln for ln in out.splitlines() if "train_ddb_st.py" in ln]
    assert len(st) == 4
    for path in ("cu", "ca"):
        (r1,) = [ln for ln in st if f"--path {path} --round 1 " in ln]
        (r2,) = [ln for ln in st if f"--path {path} --round 2 " in ln]
        assert "--init" not in r1
        assert f"--init {chain}/r1_ckd/model.pt" in r2 and f"--out {chain}/r2_st_{path}/model.pt" in r2
        # each path's job carries only its own path option
        own, other = ("cut_area", "classmix_official_ignore") if path == "cu" else (
            "classmix_official_ignore", "cut_area")
        assert f'"{own}"' in r1 and f'"{other}"' not in r1
    (ckd2,) = [ln for ln in out.splitlines() if "train_ddb_ckd.py" in ln and "--round 2 " in ln]
    for path in ("cu", "ca"):
        assert f"--teacher-{path} {chain}/r2_st_{path}/model.pt" in ckd2
        assert f"--prototypes-{path} {chain}/r2_st_{path}/prototypes.pt" in ckd2
    assert "--imagenet" not in out  # the tiny config has no ImageNet file


def test_configured_imagenet_file_initialises_round_one_and_every_ckd_student(tmp_path):
    (tmp_path / "v1c.pth").write_bytes(b"stand-in: planning reads no weights")
    ddb = dict(tiny_config()["ddb"], imagenet_weights="v1c.pth")
    write_config(tmp_path, tiny_config(run_chains=["gta5_to_cityscapes"], ddb=ddb))
    proc = snakemake(tmp_path, "-n", "-p", "results/gta5_to_cityscapes/ddb/r2_ckd/model.pt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if "train_ddb_" in ln]
    job = re.compile(r"train_ddb_(\w+)\.py(?: --path (\w+))? --round (\d)")
    with_file = {job.search(ln).groups(): "--imagenet v1c.pth" in ln for ln in lines}
    assert with_file == {("st", "cu", "1"): True, ("st", "ca", "1"): True, ("ckd", None, "1"): True,
                         ("st", "cu", "2"): False, ("st", "ca", "2"): False, ("ckd", None, "2"): True}


@pytest.mark.parametrize("rounds", [1, 3])
def test_ddb_rounds_sets_the_rounds_and_their_rows(tmp_path, rounds):
    """ddb.rounds: round r > 1 starts from round r-1's CKD student; the table has each round's rows."""
    write_config(tmp_path, tiny_config(run_chains=["gta5_to_cityscapes"],
                                       ddb={**tiny_config()["ddb"], "rounds": rounds}))
    proc = snakemake(tmp_path, "-n", "-p", "results/tables/results.csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    jobs = planned_jobs(out)
    assert (jobs["ddb_st"], jobs["ddb_prototypes"], jobs["ddb_ckd"]) == (2 * rounds, 2 * rounds, rounds)
    chain = "results/gta5_to_cityscapes/ddb"
    table_job = out.split("rule results_table:", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"--entry gta5_to_cityscapes ddb (\S+) ", table_job)
    assert rows == [f"r{r}_{s}" for r in range(1, rounds + 1) for s in ("st_cu", "st_ca", "ckd")]
    if rounds == 3:
        (r3,) = [ln for ln in out.splitlines() if "train_ddb_st.py" in ln and "--path cu --round 3 " in ln]
        assert f"--init {chain}/r2_ckd/model.pt" in r3 and f"--out {chain}/r3_st_cu/model.pt" in r3
    else:
        assert "r2_" not in out


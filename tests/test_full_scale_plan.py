"""`snakemake -n --configfile configs/<chain>.yaml` plans the full-scale chains against a tree in
the real datasets' layout (a few generated full-size images stand in for the real sets)."""
import shutil

import pytest

from segcore.data import demo
from workflow_helpers import ROOT, planned_jobs, snakemake, write_pretrained_stand_ins


@pytest.fixture(scope="module")
def real_layout(tmp_path_factory):
    work = tmp_path_factory.mktemp("fullscale")
    demo.make_gta5(work / "data/GTA5", 2, size=(1914, 1052))
    demo.make_synthia(work / "data/SYNTHIA_RAND_CITYSCAPES", 2, size=(1280, 760))
    demo.make_cityscapes(work / "data/cityscapes", 2, 2, size=(2048, 1024))
    write_pretrained_stand_ins(work)
    shutil.copy(ROOT / "config.yaml", work / "config.yaml")
    return work


@pytest.mark.parametrize("chain, source", [("gta5_to_cityscapes", "gta5"), ("synthia_to_cityscapes", "synthia")])
def test_full_scale_chain_plans(real_layout, chain, source):
    proc = snakemake(real_layout, "-n", "-p", "--configfile", str(ROOT / "configs" / f"{chain}.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    # no demo data, one conversion job per dataset (not per image), every stage of the chain once
    assert not any(rule.startswith("demo_") for rule in jobs)
    assert jobs["convert"] == 2
    for rule in ("source_only", "oracle", "warmup", "soft_labels", "init_prototypes", "class_distribution",
                 "proda_stage1", "cpsl_stage1", "results_table"):
        assert jobs[rule] == 1, rule
    assert jobs["distill_stage2"] == jobs["distill_stage3"] == 2  # ProDA's and CPSL's
    assert "simclr" not in jobs  # the configured SimCLRv2 file initialises the stage-2 student
    out = proc.stdout
    assert f"--dataset {source} --root data/" in out
    assert "--arch resnet101" in out
    assert "--imagenet-weights pretrained/resnet101-5d3b4d8f.pth" in out
    assert '"crop": [896, 512]' in out and '"iterations": 62412' in out
    assert '"queue_length": 65536' in out and '"iterations": 90000' in out  # CPSL stage 1 (to the official horizon)
    assert '"poly_horizon": 90000' in out
    assert "--student-init pretrained/r101_1x_sk0.pth --init-kind simclr" in out
    assert '"regular_w": ' + ("0.1" if source == "gta5" else "0.0") in out
    other = "synthia_to_cityscapes" if source == "gta5" else "gta5_to_cityscapes"
    assert f"results/{other}/" not in out
    # SeCo: both configured bases (ProDA and CPSL stage 1) refined with SAM ViT-H and the ImageNet
    # ResNet-101 classifier (both in the quality table), each re-trained for its table row
    assert jobs["seco_base_labels"] == jobs["seco_psa"] == jobs["seco_scc"] == jobs["seco_retrain"] == 2
    assert '"checkpoint": "pretrained/sam_vit_h_4b8939.pth"' in out and "--base proda/stage1" in out
    assert '"imagenet": "pretrained/resnet101-5d3b4d8f.pth"' in out and '"iterations": 5000' in out
    assert "seco_retrain.py --recipe self_training" in out and '"iterations": 62412' in out
    # DDB: two rounds of the cu and ca paths and their distillation, six trained runs
    assert (jobs["ddb_st"], jobs["ddb_prototypes"], jobs["ddb_ckd"]) == (4, 4, 2)
    ddb = [ln for ln in out.splitlines() if "train_ddb_" in ln]
    assert len(ddb) == 6 and all("--arch resnet101_v1c" in ln and '"iterations": 40000' in ln for ln in ddb)
    assert sum("--imagenet pretrained/resnet101_v1c-e67eebb6.pth" in ln for ln in ddb) == 4  # round-1 ST, CKD
    assert sum(f"--init results/{chain}/ddb/r1_ckd/model.pt" in ln for ln in ddb) == 2


@pytest.mark.parametrize("chain, source_lr, source_size", [
    ("gta5_to_cityscapes", {"swin": 6e-6, "mit": 2e-5}, [1280, 720]),
    ("synthia_to_cityscapes", {"swin": 2e-6, "mit": 2e-6}, [1280, 760]),
])
def test_full_scale_uvpt_plans_both_backbones(real_layout, chain, source_lr, source_size):
    import json
    import re

    proc = snakemake(real_layout, "-n", "-p", "--configfile", str(ROOT / "configs" / f"{chain}.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    assert jobs["uvpt_source"] == jobs["uvpt_pseudo_labels"] == jobs["uvpt_adapt"] == 2
    out = proc.stdout
    adapt_lr = {"swin": 6e-6, "mit": 4e-6}
    for family, preset, weights in (("swin", "swin_b", "swin_b-68c6b09e.pth"), ("mit", "mit_b5", "mit_b5.pth")):
        src = re.search(rf"train_uvpt_source.py --source '(.*?)' .*--backbone {preset} "
                        rf"--imagenet-weights pretrained/{re.escape(weights)} --options '(.*?)'", out)
        assert src, f"no uvpt_source command for {preset}"
        assert json.loads(src.group(1))["resize"] == source_size
        opts = json.loads(src.group(2))
        assert opts["lr"] == source_lr[family] and opts["iterations"] == 400000 and opts["batch_size"] == 2
        assert opts["base_width"] == source_size[0] and opts["schedule"] == "warmup_poly"
        ada = re.search(rf"train_uvpt_adapt.py --target '(.*?)' .*--init results/{chain}/uvpt/{family}/source/"
                        rf"model.pt .*--options '(.*?)'", out)
        assert ada, f"no uvpt_adapt command for {family}"
        assert json.loads(ada.group(1))["resize"] == [1024, 512]
        opts = json.loads(ada.group(2))
        assert opts["lr"] == adapt_lr[family] and opts["iterations"] == 80000 and opts["batch_size"] == 1
        assert opts["correction"] == {"enabled": True, "queue": 1000, "interval": 200, "slope_threshold": 0.95,
                                      "quantile": 0.8}
        assert opts["crop"] == [512, 512] and not opts["released"] and not opts["freeze_bn"]


def test_multi_source_chain_plans_every_method_on_the_union(real_layout):
    """GTA5+SYNTHIA -> Cityscapes: both sets converted, and every job that reads source data
    gets both (their union), the target alone where a job reads only the target."""
    import json
    import re

    proc = snakemake(real_layout, "-n", "-p", "--configfile", str(ROOT / "configs" / "gta5_to_cityscapes.yaml"),
                     str(ROOT / "configs" / "gta5_synthia_to_cityscapes.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    assert jobs["convert"] == 3
    assert (jobs["ddb_st"], jobs["ddb_ckd"]) == (4, 2) and jobs["uvpt_source"] == 2
    both = [{"manifest": "results/data/gta5/manifest.csv", "split": "train", "resize": [1914, 1052]},
            {"manifest": "results/data/synthia/manifest.csv", "split": "train", "resize": [1280, 760]}]
    source_args = re.findall(r"--(?:source|labelled) '(\[.*?\]|\{.*?\})'", proc.stdout)
    scripts = re.findall(r"workflow_scripts/(\w+)\.py[^\n]*--(?:source|labelled) ", proc.stdout)
    assert {"train_source", "train_proda_stage1", "train_cpsl_stage1", "train_distill", "train_ddb_st",
            "train_ddb_ckd", "train_uvpt_source", "seco_retrain"} <= set(scripts)
    unions = [json.loads(a) for a in source_args if a.startswith("[")]
    # every source reader but the oracle (which trains on the target's labels) reads the union
    singles = [json.loads(a) for a in source_args if a.startswith("{")]
    assert all(s["manifest"] == "results/data/cityscapes/manifest.csv" for s in singles)
    assert len(singles) == 1 and len(unions) == len(source_args) - 1
    uvpt = [u for u in unions if u[0]["resize"] == [1280, 720]]
    assert len(uvpt) == 2 and all(u[1]["resize"] == [1280, 720] for u in uvpt)
    # CPSL's three stages read GTA5 at CPSL's own size (cpsl.source_resize), the others at the dataset's
    cpsl = [u for u in unions if u[0]["resize"] == [2048, 1024]]
    assert len(cpsl) == 3 and all(u == [dict(both[0], resize=[2048, 1024]), both[1]] for u in cpsl)
    assert all(u == both for u in unions if u not in uvpt and u not in cpsl)
    assert "results/gta5_synthia_to_cityscapes/ddb/r2_ckd/model.pt" in proc.stdout


@pytest.mark.parametrize("chain, cpsl_size", [("gta5_to_cityscapes", [2048, 1024]),
                                              ("synthia_to_cityscapes", [1280, 760])])
def test_full_scale_cpsl_and_proda_follow_their_own_recipes(real_layout, chain, cpsl_size):
    """CPSL's stages read GTA5 at its own 2048x1024 with its seed 6523 and keep its LAB transfer,
    blur and jitter in stages 2-3; ProDA's read the dataset's size with 1337 and neither; every
    ProDA/CPSL stage validates every 1000 iterations and hands its best to the next."""
    import json
    import re

    proc = snakemake(real_layout, "-n", "-p", "--configfile", str(ROOT / "configs" / f"{chain}.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    proda_size = [1914, 1052] if chain.startswith("gta5") else [1280, 760]
    for script, stage, size, seed, cpsl in (("train_cpsl_stage1.py", None, cpsl_size, 6523, True),
                                            ("train_proda_stage1.py", None, proda_size, 1337, False),
                                            ("train_distill.py", "cpsl_stage2", cpsl_size, 6523, True),
                                            ("train_distill.py", "cpsl_stage3", cpsl_size, 6523, True),
                                            ("train_distill.py", "proda_stage2", proda_size, 1337, False),
                                            ("train_distill.py", "proda_stage3", proda_size, 1337, False)):
        line = next(ln for ln in lines if script in ln and (stage is None or f"--stage {stage} " in ln))
        assert json.loads(re.search(r"--source '(.*?)'", line).group(1))["resize"] == size, (script, stage)
        assert f"--seed {seed} " in line and "--val-every 1000 " in line, (script, stage)
        opts = json.loads(re.search(r"--options '(.*?)'", line).group(1))
        assert "val_every" not in opts and "handoff" not in opts
        assert opts["label_geometry"] == "official", (script, stage)  # the official resize chain's positions
        want = (True, 0.5, 0.4) if cpsl else (False, 0.0, 0.0)
        if script == "train_proda_stage1.py":  # ProDA's stage 1 has none of these keys
            want = (None, None, None)
        assert (opts.get("lab_transfer"), opts.get("blur_p"), opts.get("jitter")) == want, (script, stage)
        # the colour transfer reads the target's statistics, computed once by their own rule
        assert ("--lab-stats results/data/cityscapes/lab_stats_train.json" in line) == cpsl, (script, stage)
        if stage is not None:
            method, n = stage.split("_stage")
            teacher = f"results/{chain}/{method}/stage{int(n) - 1}/model_best.pt"
            assert f"--teacher {teacher} " in line, (stage, line)
    assert any(f"--init results/{chain}/warmup/model_best.pt " in ln for ln in lines if "train_cpsl_stage1" in ln)
    assert sum("lab_stats.py" in ln for ln in lines) == 1

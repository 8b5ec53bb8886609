"""SeCo in the workflow (rules/seco.smk): `seco.bases` adds and removes whole sub-chains, a base
must be a declared stage, the SAM checkpoint and the quality table's label sets reach their rules.
Dry runs of the tiny config; the end-to-end run of the SeCo row is in test_workflow.py."""
from __future__ import annotations

import re

import pytest

from workflow_helpers import planned_jobs, snakemake, tiny_config, write_config

CHAINS = ("gta5_to_cityscapes", "synthia_to_cityscapes")
QUALITY = [f"results/{c}/seco/quality.csv" for c in CHAINS]
PER_BASE = ("seco_base_labels", "seco_psa", "seco_scc")


def _plan(work, seco: dict, *targets: str):
    cfg = tiny_config()
    cfg["seco"] = {**cfg["seco"], **seco}
    write_config(work, cfg)
    proc = snakemake(work, "-n", "-p", *targets)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return planned_jobs(proc.stdout), proc.stdout


def _bases_planned(out: str, rule: str) -> set[str]:
    return set(re.findall(rf"rule {rule}:\n(?:    .*\n)*?    wildcards: chain=\w+, base=(\w+)", out))


@pytest.fixture(scope="module")
def two_bases(tmp_path_factory):
    """Plan of the table and the quality tables with two bases, a SAM file and one more measured run."""
    work = tmp_path_factory.mktemp("seco_dag")
    (work / "sam_tiny.pth").write_bytes(b"planning reads no weights")
    seco = {"bases": ["proda/stage1", "cpsl/stage1"], "quality_runs": ["proda/stage2"],
            "sam": {"checkpoint": "sam_tiny.pth", "prompts": "paper"}}
    return work, *_plan(work, seco, "all", *QUALITY)


def test_each_base_adds_its_whole_sub_chain_and_no_base_removes_them(two_bases):
    work, two, out2 = two_bases
    none, out0 = _plan(work, {"bases": [], "quality_runs": ["proda/stage2"]}, *QUALITY)
    for rule in PER_BASE:
        assert two[rule] == 4 and rule not in none, rule  # per chain and base
        assert _bases_planned(out2, rule) == {"proda_stage1", "cpsl_stage1"}
    assert two["seco_quality"] == none["seco_quality"] == 2
    # the added base's PSA is built from its own model's labels, and its labels are measured
    assert "--base cpsl/stage1" in out2 and "--base" not in out0
    assert "--model results/synthia_to_cityscapes/cpsl/stage1/model.pt" in out2
    assert "'cpsl/stage1 SCC=results/gta5_to_cityscapes/seco/cpsl_stage1/scc_labels.h5'" in out2
    for out in (out0, out2):
        assert "--hard proda/stage2=results/gta5_to_cityscapes/proda/stage2/hard_labels.h5" in out


def test_each_base_has_a_table_row_retrained_on_its_scc_labels(two_bases):
    _, planned, out = two_bases
    assert planned["seco_retrain"] == 4  # per chain and base
    table_job = out.split("rule results_table:", 1)[1].split("\n\n", 1)[0]
    for chain in CHAINS:
        for base in ("proda/stage1", "cpsl/stage1"):
            folder = base.replace("/", "_")
            assert (f"--init results/{chain}/{base}/model.pt"
                    f" --refined results/{chain}/seco/{folder}/scc_labels.h5") in out
            assert f"--entry {chain} seco {base} results/{chain}/eval/seco/{folder}/retrain.json" in table_job
        assert f"results/{chain}/eval/seco/proda_stage1/retrain.json" in out
    # the base's labels keep their float16 confidence (SeCo ranks it), whatever the next stage's threshold
    assert re.search(r"--kind hard --model results/\w+/proda/stage1/model.pt .* --conf-thresholds '' "
                     r"--out results/\w+/seco/proda_stage1/base_labels.h5", out)


def test_sam_checkpoint_is_an_input_of_psa(two_bases):
    _, _, out = two_bases
    psa = out.split("rule seco_psa:", 1)[1].split("output:", 1)[0]
    assert "sam_tiny.pth" in psa  # among the inputs: a changed file reruns PSA
    assert '"checkpoint": "sam_tiny.pth"' in out and '"prompts": "paper"' in out


def test_a_base_must_be_a_declared_stage(tmp_path):
    cfg = tiny_config()
    cfg["seco"] = {**cfg["seco"], "bases": ["proda/stage1", "proda/stage9"]}
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n")
    assert proc.returncode != 0
    assert "config key 'seco.bases': 'proda/stage9' is not a declared stage" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("seco, key", [
    ({"scc": {"rule": "vote"}}, "seco.scc.rule"),
    ({"psa": {"scope": "image"}}, "seco.psa.scope"),
    ({"retrain": {"recipee": "unimatch"}}, "seco.retrain"),  # a misspelt key of the stage section
    ({"retrain": {"recipe": "unimatch", "lr": -1}}, "seco.retrain.lr"),
])
def test_bad_seco_options_are_refused_naming_the_key(seco, key):
    from segcore import config as C

    cfg = tiny_config(run_chains=["gta5_to_cityscapes"], workdir="work", chains={
        "gta5_to_cityscapes": {"source": "gta5", "target": "cityscapes", "num_classes": 19}})
    cfg["seco"] = {**cfg["seco"], **seco}
    with pytest.raises(C.ConfigError, match=f"config key '{re.escape(key)}'"):
        C.validate(cfg)


def test_the_proposer_named_in_the_table_is_the_one_the_rule_makes():
    from segcore.seco.proposers import make_proposer, proposer_name

    opts = {"classical": {"superpixels": "slic"}}
    assert make_proposer(opts, 19).name == proposer_name(opts) == "classical_slic"
    assert proposer_name({}) == "classical_felzenszwalb"
    assert proposer_name({"sam": {"checkpoint": "pretrained/sam_vit_b_01ec64.pth"}}) == "sam_sam_vit_b_01ec64"
    assert proposer_name({"sam": {"checkpoint": "x.pth", "name": "sam_vit_h"}}) == "sam_vit_h"

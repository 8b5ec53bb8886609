"""Uni-UVPT in the workflow: the source-free guarantee on the planned DAG (no job downstream of
`uvpt_source` reads source data), the table rows it declares, and what reaches its rules."""
import json
import re

import pytest

from segcore import stages
from workflow_helpers import snakemake, tiny_config, write_config

CHAINS = ("gta5_to_cityscapes", "synthia_to_cityscapes")
RUNS = [f"uvpt/{family}/{kind}" for family in ("swin", "mit") for kind in ("source", "adapted")]
# every place source data lives: the converted sets and the raw (demo) roots
SOURCE_DATA = re.compile(r"results/data/(gta5|synthia)/|results/demo/(GTA5|SYNTHIA)|data/(GTA5|SYNTHIA)")


def planned_jobs_with_files(text: str) -> list[dict]:
    """Each job of a `snakemake -n -p` run: its rule, inputs, outputs and the rest of its block
    (shell command, params) as text."""
    jobs = []
    for block in re.split(r"\n(?=\[[A-Z][a-z]{2} [A-Z][a-z]{2} )", text):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if rule is None:
            continue
        files = {}
        for key in ("input", "output"):
            m = re.search(rf"^\s+{key}: (.*)$", block, re.M)
            files[key] = [p.strip() for p in m.group(1).split(",")] if m else []
        jobs.append({"rule": rule.group(1), "text": block, **files})
    return jobs


def downstream_of(jobs: list[dict], rule: str) -> list[dict]:
    """The jobs that read, directly or not, an output of a ``rule`` job."""
    produced = {p for j in jobs if j["rule"] == rule for p in j["output"]}
    found, grown = [], True
    while grown:
        grown = False
        for j in jobs:
            if j not in found and j["rule"] != rule and produced & set(j["input"]):
                found.append(j)
                produced |= set(j["output"])
                grown = True
    return found


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    """The plan of every Uni-UVPT artifact of both chains, from scratch (the demo data too), plus
    the adapted models' hard labels (what SeCo reads when `seco.bases` names them)."""
    work = tmp_path_factory.mktemp("uvpt_plan")
    write_config(work, tiny_config())
    targets = [f"results/{c}/eval/{run}.json" for c in CHAINS for run in RUNS]
    targets += [f"results/{c}/uvpt/{f}/adapted/hard_labels.h5" for c in CHAINS for f in ("swin", "mit")]
    proc = snakemake(work, "-n", "-p", "--forceall", *targets)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return planned_jobs_with_files(proc.stdout)


def test_no_job_after_the_source_model_reads_source_data(plan):
    sources = [j for j in plan if j["rule"] == "uvpt_source"]
    assert len(sources) == 4  # 2 chains x 2 backbone families
    for j in sources:  # the guard below is not vacuous: the source model does read source data
        assert any(SOURCE_DATA.search(p) for p in j["input"]), j["input"]
    after = downstream_of(plan, "uvpt_source")
    assert {j["rule"] for j in after} == {"uvpt_pseudo_labels", "uvpt_adapt", "evaluate", "hard_labels"}
    assert len(after) == 4 + 4 + 8 + 4
    for j in after:
        assert not [p for p in j["input"] if SOURCE_DATA.search(p)], (j["rule"], j["input"])
        # nor through a param or the command line (a data spec passed as JSON)
        assert not SOURCE_DATA.search(j["text"]), (j["rule"], j["text"][-1500:])


def test_each_family_gets_its_preset_and_its_adaptation_reads_its_own_source_model(plan):
    for j in plan:
        if j["rule"] in ("uvpt_source", "uvpt_adapt"):
            chain, family = re.search(r"results/(\w+)/uvpt/(swin|mit)/", j["output"][0]).groups()
            if j["rule"] == "uvpt_source":
                assert f"--backbone {family}_small" in j["text"]
            else:
                assert f"results/{chain}/uvpt/{family}/source/model.pt" in j["input"]
                assert f"results/{chain}/uvpt/{family}/source/pseudo_labels.h5" in j["input"]
                opts = json.loads(re.search(r"--options '(\{.*?\})'", j["text"]).group(1))
                assert opts["iterations"] == 2 and opts["correction"]["queue"] == 1000 and not opts["released"]


def test_declared_rows_are_the_families_source_and_adapted_models():
    declared = {run: row for run, row in stages.TABLE_RUNS.items() if row[0] == "uvpt"}
    assert declared == {run: ("uvpt", run.removeprefix("uvpt/")) for run in RUNS}
    assert stages.METHOD_ORDER.index("uvpt") < stages.METHOD_ORDER.index("oracle")

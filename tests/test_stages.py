"""The method declarations (segcore/stages.py) drive what enumerates methods: the table rows and
their order, the training stages whose options are validated, the schema sections and the rules."""
from __future__ import annotations

import subprocess
import sys

from segcore import config as C
from segcore import stages, tables
from workflow_helpers import ROOT


def test_derived_lists_follow_the_declarations():
    # the built-in methods' rows, in declaration order (later methods add theirs before the oracle)
    built_in = {
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
    assert [r for r in stages.TABLE_RUNS if r in built_in] == list(built_in)
    assert {r: stages.TABLE_RUNS[r] for r in built_in} == built_in
    assert list(stages.TABLE_RUNS)[-1] == "oracle"
    order = stages.METHOD_ORDER
    assert order[0] == "source_only" and order[-1] == "oracle" and order.index("proda") < order.index("cpsl")
    assert [s for s in stages.STAGE_ORDER if s in ("source_only", "warmup", "stage1", "stage2", "stage3")] == [
        "source_only", "warmup", "stage1", "stage2", "stage3"]
    assert tables.METHOD_ORDER is stages.METHOD_ORDER and set(tables.BASELINE_METHODS) == {"source_only", "oracle"}
    assert set(C.TRAIN_STAGES) >= {"source_only", "oracle", "warmup",
                                   *(f"{m}.stage{k}" for m in ("proda", "cpsl") for k in (1, 2, 3))}
    assert {"proda", "cpsl"} <= set(stages.methods_of_rule("distill_stage2"))
    assert stages.next_stage("proda/stage1").config == "proda.stage2"
    assert stages.next_stage("cpsl/stage3") is None and stages.next_stage("warmup") is None


def test_every_declared_section_is_in_the_schema_with_derived_keys():
    schema = C.load_schema()
    train_keys = set(schema["$defs"]["train_options"]["properties"])
    for method in stages.METHODS:
        assert method.name in schema["properties"], method.schema
        for stage in method.stages:
            node = schema
            for part in stage.config.split("."):
                node = C._resolve(schema, node["properties"][part])
            allowed = set(node["propertyNames"]["enum"])
            assert allowed == train_keys | set(node.get("properties", {})), stage.config


def test_declared_rules_and_rule_files_exist():
    for rule_file in stages.RULE_FILES:
        assert (ROOT / rule_file).is_file(), rule_file
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--list-rules"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = set(proc.stdout.split())
    declared = {s.rule for m in stages.METHODS for s in m.stages}
    assert declared <= listed, declared - listed


def test_seco_rows_follow_seco_bases_and_the_default_is_the_schema_default():
    assert list(C.validate({})["seco"]["bases"]) == list(stages.SECO_DEFAULT_BASES)
    assert stages.table_runs(stages.SECO_DEFAULT_BASES) == stages.TABLE_RUNS
    rows = stages.table_runs(["cpsl/stage1", "ddb/r2_ckd"])
    seco = {run: row for run, row in rows.items() if row[0] == "seco"}
    assert seco == {"seco/cpsl_stage1/retrain": ("seco", "cpsl/stage1"),
                    "seco/ddb_r2_ckd/retrain": ("seco", "ddb/r2_ckd")}
    assert list(rows)[-1] == "oracle"  # SeCo's rows in its place, before the oracle
    assert not any(row[0] == "seco" for row in stages.table_runs([]).values())
    others = {r: v for r, v in stages.TABLE_RUNS.items() if v[0] != "seco"}
    assert {r: v for r, v in rows.items() if v[0] != "seco"} == others

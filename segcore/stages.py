"""Every method of the workflow, declared once: its stages, the run folders they write, their
rows in the results table, the config section of each stage's options, its schema section and
its rule file.

Everything that enumerates methods is derived from :data:`METHODS`: the workflow's ``method``
wildcard and results-table inputs (``rules/common.smk``), the training stages whose options are
validated (:data:`TRAIN_STAGES`, ``segcore.config``), the allowed keys of each stage section and
the top-level method sections of the config schema, and the row order of the table
(``segcore.tables``). docs/adding-a-method.md says what a new method adds.

Plain data, read at parse time by the Snakefile: this module imports nothing heavy.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Stage",
    "Method",
    "METHODS",
    "TRAIN_STAGES",
    "TABLE_RUNS",
    "BEST_ON_VAL_RUNS",
    "table_runs",
    "seco_stage",
    "ddb_stages",
    "METHOD_ORDER",
    "STAGE_ORDER",
    "BASELINE_METHODS",
    "RULE_FILES",
    "methods_of_rule",
    "next_stage",
    "stage_of_run",
]


@dataclass(frozen=True)
class Stage:
    """One trained model of a method: ``results/{chain}/{run}/model.pt``, evaluated into
    ``results/{chain}/eval/{run}.json``."""

    name: str  #: the table's stage column ("warmup", "stage1")
    run: str  #: run folder under results/{chain}/ ("proda/stage1")
    rule: str  #: the rule that writes its model.pt
    config: str | None  #: config section of its options ("proda.stage1"; None: no training options)
    row_method: str | None = None  #: the table's method column, when not the declaring method's
    #: its rule also validates while training and keeps the best checkpoint:
    #: ``results/{chain}/{run}/model_best.pt`` and ``metrics_best.json`` (segcore.train.best)
    best_on_val: bool = False


@dataclass(frozen=True)
class Method:
    name: str  #: its config section (top-level key) and the stem of its schema section file
    stages: tuple[Stage, ...]  #: in the order they run and appear in the table
    rule_file: str  #: the .smk file (relative to the Snakefile) holding its rules
    schema: str  #: file under segcore/schemas/ with its top-level config section(s)
    published: bool = True  #: the papers have numbers for its rows (False: our baselines)


SOURCE_ONLY = Method(
    "source_only",
    (Stage("source_only", run="source_only", rule="source_only", config="source_only", best_on_val=True),),
    rule_file="rules/source.smk",
    schema="source_only.schema.yaml",
    published=False,
)
# the adversarial warm-up every adaptation method starts from; the papers report it as ProDA's
WARMUP = Method(
    "warmup",
    (Stage("warmup", run="warmup", rule="warmup", config="warmup", row_method="proda", best_on_val=True),),
    rule_file="rules/source.smk",
    schema="warmup.schema.yaml",
)
PRODA = Method(
    "proda",
    (
        Stage("stage1", run="proda/stage1", rule="proda_stage1", config="proda.stage1", best_on_val=True),
        Stage("stage2", run="proda/stage2", rule="distill_stage2", config="proda.stage2", best_on_val=True),
        Stage("stage3", run="proda/stage3", rule="distill_stage3", config="proda.stage3", best_on_val=True),
    ),
    rule_file="rules/proda.smk",
    schema="proda.schema.yaml",
)
# CPSL replaces ProDA's stage 1 and reuses its distillation rules for stages 2 and 3
CPSL = Method(
    "cpsl",
    (
        Stage("stage1", run="cpsl/stage1", rule="cpsl_stage1", config="cpsl.stage1", best_on_val=True),
        Stage("stage2", run="cpsl/stage2", rule="distill_stage2", config="cpsl.stage2", best_on_val=True),
        Stage("stage3", run="cpsl/stage3", rule="distill_stage3", config="cpsl.stage3", best_on_val=True),
    ),
    rule_file="rules/cpsl.smk",
    schema="cpsl.schema.yaml",
)
# DDB: per round, two bridging self-training paths (cu: CutMix, ca: ClassMix), then the
# cross-path distillation of both into a fresh student; round r > 1 starts from round r-1's
# student. `ddb.rounds` chooses the rounds, and so DDB's rows (table_runs); this is its default.
DDB_DEFAULT_ROUNDS = 2


def ddb_stages(rounds: int) -> tuple[Stage, ...]:
    """DDB's stages of ``rounds`` rounds: r<k>_st_cu, r<k>_st_ca, r<k>_ckd for k = 1..rounds."""
    return tuple(
        Stage(name, run=f"ddb/{name}", rule=rule, config=section)
        for r in range(1, rounds + 1)
        for name, rule, section in (
            (f"r{r}_st_cu", "ddb_st", "ddb.st"),
            (f"r{r}_st_ca", "ddb_st", "ddb.st"),
            (f"r{r}_ckd", "ddb_ckd", "ddb.ckd"),
        )
    )


DDB = Method(
    "ddb",
    ddb_stages(DDB_DEFAULT_ROUNDS),
    rule_file="rules/ddb.smk",
    schema="ddb.schema.yaml",
)
# Uni-UVPT (source-free): per backbone family (`uvpt.backbones` picks its preset), a source model
# (the only Uni-UVPT rule that reads source data) and its adaptation through prompt adapters
UVPT = Method(
    "uvpt",
    tuple(
        Stage(f"{family}/{kind}", run=f"uvpt/{family}/{kind}", rule=f"uvpt_{step}", config=f"uvpt.{step}")
        for family in ("swin", "mit")
        for kind, step in (("source", "source"), ("adapted", "adapt"))
    ),
    rule_file="rules/uvpt.smk",
    schema="uvpt.schema.yaml",
)
# SeCo refines a base stage's pseudo-labels (PSA, then SCC) and re-trains on them; its row is
# the re-trained model of the base, under results/{chain}/seco/{base with / as _}/. `seco.bases`
# chooses the bases, and so SeCo's rows (table_runs); these are its default (the schema's too).
SECO_DEFAULT_BASES = ("proda/stage1",)


def seco_stage(base: str) -> Stage:
    """SeCo's stage on ``base`` (a run folder such as "proda/stage1"): its row is (seco, base)."""
    return Stage(base, run=f"seco/{base.replace('/', '_')}/retrain", rule="seco_retrain", config="seco.retrain")


SECO = Method(
    "seco",
    tuple(seco_stage(base) for base in SECO_DEFAULT_BASES),
    rule_file="rules/seco.smk",
    schema="seco.schema.yaml",
)
ORACLE = Method(
    "oracle",
    (Stage("oracle", run="oracle", rule="oracle", config="oracle", best_on_val=True),),
    rule_file="rules/source.smk",
    schema="oracle.schema.yaml",
    published=False,
)

#: table order; the oracle (the upper bound) stays last
METHODS: tuple[Method, ...] = (SOURCE_ONLY, WARMUP, PRODA, CPSL, DDB, UVPT, SECO, ORACLE)


def _unique(items) -> list:
    return list(dict.fromkeys(items))


_STAGES = [(m, s) for m in METHODS for s in m.stages]

#: every stage with training options, by config section ("proda.stage1")
TRAIN_STAGES: tuple[str, ...] = tuple(s.config for _, s in _STAGES if s.config is not None)
#: rows of the results table under the default seco.bases: run folder -> (method, stage)
TABLE_RUNS: dict[str, tuple[str, str]] = {s.run: (s.row_method or m.name, s.name) for m, s in _STAGES}
#: run folders whose rule keeps a best-on-val checkpoint
BEST_ON_VAL_RUNS: tuple[str, ...] = tuple(s.run for _, s in _STAGES if s.best_on_val)


def table_runs(seco_bases=SECO_DEFAULT_BASES, ddb_rounds: int = DDB_DEFAULT_ROUNDS) -> dict[str, tuple[str, str]]:
    """The rows of the results table of a config whose ``seco.bases`` is ``seco_bases`` and
    whose ``ddb.rounds`` is ``ddb_rounds``: the declared rows, with SeCo's row of each of those
    bases and DDB's rows of that many rounds in place of the default ones."""
    rows = {}
    for m, s in _STAGES:
        if m is SECO or m is DDB:
            if s is m.stages[0]:
                own = [seco_stage(b) for b in seco_bases] if m is SECO else ddb_stages(ddb_rounds)
                rows.update({x.run: (m.name, x.name) for x in own})
            continue
        rows[s.run] = (s.row_method or m.name, s.name)
    return rows

METHOD_ORDER: list[str] = _unique(method for method, _ in TABLE_RUNS.values())
STAGE_ORDER: list[str] = _unique(stage for _, stage in TABLE_RUNS.values())
#: table methods without published numbers
BASELINE_METHODS: tuple[str, ...] = tuple(m.name for m in METHODS if not m.published)
#: rule files of the methods, each once, in declaration order
RULE_FILES: tuple[str, ...] = tuple(_unique(m.rule_file for m in METHODS))


def methods_of_rule(rule: str) -> list[str]:
    """The methods with a stage written by ``rule`` (the values of a rule's ``{method}``)."""
    return _unique(m.name for m, s in _STAGES if s.rule == rule)


def stage_of_run(run: str) -> tuple[Method, Stage] | None:
    for m, s in _STAGES:
        if s.run == run:
            return m, s
    return None


def next_stage(run: str) -> Stage | None:
    """The stage of the same method after the one writing ``run`` (it reads that run's hard
    labels), or None."""
    found = stage_of_run(run)
    if found is None:
        return None
    method, stage = found
    i = method.stages.index(stage)
    return method.stages[i + 1] if i + 1 < len(method.stages) else None

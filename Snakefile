# The DASS workflow: converted datasets, warm-up, adaptation stages, evaluation, tables.
# Thin on purpose: the rules live in rules/*.smk, the work in segcore/ (see README.md).
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/source.smk"
include: "rules/pseudo.smk"
include: "rules/proda.smk"
include: "rules/cpsl.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        rules.results_table.output,

# The DASS workflow: converted datasets, warm-up, adaptation stages, evaluation, tables.
# Thin on purpose: the rules live in rules/*.smk, the work in segcore/ (see README.md), and
# each method's stages, runs and table rows in its declaration (segcore/stages.py).
import sys

from snakemake.utils import min_version

from segcore import config as segconfig
from segcore import stages

min_version("9.0")


configfile: "config.yaml"


# the description at the top of `snakemake --report report.html`
report: "docs/report/workflow.rst"


try:
    # the schema ships inside segcore; defaults are filled in here
    segconfig.validate(config)
    segconfig.check_student_init(config)
except segconfig.ConfigError as err:
    # one line naming the key, before any job is planned
    sys.exit(f"Invalid configuration: {err}")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/pseudo.smk"


# each declared method's rule file, once (source.smk holds the baselines and the warm-up)
for rule_file in stages.RULE_FILES:

    include: rule_file


include: "rules/released.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"
include: "rules/cluster_checks.smk"


rule all:
    default_target: True
    input:
        rules.results_table.output,
        seco_quality_tables(),
        report_targets(),

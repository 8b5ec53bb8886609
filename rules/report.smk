# The generated results table: one row per (chain, method, stage), paper numbers beside ours.
# The rows and their order come from the method declarations (segcore/stages.py) through
# table_rows() in rules/common.smk. Below them, the report's rules.
import json
import sys


rule results_table:
    input:
        metrics=table_metrics(),
        published=published_input(),
    output:
        csv="results/tables/results.csv",
        md="results/tables/results.md",
    log:
        "logs/results_table.log",
    benchmark:
        "logs/benchmark/results_table.tsv"
    conda:
        "../envs/segcore.yaml"
    params:
        script=workflow_script("make_table.py"),
        entries=table_entry_args(),
        notes=table_notes(),
        published=published_flag,
        code=code_version("make_table.py"),
    shell:
        "python {params.script:q} {params.entries} {params.notes} {params.published}"
        " --out-csv {output.csv:q} --out-md {output.md:q} > {log:q} 2>&1"


# --- the report: `snakemake --report report.html` (docs/report/ holds the captions) ----------
# Every rule below reads declared artifacts only: the results table, the quality tables, the
# trained models and the benchmark files of the jobs before it.

REPORT = config["report"]
for _run in REPORT["overlay_runs"] or []:
    if _run not in TABLE_RUNS:
        sys.exit(
            f"Invalid configuration: config key 'report.overlay_runs': {_run!r} is not a run of the"
            f" results table (runs: {', '.join(TABLE_RUNS)})"
        )


rule report_tables:
    input:
        "results/tables/results.csv",
    output:
        summary_csv="results/tables/summary.csv",
        summary_md="results/tables/summary.md",
        summary_html=report(
            "results/tables/summary.html",
            caption="../docs/report/summary.rst",
            category="1. Results",
            labels={"table": "summary"},
        ),
        per_class_csv="results/tables/per_class.csv",
        per_class_md="results/tables/per_class.md",
        per_class_html=report(
            "results/tables/per_class.html",
            caption="../docs/report/per_class.rst",
            category="1. Results",
            labels={"table": "IoU per class"},
        ),
    log:
        "logs/report_tables.log",
    benchmark:
        "logs/benchmark/report_tables.tsv"
    conda:
        "../envs/segcore.yaml"
    params:
        script=workflow_script("report_tables.py"),
        code=code_version("report_tables.py"),
    shell:
        "python {params.script:q} --results {input:q}"
        " --summary-csv {output.summary_csv:q} --summary-md {output.summary_md:q}"
        " --summary-html {output.summary_html:q} --per-class-csv {output.per_class_csv:q}"
        " --per-class-md {output.per_class_md:q} --per-class-html {output.per_class_html:q} > {log:q} 2>&1"


rule report_plots:
    input:
        "results/tables/results.csv",
    output:
        progression=report(
            "results/report/{chain}/progression.svg",
            caption="../docs/report/progression.rst",
            category="2. Stage progression",
            labels={"chain": "{chain}"},
        ),
        heatmap=report(
            "results/report/{chain}/per_class_iou.svg",
            caption="../docs/report/heatmap.rst",
            category="3. IoU per class",
            labels={"chain": "{chain}"},
        ),
    log:
        "logs/report_plots/{chain}.log",
    benchmark:
        "logs/benchmark/report_plots/{chain}.tsv"
    conda:
        "../envs/segcore.yaml"
    params:
        script=workflow_script("report_plots.py"),
        code=code_version("report_plots.py"),
    shell:
        "python {params.script:q} --results {input:q} --chain {wildcards.chain}"
        " --progression {output.progression:q} --heatmap {output.heatmap:q} > {log:q} 2>&1"


rule report_overlays:
    input:
        models=overlay_models,
        manifest=target_manifest,
    output:
        report(
            "results/report/{chain}/overlays.png",
            caption="../docs/report/overlays.rst",
            category="4. Predictions",
            labels={"chain": "{chain}"},
        ),
    log:
        "logs/report_overlays/{chain}.log",
    benchmark:
        "logs/benchmark/report_overlays/{chain}.tsv"
    conda:
        "../envs/segcore.yaml"
    threads: 1
    params:
        script=workflow_script("report_overlays.py"),
        split=config["evaluate"]["split"],
        resize=target_resize_json,
        num_classes=num_classes,
        images=json.dumps(REPORT["overlay_images"]),
        runs=overlay_run_args,
        code=code_version("report_overlays.py"),
    shell:
        "python {params.script:q} --manifest {input.manifest:q} --split {params.split}"
        " --resize {params.resize:q} --num-classes {params.num_classes} --images {params.images:q}"
        " {params.runs} --chain {wildcards.chain} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule report_quality:
    input:
        "results/{chain}/seco/quality.csv",
    output:
        report(
            "results/report/{chain}/pseudo_label_quality.svg",
            caption="../docs/report/quality.rst",
            category="5. Pseudo-label quality",
            labels={"chain": "{chain}"},
        ),
    log:
        "logs/report_quality/{chain}.log",
    benchmark:
        "logs/benchmark/report_quality/{chain}.tsv"
    conda:
        "../envs/segcore.yaml"
    params:
        script=workflow_script("report_quality.py"),
        code=code_version("report_quality.py"),
    shell:
        "python {params.script:q} --quality {input:q} --chain {wildcards.chain} --out {output:q} > {log:q} 2>&1"


# The benchmark files are read, not declared as inputs: a missing one (logs/ deleted, converted
# data brought from elsewhere) would otherwise rerun its job, a training stage included. The
# job runs after every other one (report_results), and a job without a file shows no record.
rule report_cost:
    input:
        report_results(),
    output:
        jobs_csv="results/report/cost/jobs.csv",
        jobs_html=report(
            "results/report/cost/jobs.html",
            caption="../docs/report/cost_jobs.rst",
            category="6. Cost",
            labels={"what": "every job"},
        ),
        rules_csv="results/report/cost/rules.csv",
        rules_md="results/report/cost/rules.md",
        rules_html=report(
            "results/report/cost/rules.html",
            caption="../docs/report/cost_rules.rst",
            category="6. Cost",
            labels={"what": "per rule (table)"},
        ),
        plot=report(
            "results/report/cost/cost.svg",
            caption="../docs/report/cost_plot.rst",
            category="6. Cost",
            labels={"what": "per rule (figure)"},
        ),
    log:
        "logs/report_cost.log",
    benchmark:
        "logs/benchmark/report_cost.tsv"
    conda:
        "../envs/segcore.yaml"
    params:
        script=workflow_script("report_cost.py"),
        jobs=lambda wildcards: json.dumps(workflow_jobs()["benchmarks"]),
        code=code_version("report_cost.py"),
    shell:
        "python {params.script:q} --jobs {params.jobs:q} --jobs-csv {output.jobs_csv:q}"
        " --jobs-html {output.jobs_html:q} --rules-csv {output.rules_csv:q} --rules-md {output.rules_md:q}"
        " --rules-html {output.rules_html:q} --plot {output.plot:q} > {log:q} 2>&1"


rule report_rulegraph:
    output:
        report(
            "results/report/rulegraph.svg",
            caption="../docs/report/rulegraph.rst",
            category="7. Workflow",
        ),
    log:
        "logs/report_rulegraph.log",
    benchmark:
        "logs/benchmark/report_rulegraph.tsv"
    conda:
        "../envs/segcore.yaml"
    params:
        script=workflow_script("report_rulegraph.py"),
        graph=lambda wildcards: json.dumps(rule_graph(), sort_keys=True),
        code=code_version("report_rulegraph.py"),
    shell:
        "python {params.script:q} --graph {params.graph:q} --out {output:q} > {log:q} 2>&1"


# tables and plots are light: on a cluster they run where Snakemake runs (not the overlays,
# which load every model of a chain and get a GPU from the Slurm profile)
localrules:
    report_tables,
    report_plots,
    report_quality,
    report_cost,
    report_rulegraph,

# The generated results table: one row per (chain, method, stage), paper numbers beside ours.


def table_runs():
    """(chain, run, method, stage) of every evaluated checkpoint that has a row."""
    return [(c, run, m, s) for c in CHAINS for run, (m, s) in TABLE_RUNS.items()]


def table_entry_args():
    return " ".join(
        "--entry " + " ".join(shlex.quote(x) for x in (c, m, s, f"results/{c}/eval/{run}.json"))
        for c, run, m, s in table_runs()
    )


rule results_table:
    input:
        metrics=[f"results/{c}/eval/{run}.json" for c, run, _, _ in table_runs()],
        published=[PUBLISHED] if PUBLISHED else [],
    output:
        csv="results/tables/results.csv",
        md="results/tables/results.md",
    params:
        entries=table_entry_args(),
        published=lambda wc, input: ("--published " + shlex.quote(input.published[0])) if input.published else "",
        code=code_version("segcore/tables.py", "segcore/metrics.py", "workflow_scripts/make_table.py"),
    log:
        "logs/results_table.log",
    benchmark:
        "logs/benchmark/results_table.tsv",
    shell:
        "python {SCRIPTS:q}/make_table.py {params.entries} {params.published}"
        " --out-csv {output.csv:q} --out-md {output.md:q} > {log:q} 2>&1"

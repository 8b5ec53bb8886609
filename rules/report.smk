# The generated results table: one row per (chain, method, stage), paper numbers beside ours.
# The rows and their order come from the method declarations (segcore/stages.py) through
# table_rows() in rules/common.smk.


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
        notes=seco_table_notes(),
        published=published_flag,
        code=code_version("make_table.py"),
    shell:
        "python {params.script:q} {params.entries} {params.notes} {params.published}"
        " --out-csv {output.csv:q} --out-md {output.md:q} > {log:q} 2>&1"

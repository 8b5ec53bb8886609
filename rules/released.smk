# Released ProDA/CPSL checkpoints (config `released`): runs they stand in for, and the
# `released` rows of the results table. The warm-up's import is warmup.mode: import
# (rules/source.smk). Input functions: rules/common.smk.

RELEASED = config["released"]

if RELEASED["replace"]:

    rule released_stage:
        """A released checkpoint in segcore's format in place of training its run
        (released.replace); the authors selected it on the evaluation split, so it is also the
        run's best-on-val checkpoint."""
        input:
            released=released_file,
            val=target_manifest,
        output:
            model="results/{chain}/{run}/model.pt",
            model_best="results/{chain}/{run}/model_best.pt",
            metrics_best="results/{chain}/{run}/metrics_best.json",
        log:
            "logs/released_stage/{chain}/{run}.log",
        benchmark:
            "logs/benchmark/released_stage/{chain}/{run}.tsv"
        wildcard_constraints:
            run="|".join(RELEASED["replace"]),
        conda:
            "../envs/segcore.yaml"
        threads: 1
        params:
            script=workflow_script("import_checkpoint.py"),
            allow_pickle=released_allow_pickle,
            stage=released_stage_name,
            arch=config["model"]["arch"],
            num_classes=num_classes,
            val=eval_spec,
            code=code_version("import_checkpoint.py"),
        shell:
            "python {params.script:q} --released {input.released:q} {params.allow_pickle} --stage {params.stage}"
            " --arch {params.arch} --num-classes {params.num_classes} --out {output.model:q}"
            " --val {params.val:q} --best-out {output.model_best:q} --best-metrics {output.metrics_best:q}"
            " --threads {threads} > {log:q} 2>&1"

    # the released checkpoint wins over the training rules for the runs it replaces
    ruleorder: released_stage > proda_stage1
    ruleorder: released_stage > cpsl_stage1
    ruleorder: released_stage > distill_stage2
    ruleorder: released_stage > distill_stage3


if released_row_runs():

    rule released_row:
        """A released checkpoint in segcore's format for its `released` row of the results table
        (evaluated by rule evaluate as results/{chain}/eval/released/<run>.json)."""
        input:
            released=released_file,
        output:
            "results/{chain}/released/{run}/model.pt",
        log:
            "logs/released_row/{chain}/{run}.log",
        benchmark:
            "logs/benchmark/released_row/{chain}/{run}.tsv"
        wildcard_constraints:
            run="|".join(released_row_runs()),
        conda:
            "../envs/segcore.yaml"
        threads: 1
        params:
            script=workflow_script("import_checkpoint.py"),
            allow_pickle=released_allow_pickle,
            stage=released_stage_name,
            arch=config["model"]["arch"],
            num_classes=num_classes,
            code=code_version("import_checkpoint.py"),
        shell:
            "python {params.script:q} --released {input.released:q} {params.allow_pickle} --stage {params.stage}"
            " --arch {params.arch} --num-classes {params.num_classes} --out {output:q}"
            " --threads {threads} > {log:q} 2>&1"

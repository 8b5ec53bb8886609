# Evaluation of any checkpoint results/{chain}/{run}/model.pt on the target split.
# Input functions: rules/common.smk.


rule evaluate:
    input:
        model="results/{chain}/{run}/model.pt",
        manifest=target_manifest,
    output:
        "results/{chain}/eval/{run}.json",
    log:
        "logs/evaluate/{chain}/{run}.log",
    benchmark:
        "logs/benchmark/evaluate/{chain}/{run}.tsv"
    conda:
        "../envs/segcore.yaml"
    threads: 1
    params:
        script=workflow_script("evaluate.py"),
        split=config["evaluate"]["split"],
        num_classes=num_classes,
        resize=target_resize_json,
        batch_size=config["evaluate"]["batch_size"],
        code=code_version("evaluate.py"),
    shell:
        "python {params.script:q} --model {input.model:q} --manifest {input.manifest:q}"
        " --split {params.split} --num-classes {params.num_classes} --resize {params.resize:q}"
        " --batch-size {params.batch_size} --out {output:q} --threads {threads} > {log:q} 2>&1"

# Evaluation of any checkpoint results/{chain}/{run}/model.pt on the target split.


rule evaluate:
    input:
        model="results/{chain}/{run}/model.pt",
        manifest=lambda wc: manifest(chain_cfg(wc.chain)["target"]),
    output:
        "results/{chain}/eval/{run}.json",
    params:
        split=config["evaluate"]["split"],
        num_classes=lambda wc: chain_cfg(wc.chain)["num_classes"],
        resize=lambda wc: json.dumps(config["datasets"][chain_cfg(wc.chain)["target"]]["resize"]),
        batch_size=config["evaluate"]["batch_size"],
        code=code_version(*CODE_EVAL),
    threads: 1
    log:
        "logs/evaluate/{chain}/{run}.log",
    benchmark:
        "logs/benchmark/evaluate/{chain}/{run}.tsv",
    shell:
        "python {SCRIPTS:q}/evaluate.py --model {input.model:q} --manifest {input.manifest:q}"
        " --split {params.split} --num-classes {params.num_classes} --resize {params.resize:q}"
        " --batch-size {params.batch_size} --out {output:q} --threads {threads} > {log:q} 2>&1"

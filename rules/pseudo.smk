# Pseudo-labels and prototypes: soft labels and initial prototypes of the warm-up model
# (shared by ProDA and CPSL), and the hard labels of any stage's model.


def target_spec(wc):
    return data_spec(chain_cfg(wc.chain)["target"], "train")


rule soft_labels:
    """Softmax of the warm-up model on target train at the output stride (HDF5)."""
    input:
        model="results/{chain}/warmup/model.pt",
        manifest=lambda wc: manifest(chain_cfg(wc.chain)["target"]),
    output:
        "results/{chain}/warmup/soft_labels.h5",
    params:
        target=target_spec,
        num_classes=lambda wc: chain_cfg(wc.chain)["num_classes"],
        encoding=config["proda"]["soft_encoding"],
        code=code_version(*CODE_PSEUDO),
    threads: 1
    log:
        "logs/soft_labels/{chain}.log",
    benchmark:
        "logs/benchmark/soft_labels/{chain}.tsv",
    shell:
        "python {SCRIPTS:q}/pseudo_labels.py --kind soft --model {input.model:q} --target {params.target:q}"
        " --num-classes {params.num_classes} --encoding {params.encoding} --out {output:q}"
        " --threads {threads} > {log:q} 2>&1"


rule init_prototypes:
    """Class means of the warm-up model's features over its own argmax on target train."""
    input:
        model="results/{chain}/warmup/model.pt",
        manifest=lambda wc: manifest(chain_cfg(wc.chain)["target"]),
    output:
        "results/{chain}/warmup/prototypes.pt",
    params:
        target=target_spec,
        num_classes=lambda wc: chain_cfg(wc.chain)["num_classes"],
        code=code_version(*CODE_PSEUDO),
    threads: 1
    log:
        "logs/init_prototypes/{chain}.log",
    benchmark:
        "logs/benchmark/init_prototypes/{chain}.tsv",
    shell:
        "python {SCRIPTS:q}/init_prototypes.py --model {input.model:q} --target {params.target:q}"
        " --num-classes {params.num_classes} --out {output:q} --threads {threads} > {log:q} 2>&1"


def hard_conf_thresholds(wc):
    """The threshold the next stage applies to ``{method}/stage<k>``'s hard labels: the store
    keeps the confidence only as its side of that threshold (exact for it, 1/30 of the official
    files); "" (float16 confidence, any threshold) for any other run."""
    method, _, stage = wc.run.partition("/")
    if stage.startswith("stage") and stage[5:].isdigit() and f"stage{int(stage[5:]) + 1}" in config.get(method, {}):
        t = segconfig.stage_options(config, f"{method}.stage{int(stage[5:]) + 1}").get("threshold")
        if t is not None:
            return repr(float(t))
    return ""


rule hard_labels:
    """Flip-averaged hard labels and confidences of a stage's model on target train."""
    input:
        model="results/{chain}/{run}/model.pt",
        manifest=lambda wc: manifest(chain_cfg(wc.chain)["target"]),
    output:
        "results/{chain}/{run}/hard_labels.h5",
    params:
        target=target_spec,
        num_classes=lambda wc: chain_cfg(wc.chain)["num_classes"],
        conf_thresholds=hard_conf_thresholds,
        code=code_version(*CODE_PSEUDO),
    threads: 1
    log:
        "logs/hard_labels/{chain}/{run}.log",
    benchmark:
        "logs/benchmark/hard_labels/{chain}/{run}.tsv",
    shell:
        "python {SCRIPTS:q}/pseudo_labels.py --kind hard --model {input.model:q} --target {params.target:q}"
        " --num-classes {params.num_classes} --conf-thresholds '{params.conf_thresholds}' --out {output:q}"
        " --threads {threads} > {log:q} 2>&1"

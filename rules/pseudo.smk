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
    shell:
        "python {SCRIPTS:q}/init_prototypes.py --model {input.model:q} --target {params.target:q}"
        " --num-classes {params.num_classes} --out {output:q} --threads {threads} > {log:q} 2>&1"


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
        code=code_version(*CODE_PSEUDO),
    threads: 1
    log:
        "logs/hard_labels/{chain}/{run}.log",
    shell:
        "python {SCRIPTS:q}/pseudo_labels.py --kind hard --model {input.model:q} --target {params.target:q}"
        " --num-classes {params.num_classes} --out {output:q} --threads {threads} > {log:q} 2>&1"

# Pseudo-labels and prototypes: soft labels and initial prototypes of the warm-up model
# (shared by ProDA and CPSL), and the hard labels of any stage's model.
# Input functions: rules/common.smk.


rule soft_labels:
    """Softmax of the warm-up model on target train at the output stride (HDF5)."""
    input:
        model=handoff("warmup"),
        manifest=target_manifest,
    output:
        "results/{chain}/warmup/soft_labels.h5",
    log:
        "logs/soft_labels/{chain}.log",
    benchmark:
        "logs/benchmark/soft_labels/{chain}.tsv"
    conda:
        "../envs/segcore.yaml"
    threads: 1
    params:
        script=workflow_script("pseudo_labels.py"),
        target=target_train_spec,
        num_classes=num_classes,
        encoding=config["proda"]["soft_encoding"],
        code=code_version("pseudo_labels.py"),
    shell:
        "python {params.script:q} --kind soft --model {input.model:q} --target {params.target:q}"
        " --num-classes {params.num_classes} --encoding {params.encoding} --out {output:q}"
        " --threads {threads} > {log:q} 2>&1"


rule init_prototypes:
    """Class means of the warm-up model's features over its own argmax on target train."""
    input:
        model=handoff("warmup"),
        manifest=target_manifest,
    output:
        "results/{chain}/warmup/prototypes.pt",
    log:
        "logs/init_prototypes/{chain}.log",
    benchmark:
        "logs/benchmark/init_prototypes/{chain}.tsv"
    conda:
        "../envs/segcore.yaml"
    threads: 1
    params:
        script=workflow_script("init_prototypes.py"),
        target=target_train_spec,
        num_classes=num_classes,
        code=code_version("init_prototypes.py"),
    shell:
        "python {params.script:q} --model {input.model:q} --target {params.target:q}"
        " --num-classes {params.num_classes} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule hard_labels:
    """Flip-averaged hard labels and confidences of a stage's model on target train."""
    input:
        model=handoff("{run}"),
        manifest=target_manifest,
    output:
        "results/{chain}/{run}/hard_labels.h5",
    log:
        "logs/hard_labels/{chain}/{run}.log",
    benchmark:
        "logs/benchmark/hard_labels/{chain}/{run}.tsv"
    conda:
        "../envs/segcore.yaml"
    threads: 1
    params:
        script=workflow_script("pseudo_labels.py"),
        target=target_train_spec,
        num_classes=num_classes,
        conf_thresholds=hard_conf_thresholds,
        code=code_version("pseudo_labels.py"),
    shell:
        "python {params.script:q} --kind hard --model {input.model:q} --target {params.target:q}"
        " --num-classes {params.num_classes} --conf-thresholds '{params.conf_thresholds}' --out {output:q}"
        " --threads {threads} > {log:q} 2>&1"

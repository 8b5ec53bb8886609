# Uni-UVPT (source-free): per backbone family {backbone} (swin or mit; uvpt.backbones picks the
# preset), a source model, its pseudo-labels on target train, and the adaptation through prompt
# adapters. Only uvpt_source reads source data: its checkpoint is the hand-over point.
# Input functions: rules/common.smk.


rule uvpt_source:
    """Source-only pre-training of encoder + DAFormer head (the official recipe)."""
    input:
        manifest=source_manifest,
        weights=uvpt_weights,
    output:
        model="results/{chain}/uvpt/{backbone}/source/model.pt",
    log:
        "logs/uvpt_source/{chain}/{backbone}.log",
    benchmark:
        "logs/benchmark/uvpt_source/{chain}/{backbone}.tsv"
    wildcard_constraints:
        backbone="swin|mit",
    conda:
        "../envs/segcore.yaml"
    threads: 1
    resources:
        gpu=0,  # GPUs of the job (a profile sets them; >1: torchrun)
    params:
        script=workflow_script("train_uvpt_source.py"),
        source=uvpt_data_spec("source"),
        num_classes=num_classes,
        preset=uvpt_preset,
        weights=uvpt_weights_arg,
        options=uvpt_options_json("source"),
        seed=chain_seed,
        resume_dir=resume_dir("uvpt/{backbone}/source"),
        code=code_version("train_uvpt_source.py"),
    shell:
        train_command(
            "--source {params.source:q} --num-classes {params.num_classes} --backbone {params.preset}"
            " --imagenet-weights {params.weights} --options {params.options:q} --seed {params.seed}"
            " --out {output.model:q} --workdir {params.resume_dir:q} --threads {threads}"
        )


rule uvpt_pseudo_labels:
    """The source model's argmax (and confidence) on target train, without flip."""
    input:
        model="results/{chain}/uvpt/{backbone}/source/model.pt",
        manifest=target_manifest,
    output:
        "results/{chain}/uvpt/{backbone}/source/pseudo_labels.h5",
    log:
        "logs/uvpt_pseudo_labels/{chain}/{backbone}.log",
    benchmark:
        "logs/benchmark/uvpt_pseudo_labels/{chain}/{backbone}.tsv"
    wildcard_constraints:
        backbone="swin|mit",
    conda:
        "../envs/segcore.yaml"
    threads: 1
    params:
        script=workflow_script("uvpt_pseudo_labels.py"),
        target=uvpt_data_spec("target"),
        num_classes=num_classes,
        code=code_version("uvpt_pseudo_labels.py"),
    shell:
        "python {params.script:q} --model {input.model:q} --target {params.target:q}"
        " --num-classes {params.num_classes} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule uvpt_adapt:
    """Source-free adaptation: prompt adapter on the frozen source encoder, with correction."""
    input:
        init="results/{chain}/uvpt/{backbone}/source/model.pt",
        labels="results/{chain}/uvpt/{backbone}/source/pseudo_labels.h5",
        target=target_manifest,
    output:
        model="results/{chain}/uvpt/{backbone}/adapted/model.pt",
    log:
        "logs/uvpt_adapt/{chain}/{backbone}.log",
    benchmark:
        "logs/benchmark/uvpt_adapt/{chain}/{backbone}.tsv"
    wildcard_constraints:
        backbone="swin|mit",
    conda:
        "../envs/segcore.yaml"
    threads: 1
    resources:
        gpu=0,  # GPUs of the job (a profile sets them; >1: torchrun)
    params:
        script=workflow_script("train_uvpt_adapt.py"),
        target=uvpt_data_spec("target"),
        num_classes=num_classes,
        options=uvpt_options_json("adapt"),
        seed=chain_seed,
        resume_dir=resume_dir("uvpt/{backbone}/adapted"),
        code=code_version("train_uvpt_adapt.py"),
    shell:
        train_command(
            "--target {params.target:q} --num-classes {params.num_classes} --init {input.init:q}"
            " --pseudo-labels {input.labels:q} --options {params.options:q} --seed {params.seed}"
            " --out {output.model:q} --workdir {params.resume_dir:q} --threads {threads}"
        )

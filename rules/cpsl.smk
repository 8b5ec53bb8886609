# CPSL: the warm-up's class distribution (Sinkhorn's class prior) and stage 1, class-balanced
# pixel-level self-labeling. Stages 2 and 3 are distill_stage2 / distill_stage3 of
# rules/proda.smk with {method} = cpsl (options from config cpsl.stage2 / cpsl.stage3).


rule class_distribution:
    """Share of each class among the warm-up model's argmax predictions on target train at the
    output stride (the official generate_class_distribution.py), counted in its soft labels."""
    input:
        soft="results/{chain}/warmup/soft_labels.h5",
        target=target_manifest,
    output:
        "results/{chain}/warmup/class_distribution.json",
    params:
        target=target_spec,
        num_classes=lambda wc: chain_cfg(wc.chain)["num_classes"],
        code=code_version(*CODE_CLASS_DISTRIBUTION),
    threads: 1
    log:
        "logs/class_distribution/{chain}.log",
    benchmark:
        "logs/benchmark/class_distribution/{chain}.tsv",
    shell:
        "python {SCRIPTS:q}/class_distribution.py --soft-labels {input.soft:q} --target {params.target:q}"
        " --num-classes {params.num_classes} --out {output:q} > {log:q} 2>&1"


rule cpsl_stage1:
    """Stage 1: learnable cosine prototypes trained by class-balanced self-labeling rectify the
    warm-up soft labels (reference/proda_cpsl.md 3.2)."""
    input:
        init="results/{chain}/warmup/model.pt",
        prototypes="results/{chain}/warmup/prototypes.pt",
        soft="results/{chain}/warmup/soft_labels.h5",
        class_distribution="results/{chain}/warmup/class_distribution.json",
        source=source_manifest,
        target=target_manifest,
    output:
        model="results/{chain}/cpsl/stage1/model.pt",
        prototypes="results/{chain}/cpsl/stage1/prototypes.pt",
    params:
        source=source_spec,
        target=target_spec,
        num_classes=lambda wc: chain_cfg(wc.chain)["num_classes"],
        options=stage_options_json("cpsl.stage1"),
        seed=config["seed"],
        resume_dir=lambda wc: f"{WORKDIR}/{wc.chain}/cpsl/stage1",
        code=code_version(*CODE_CPSL),
    threads: 1
    resources:
        gpu=0,  # GPUs of the job (a profile sets them; >1: torchrun)
    log:
        "logs/cpsl_stage1/{chain}.log",
    benchmark:
        "logs/benchmark/cpsl_stage1/{chain}.tsv",
    shell:
        TRAIN_LAUNCH + " {SCRIPTS:q}/train_cpsl_stage1.py --source {params.source:q} --target {params.target:q}"
        " --num-classes {params.num_classes} --options {params.options:q} --seed {params.seed}"
        " --init {input.init:q} --prototypes {input.prototypes:q} --soft-labels {input.soft:q}"
        " --class-distribution {input.class_distribution:q} --out {output.model:q}"
        " --out-prototypes {output.prototypes:q} --workdir {params.resume_dir:q} --threads {threads} > {log:q} 2>&1"

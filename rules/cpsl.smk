# CPSL: the warm-up's class distribution (Sinkhorn's class prior) and stage 1, class-balanced
# pixel-level self-labeling. Stages 2 and 3 are distill_stage2 / distill_stage3 of
# rules/proda.smk with {method} = cpsl (options from config cpsl.stage2 / cpsl.stage3).


rule class_distribution:
    """Share of each class among the warm-up model's argmax predictions on target train at the
    output stride (as the official generate_class_distribution.py), counted in its soft labels."""
    input:
        soft="results/{chain}/warmup/soft_labels.h5",
        target=target_manifest,
    output:
        "results/{chain}/warmup/class_distribution.json",
    log:
        "logs/class_distribution/{chain}.log",
    benchmark:
        "logs/benchmark/class_distribution/{chain}.tsv"
    conda:
        "../envs/segcore.yaml"
    threads: 1
    params:
        script=workflow_script("class_distribution.py"),
        target=target_train_spec,
        num_classes=num_classes,
        code=code_version("class_distribution.py"),
    shell:
        "python {params.script:q} --soft-labels {input.soft:q} --target {params.target:q}"
        " --num-classes {params.num_classes} --out {output:q} > {log:q} 2>&1"


rule cpsl_stage1:
    """Stage 1: learnable cosine prototypes trained by class-balanced self-labeling (Sinkhorn
    with the warm-up's class distribution as prior) rectify the warm-up soft labels."""
    input:
        init=handoff("warmup"),
        prototypes="results/{chain}/warmup/prototypes.pt",
        soft="results/{chain}/warmup/soft_labels.h5",
        class_distribution="results/{chain}/warmup/class_distribution.json",
        source=source_manifest,
        target=target_manifest,
        lab_stats=lab_stats_input("cpsl.stage1"),
    output:
        **best_outputs("cpsl/stage1"),
        model="results/{chain}/cpsl/stage1/model.pt",
        prototypes="results/{chain}/cpsl/stage1/prototypes.pt",
    log:
        "logs/cpsl_stage1/{chain}.log",
    benchmark:
        "logs/benchmark/cpsl_stage1/{chain}.tsv"
    conda:
        "../envs/segcore.yaml"
    threads: 1
    resources:
        gpu=0,  # GPUs of the job (a profile sets them; >1: torchrun)
    params:
        script=workflow_script("train_cpsl_stage1.py"),
        source=method_source_spec("cpsl"),
        target=target_train_spec,
        num_classes=num_classes,
        options=stage_options_json("cpsl.stage1"),
        seed=method_seed("cpsl"),
        resume_dir=resume_dir("cpsl/stage1"),
        val=eval_spec,
        val_every=val_every("cpsl.stage1"),
        lab_stats=lab_stats_arg,
        code=code_version("train_cpsl_stage1.py"),
    shell:
        train_command(
            "--source {params.source:q} --target {params.target:q} --num-classes {params.num_classes}"
            " --options {params.options:q} --seed {params.seed} --init {input.init:q}"
            " --prototypes {input.prototypes:q} --soft-labels {input.soft:q}"
            " --class-distribution {input.class_distribution:q} --out {output.model:q}"
            " --out-prototypes {output.prototypes:q} --workdir {params.resume_dir:q} --threads {threads}"
            " {params.lab_stats}",
            best_on_val=True,
        )

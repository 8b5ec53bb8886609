# ProDA: stage 1 (prototypical denoising), then stages 2 and 3 (self-distillation).
# Stages 2 and 3 are generic over {method} so that CPSL reuses them after its own stage 1
# (the methods they serve: segcore/stages.py). Input functions and commands: rules/common.smk.


rule proda_stage1:
    input:
        init=handoff("warmup"),
        prototypes="results/{chain}/warmup/prototypes.pt",
        soft="results/{chain}/warmup/soft_labels.h5",
        source=source_manifest,
        target=target_manifest,
    output:
        **best_outputs("proda/stage1"),
        model="results/{chain}/proda/stage1/model.pt",
    log:
        "logs/proda_stage1/{chain}.log",
    benchmark:
        "logs/benchmark/proda_stage1/{chain}.tsv"
    conda:
        "../envs/segcore.yaml"
    threads: 1
    resources:
        gpu=0,  # GPUs of the job (a profile sets them; >1: torchrun)
    params:
        script=workflow_script("train_proda_stage1.py"),
        source=source_train_spec,
        target=target_train_spec,
        num_classes=num_classes,
        options=stage_options_json("proda.stage1"),
        seed=chain_seed,
        resume_dir=resume_dir("proda/stage1"),
        val=eval_spec,
        val_every=val_every("proda.stage1"),
        code=code_version("train_proda_stage1.py"),
    shell:
        train_command(
            "--source {params.source:q} --target {params.target:q} --num-classes {params.num_classes}"
            " --options {params.options:q} --seed {params.seed} --init {input.init:q}"
            " --prototypes {input.prototypes:q} --soft-labels {input.soft:q} --out {output.model:q}"
            " --workdir {params.resume_dir:q} --threads {threads}",
            best_on_val=True,
        )


rule distill_stage2:
    """Stage 2: the stage-1 model teaches a fresh student (SimCLR weights, or ImageNet's)."""
    input:
        teacher=handoff("{method}/stage1"),
        hard="results/{chain}/{method}/stage1/hard_labels.h5",
        init=stage2_student_init,
        source=source_manifest,
        target=target_manifest,
        lab_stats=lab_stats_input("{method}.stage2"),
    output:
        **best_outputs("{method}/stage2"),
        model="results/{chain}/{method}/stage2/model.pt",
    log:
        "logs/distill_stage2/{chain}/{method}.log",
    benchmark:
        "logs/benchmark/distill_stage2/{chain}/{method}.tsv"
    conda:
        "../envs/segcore.yaml"
    threads: 1
    resources:
        gpu=0,  # GPUs of the job (a profile sets them; >1: torchrun)
    params:
        **distill_params("stage2"),
        init_kind=student_init_kind,
    shell:
        distill_command("stage2", "{params.init_kind}")


rule distill_stage3:
    """Stage 3: the stage-2 model teaches a student initialised from itself."""
    input:
        teacher=handoff("{method}/stage2"),
        hard="results/{chain}/{method}/stage2/hard_labels.h5",
        init=handoff("{method}/stage2"),
        source=source_manifest,
        target=target_manifest,
        lab_stats=lab_stats_input("{method}.stage3"),
    output:
        **best_outputs("{method}/stage3"),
        model="results/{chain}/{method}/stage3/model.pt",
    log:
        "logs/distill_stage3/{chain}/{method}.log",
    benchmark:
        "logs/benchmark/distill_stage3/{chain}/{method}.tsv"
    conda:
        "../envs/segcore.yaml"
    threads: 1
    resources:
        gpu=0,  # GPUs of the job (a profile sets them; >1: torchrun)
    params:
        **distill_params("stage3"),
    shell:
        distill_command("stage3", "checkpoint")

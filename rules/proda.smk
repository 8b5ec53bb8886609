# ProDA: stage 1 (prototypical denoising), then stages 2 and 3 (self-distillation).
# Stages 2 and 3 are generic over {method} so that CPSL reuses them after its own stage 1.


def source_spec(wc):
    return data_spec(chain_cfg(wc.chain)["source"], "train")


def source_manifest(wc):
    return manifest(chain_cfg(wc.chain)["source"])


def target_manifest(wc):
    return manifest(chain_cfg(wc.chain)["target"])


rule proda_stage1:
    input:
        init="results/{chain}/warmup/model.pt",
        prototypes="results/{chain}/warmup/prototypes.pt",
        soft="results/{chain}/warmup/soft_labels.h5",
        source=source_manifest,
        target=target_manifest,
    output:
        model="results/{chain}/proda/stage1/model.pt",
    params:
        source=source_spec,
        target=target_spec,
        num_classes=lambda wc: chain_cfg(wc.chain)["num_classes"],
        options=stage_options_json("proda.stage1"),
        seed=config["seed"],
        resume_dir=lambda wc: f"{WORKDIR}/{wc.chain}/proda/stage1",
        code=code_version(*CODE_STAGE1),
    threads: 1
    resources:
        gpu=0,  # GPUs of the job (a profile sets them; >1: torchrun)
    log:
        "logs/proda_stage1/{chain}.log",
    benchmark:
        "logs/benchmark/proda_stage1/{chain}.tsv",
    shell:
        TRAIN_LAUNCH + " {SCRIPTS:q}/train_proda_stage1.py --source {params.source:q} --target {params.target:q}"
        " --num-classes {params.num_classes} --options {params.options:q} --seed {params.seed}"
        " --init {input.init:q} --prototypes {input.prototypes:q} --soft-labels {input.soft:q}"
        " --out {output.model:q} --workdir {params.resume_dir:q} --threads {threads} > {log:q} 2>&1"


def distill_shell(stage, init_kind):
    return (
        TRAIN_LAUNCH + " {SCRIPTS:q}/train_distill.py --stage {wildcards.method}_" + stage +
        " --source {params.source:q} --target {params.target:q} --num-classes {params.num_classes}"
        " --arch {params.arch} --options {params.options:q} --seed {params.seed}"
        " --teacher {input.teacher:q} --hard-labels {input.hard:q} --student-init {input.init:q}"
        " --init-kind " + init_kind + " --out {output.model:q} --workdir {params.resume_dir:q}"
        " --threads {threads} > {log:q} 2>&1"
    )


def _distill_params(stage):
    return dict(
        source=source_spec,
        target=target_spec,
        num_classes=lambda wc: chain_cfg(wc.chain)["num_classes"],
        arch=config["model"]["arch"],
        options=lambda wc: stage_options_json(f"{wc.method}.{stage}"),
        seed=config["seed"],
        resume_dir=lambda wc: f"{WORKDIR}/{wc.chain}/{wc.method}/{stage}",
        code=code_version(*CODE_DISTILL),
    )


rule distill_stage2:
    """Stage 2: the stage-1 model teaches a SimCLR-initialised student."""
    input:
        teacher="results/{chain}/{method}/stage1/model.pt",
        hard="results/{chain}/{method}/stage1/hard_labels.h5",
        init=simclr_weights,
        source=source_manifest,
        target=target_manifest,
    output:
        model="results/{chain}/{method}/stage2/model.pt",
    params:
        **_distill_params("stage2"),
    threads: 1
    resources:
        gpu=0,  # GPUs of the job (a profile sets them; >1: torchrun)
    log:
        "logs/distill_stage2/{chain}/{method}.log",
    benchmark:
        "logs/benchmark/distill_stage2/{chain}/{method}.tsv",
    shell:
        distill_shell("stage2", "simclr")


rule distill_stage3:
    """Stage 3: the stage-2 model teaches a student initialised from itself."""
    input:
        teacher="results/{chain}/{method}/stage2/model.pt",
        hard="results/{chain}/{method}/stage2/hard_labels.h5",
        init="results/{chain}/{method}/stage2/model.pt",
        source=source_manifest,
        target=target_manifest,
    output:
        model="results/{chain}/{method}/stage3/model.pt",
    params:
        **_distill_params("stage3"),
    threads: 1
    resources:
        gpu=0,  # GPUs of the job (a profile sets them; >1: torchrun)
    log:
        "logs/distill_stage3/{chain}/{method}.log",
    benchmark:
        "logs/benchmark/distill_stage3/{chain}/{method}.tsv",
    shell:
        distill_shell("stage3", "checkpoint")

# DDB (Deliberated Domain Bridging): per round r, two independent self-training paths on
# bridged images (ddb_st, path cu: cross-domain CutMix, ca: cross-domain ClassMix), the class
# prototypes of each path's student (ddb_prototypes), and the cross-path distillation of both
# into a fresh student (ddb_ckd). Round 1 starts from ImageNet; round r > 1's paths start from
# round r-1's CKD student. The declared rounds and rows: segcore/stages.py. Input functions and
# commands: rules/common.smk.


rule ddb_st:
    """Self-training of one bridging path of round {round}: a mean teacher's pseudo-labels on
    the target part of each bridged image, source labels on its source part."""
    input:
        init=ddb_previous_student,
        imagenet=ddb_st_imagenet_input,
        source=source_manifest,
        target=target_manifest,
    output:
        model="results/{chain}/ddb/r{round}_st_{path}/model.pt",
    log:
        "logs/ddb_st/{chain}/r{round}_{path}.log",
    benchmark:
        "logs/benchmark/ddb_st/{chain}/r{round}_{path}.tsv"
    wildcard_constraints:
        round="[1-9][0-9]*",
        path="cu|ca",
    conda:
        "../envs/segcore.yaml"
    threads: 1
    resources:
        gpu=0,  # GPUs of the job (a profile sets them; >1: torchrun)
    params:
        script=workflow_script("train_ddb_st.py"),
        source=source_train_spec,
        target=target_train_spec,
        num_classes=num_classes,
        arch=config["ddb"]["arch"],
        start=ddb_st_start_flags,
        options=ddb_st_options_json,
        seed=chain_seed,
        resume_dir=resume_dir("ddb/r{round}_st_{path}"),
        code=code_version("train_ddb_st.py"),
    shell:
        train_command(
            "--path {wildcards.path} --round {wildcards.round} {params.start}"
            " --source {params.source:q} --target {params.target:q} --num-classes {params.num_classes}"
            " --arch {params.arch} --options {params.options:q} --seed {params.seed}"
            " --out {output.model:q} --workdir {params.resume_dir:q} --threads {threads}"
        )


rule ddb_prototypes:
    """Class prototypes of a path's student on target train: image-level class means of its
    bottleneck feature over its argmax, in one deterministic pass."""
    input:
        model="results/{chain}/ddb/r{round}_st_{path}/model.pt",
        target=target_manifest,
    output:
        "results/{chain}/ddb/r{round}_st_{path}/prototypes.pt",
    log:
        "logs/ddb_prototypes/{chain}/r{round}_{path}.log",
    benchmark:
        "logs/benchmark/ddb_prototypes/{chain}/r{round}_{path}.tsv"
    wildcard_constraints:
        round="[1-9][0-9]*",
        path="cu|ca",
    conda:
        "../envs/segcore.yaml"
    threads: 1
    params:
        script=workflow_script("ddb_prototypes.py"),
        target=target_train_spec,
        num_classes=num_classes,
        resolution=config["ddb"]["prototypes"]["resolution"],
        min_pixels=config["ddb"]["prototypes"]["min_pixels"],
        cap=config["ddb"]["prototypes"]["cap"],
        batch_size=config["ddb"]["prototypes"]["batch_size"],
        code=code_version("ddb_prototypes.py"),
    shell:
        "python {params.script:q} --model {input.model:q} --target {params.target:q}"
        " --num-classes {params.num_classes} --resolution {params.resolution}"
        " --min-pixels {params.min_pixels} --cap {params.cap} --batch-size {params.batch_size}"
        " --out {output:q} --threads {threads} > {log:q} 2>&1"


rule ddb_ckd:
    """Cross-path distillation of round {round}: a fresh student learns the argmax of the two
    frozen path students' prototype-weighted ensemble, plus source CE."""
    input:
        teacher_cu="results/{chain}/ddb/r{round}_st_cu/model.pt",
        teacher_ca="results/{chain}/ddb/r{round}_st_ca/model.pt",
        prototypes_cu="results/{chain}/ddb/r{round}_st_cu/prototypes.pt",
        prototypes_ca="results/{chain}/ddb/r{round}_st_ca/prototypes.pt",
        imagenet=ddb_imagenet_input,
        source=source_manifest,
        target=target_manifest,
    output:
        model="results/{chain}/ddb/r{round}_ckd/model.pt",
    log:
        "logs/ddb_ckd/{chain}/r{round}.log",
    benchmark:
        "logs/benchmark/ddb_ckd/{chain}/r{round}.tsv"
    wildcard_constraints:
        round="[1-9][0-9]*",
    conda:
        "../envs/segcore.yaml"
    threads: 1
    resources:
        gpu=0,  # GPUs of the job (a profile sets them; >1: torchrun)
    params:
        script=workflow_script("train_ddb_ckd.py"),
        source=source_train_spec,
        target=target_train_spec,
        num_classes=num_classes,
        arch=config["ddb"]["arch"],
        imagenet=ddb_imagenet_flag,
        options=stage_options_json("ddb.ckd"),
        seed=chain_seed,
        resume_dir=resume_dir("ddb/r{round}_ckd"),
        code=code_version("train_ddb_ckd.py"),
    shell:
        train_command(
            "--round {wildcards.round} {params.imagenet}"
            " --source {params.source:q} --target {params.target:q} --num-classes {params.num_classes}"
            " --arch {params.arch} --options {params.options:q} --seed {params.seed}"
            " --teacher-cu {input.teacher_cu:q} --teacher-ca {input.teacher_ca:q}"
            " --prototypes-cu {input.prototypes_cu:q} --prototypes-ca {input.prototypes_ca:q}"
            " --out {output.model:q} --workdir {params.resume_dir:q} --threads {threads}"
        )

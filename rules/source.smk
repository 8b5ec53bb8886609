# Training on labels: source-only baseline, oracle (target labels), and the warm-up; the SimCLR
# initialisation of the stage-2 student. Input functions and commands: rules/common.smk.


rule source_only:
    """Baseline: the source labels only."""
    input:
        manifest=source_manifest,
        val=target_manifest,  # its best-on-val validation
        weights=imagenet_input(),
    output:
        **best_outputs("source_only"),
        model="results/{chain}/source_only/model.pt",
    log:
        "logs/source_only/{chain}.log",
    benchmark:
        "logs/benchmark/source_only/{chain}.tsv"
    conda:
        "../envs/segcore.yaml"
    threads: 1
    resources:
        gpu=0,  # GPUs of the job (a profile sets them; >1: torchrun)
    params:
        **supervised_params("source_only"),
        labelled=source_train_spec,
    shell:
        supervised_command("source_only")


rule oracle:
    """Upper bound: trained on the target train labels."""
    input:
        manifest=target_manifest,
        weights=imagenet_input(),
    output:
        **best_outputs("oracle"),
        model="results/{chain}/oracle/model.pt",
    log:
        "logs/oracle/{chain}.log",
    benchmark:
        "logs/benchmark/oracle/{chain}.tsv"
    conda:
        "../envs/segcore.yaml"
    threads: 1
    resources:
        gpu=0,  # GPUs of the job (a profile sets them; >1: torchrun)
    params:
        **supervised_params("oracle"),
        labelled=target_train_spec,
    shell:
        supervised_command("oracle")


if config["warmup"]["mode"] == "adversarial":

    rule warmup:
        """Output-space adversarial warm-up (LS-GAN), the start of every adaptation method."""
        input:
            manifest=source_manifest,
            target=target_manifest,
            weights=imagenet_input(),
        output:
            **best_outputs("warmup"),
            model="results/{chain}/warmup/model.pt",
        log:
            "logs/warmup/{chain}.log",
        benchmark:
            "logs/benchmark/warmup/{chain}.tsv"
        conda:
            "../envs/segcore.yaml"
        threads: 1
        resources:
            gpu=0,  # GPUs of the job (a profile sets them; >1: torchrun)
        params:
            **supervised_params("warmup"),
            labelled=source_train_spec,
            unlabelled=target_train_spec,
        shell:
            supervised_command("adversarial", unlabelled=True)

elif config["warmup"]["mode"] == "import":

    rule warmup:
        """A released warm-up checkpoint (warmup.mode: import) in segcore's format, not trained;
        the authors selected it on the evaluation split, so it is also the best-on-val one."""
        input:
            released=released_warmup,
            val=target_manifest,
        output:
            **best_outputs("warmup"),
            model="results/{chain}/warmup/model.pt",
        log:
            "logs/warmup/{chain}.log",
        benchmark:
            "logs/benchmark/warmup/{chain}.tsv"
        conda:
            "../envs/segcore.yaml"
        threads: 1
        params:
            script=workflow_script("import_checkpoint.py"),
            allow_pickle="--allow-pickle" if config["warmup"]["allow_pickle"] else "",
            arch=config["model"]["arch"],
            num_classes=num_classes,
            val=eval_spec,
            code=code_version("import_checkpoint.py"),
        shell:
            "python {params.script:q} --released {input.released:q} {params.allow_pickle} --stage warmup"
            " --arch {params.arch} --num-classes {params.num_classes} --out {output.model:q}"
            " --val {params.val:q} --best-out {output.model_best:q} --best-metrics {output.metrics_best:q}"
            " --threads {threads} > {log:q} 2>&1"

else:

    rule warmup:
        """The warm-up is the source-only model (warmup.mode: source_only)."""
        input:
            model="results/{chain}/source_only/model.pt",
            model_best="results/{chain}/source_only/model_best.pt",
            metrics_best="results/{chain}/source_only/metrics_best.json",
        output:
            **best_outputs("warmup"),
            model="results/{chain}/warmup/model.pt",
        log:
            "logs/warmup/{chain}.log",
        benchmark:
            "logs/benchmark/warmup/{chain}.tsv"
        localrule: True  # file copies: never a cluster job (nor a GPU one)
        conda:
            "../envs/segcore.yaml"
        shell:
            # each copied under a temporary name in the same folder, then renamed: never half-written
            "cp {input.model:q} {output.model:q}.tmp 2> {log:q} && mv {output.model:q}.tmp {output.model:q}"
            " && cp {input.model_best:q} {output.model_best:q}.tmp 2>> {log:q}"
            " && mv {output.model_best:q}.tmp {output.model_best:q}"
            " && cp {input.metrics_best:q} {output.metrics_best:q}.tmp 2>> {log:q}"
            " && mv {output.metrics_best:q}.tmp {output.metrics_best:q}"


rule simclr:
    """Self-supervised SimCLR pretraining of the backbone on the chain's target and source
    images, used when no SimCLR weights file is configured (the demo)."""
    input:
        source=source_manifest,
        target=target_manifest,
    output:
        model="results/{chain}/simclr/backbone.pt",
    log:
        "logs/simclr/{chain}.log",
    benchmark:
        "logs/benchmark/simclr/{chain}.tsv"
    conda:
        "../envs/segcore.yaml"
    threads: 1
    resources:
        gpu=0,  # GPUs of the job (a profile sets them; >1: torchrun)
    params:
        script=workflow_script("train_simclr.py"),
        images=simclr_images_spec,
        num_classes=num_classes,
        arch=config["model"]["arch"],
        options=json.dumps(config["simclr"]["options"], sort_keys=True),
        seed=chain_seed,
        resume_dir=resume_dir("simclr"),
        code=code_version("train_simclr.py"),
    shell:
        train_command(
            "--images {params.images:q} --arch {params.arch} --num-classes {params.num_classes}"
            " --options {params.options:q} --seed {params.seed} --out {output.model:q}"
            " --workdir {params.resume_dir:q} --threads {threads}"
        )

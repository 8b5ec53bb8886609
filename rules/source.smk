# Training on labels: source-only baseline, oracle (target labels), and the warm-up.


def train_shell(mode, labelled, unlabelled=None):
    """The command of a supervised training job; every value reaches the shell quoted."""
    cmd = (
        TRAIN_LAUNCH + " {SCRIPTS:q}/train_source.py --mode " + mode +
        " --labelled {params.labelled:q} --num-classes {params.num_classes}"
        " --arch {params.arch} {params.imagenet} --options {params.options:q}"
        " --seed {params.seed} --out {output.model:q} --workdir {params.resume_dir:q} --threads {threads}"
    )
    if unlabelled:
        cmd += " --unlabelled {params.unlabelled:q}"
    return cmd + " > {log:q} 2>&1"


def _common_params(stage):
    return dict(
        num_classes=lambda wc: chain_cfg(wc.chain)["num_classes"],
        arch=config["model"]["arch"],
        imagenet=("--imagenet-weights " + shlex.quote(config["model"]["imagenet_weights"]))
        if config["model"]["imagenet_weights"] else "",
        options=stage_options_json(stage),
        seed=config["seed"],
        resume_dir=lambda wc: f"{WORKDIR}/{wc.chain}/{stage}",
        code=code_version(*CODE_TRAIN),
    )


rule source_only:
    """Baseline: the source labels only."""
    input:
        manifest=lambda wc: manifest(chain_cfg(wc.chain)["source"]),
        weights=imagenet_input(),
    output:
        model="results/{chain}/source_only/model.pt",
    params:
        labelled=lambda wc: data_spec(chain_cfg(wc.chain)["source"], "train"),
        **_common_params("source_only"),
    threads: 1
    resources:
        gpu=0,  # GPUs of the job (a profile sets them; >1: torchrun)
    log:
        "logs/source_only/{chain}.log",
    benchmark:
        "logs/benchmark/source_only/{chain}.tsv",
    shell:
        train_shell("source_only", True)


rule oracle:
    """Upper bound: trained on the target train labels."""
    input:
        manifest=lambda wc: manifest(chain_cfg(wc.chain)["target"]),
        weights=imagenet_input(),
    output:
        model="results/{chain}/oracle/model.pt",
    params:
        labelled=lambda wc: data_spec(chain_cfg(wc.chain)["target"], "train"),
        **_common_params("oracle"),
    threads: 1
    resources:
        gpu=0,  # GPUs of the job (a profile sets them; >1: torchrun)
    log:
        "logs/oracle/{chain}.log",
    benchmark:
        "logs/benchmark/oracle/{chain}.tsv",
    shell:
        train_shell("oracle", True)


if config["warmup"]["mode"] == "adversarial":

    rule warmup:
        """Output-space adversarial warm-up (LS-GAN), the start of every adaptation method."""
        input:
            manifest=lambda wc: manifest(chain_cfg(wc.chain)["source"]),
            target=lambda wc: manifest(chain_cfg(wc.chain)["target"]),
            weights=imagenet_input(),
        output:
            model="results/{chain}/warmup/model.pt",
        params:
            labelled=lambda wc: data_spec(chain_cfg(wc.chain)["source"], "train"),
            unlabelled=lambda wc: data_spec(chain_cfg(wc.chain)["target"], "train"),
            **_common_params("warmup"),
        threads: 1
        resources:
            gpu=0,  # GPUs of the job (a profile sets them; >1: torchrun)
        log:
            "logs/warmup/{chain}.log",
        benchmark:
            "logs/benchmark/warmup/{chain}.tsv",
        shell:
            train_shell("adversarial", True, unlabelled=True)

else:

    rule warmup:
        """The warm-up is the source-only model (warmup.mode: source_only)."""
        input:
            "results/{chain}/source_only/model.pt",
        output:
            model="results/{chain}/warmup/model.pt",
        localrule: True  # a file copy: never a cluster job (nor a GPU one)
        log:
            "logs/warmup/{chain}.log",
        benchmark:
            "logs/benchmark/warmup/{chain}.tsv",
        shell:
            # copy under a temporary name in the same folder, then rename: never half-written
            "cp {input:q} {output.model:q}.tmp 2> {log:q} && mv {output.model:q}.tmp {output.model:q}"


def simclr_weights(wc):
    """The stage-2 student's initialisation: a configured SimCLR file, or our own rule's."""
    return config["simclr"]["weights"] or f"results/{wc.chain}/simclr/backbone.pt"


rule simclr:
    """Self-supervised SimCLR pretraining of the backbone on the chain's target and source
    images, used when no SimCLR weights file is configured (the demo)."""
    input:
        source=lambda wc: manifest(chain_cfg(wc.chain)["source"]),
        target=lambda wc: manifest(chain_cfg(wc.chain)["target"]),
    output:
        model="results/{chain}/simclr/backbone.pt",
    params:
        images=lambda wc: "[" + data_spec(chain_cfg(wc.chain)["target"], "train") + ", "
        + data_spec(chain_cfg(wc.chain)["source"], "train") + "]",
        num_classes=lambda wc: chain_cfg(wc.chain)["num_classes"],
        arch=config["model"]["arch"],
        options=json.dumps(config["simclr"]["options"], sort_keys=True),
        seed=config["seed"],
        resume_dir=lambda wc: f"{WORKDIR}/{wc.chain}/simclr",
        code=code_version("segcore/methods/simclr.py", "segcore/train/simclr_loop.py", "segcore/models",
                          "segcore/data/datasets.py", "workflow_scripts/train_simclr.py"),
    threads: 1
    resources:
        gpu=0,  # GPUs of the job (a profile sets them; >1: torchrun)
    log:
        "logs/simclr/{chain}.log",
    benchmark:
        "logs/benchmark/simclr/{chain}.tsv",
    shell:
        TRAIN_LAUNCH + " {SCRIPTS:q}/train_simclr.py --images {params.images:q} --arch {params.arch}"
        " --num-classes {params.num_classes} --options {params.options:q} --seed {params.seed}"
        " --out {output.model:q} --workdir {params.resume_dir:q} --threads {threads} > {log:q} 2>&1"

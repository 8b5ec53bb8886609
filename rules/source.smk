# Training on labels: source-only baseline, oracle (target labels), and the warm-up.


def train_shell(mode, labelled, unlabelled=None):
    """The command of a supervised training job; every value reaches the shell quoted."""
    cmd = (
        "python {SCRIPTS:q}/train_source.py --mode " + mode +
        " --labelled {params.labelled:q} --num-classes {params.num_classes}"
        " --arch {params.arch} --imagenet-weights {params.imagenet:q} --options {params.options:q}"
        " --seed {params.seed} --out {output.model:q} --workdir {params.workdir:q} --threads {threads}"
    )
    if unlabelled:
        cmd += " --unlabelled {params.unlabelled:q}"
    return cmd + " > {log:q} 2>&1"


def _common_params(stage):
    return dict(
        num_classes=lambda wc: chain_cfg(wc.chain)["num_classes"],
        arch=config["model"]["arch"],
        imagenet=config["model"]["imagenet_weights"] or "",
        options=stage_options_json(stage),
        seed=config["seed"],
        workdir=lambda wc: f"{WORKDIR}/{wc.chain}/{stage}",
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
    log:
        "logs/source_only/{chain}.log",
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
    log:
        "logs/oracle/{chain}.log",
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
        log:
            "logs/warmup/{chain}.log",
        shell:
            train_shell("adversarial", True, unlabelled=True)

else:

    rule warmup:
        """The warm-up is the source-only model (warmup.mode: source_only)."""
        input:
            "results/{chain}/source_only/model.pt",
        output:
            model="results/{chain}/warmup/model.pt",
        log:
            "logs/warmup/{chain}.log",
        shell:
            "cp {input:q} {output.model:q} 2> {log:q}"

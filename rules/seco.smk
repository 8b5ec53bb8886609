# SeCo on the stages listed in seco.bases: the base's hard labels with their full confidence,
# PSA (regions from SAM or the classical proposer), SCC (connectivity correction), the
# re-training, and per chain the pseudo-label quality table (the only rule reading target
# ground truth). Outputs under results/{chain}/seco/{base}/, {base} the run folder with / as _.
# Input functions: rules/common.smk (seco_*); the declaration: segcore/stages.py.
import json
import sys

# the stages SeCo can refine: every declared stage but its own
SECO_BASE_RUNS = [r for r, (method, _) in TABLE_RUNS.items() if method != "seco"]
for _base in config["seco"]["bases"]:
    if _base not in SECO_BASE_RUNS:
        sys.exit(
            f"Invalid configuration: config key 'seco.bases': {_base!r} is not a declared stage"
            f" (declared: {', '.join(SECO_BASE_RUNS)})"
        )

SECO = config["seco"]


wildcard_constraints:
    # any declared stage's run folder with / as _ (seco.bases picks the ones that run)
    base="|".join(seco_folder(r) for r in SECO_BASE_RUNS),


rule seco_base_labels:
    """The base's flip-averaged hard labels with the float16 confidence SeCo ranks."""
    input:
        model=seco_base_model,
        manifest=target_manifest,
    output:
        "results/{chain}/seco/{base}/base_labels.h5",
    log:
        "logs/seco_base_labels/{chain}/{base}.log",
    benchmark:
        "logs/benchmark/seco_base_labels/{chain}/{base}.tsv"
    conda:
        "../envs/segcore.yaml"
    threads: 1
    params:
        script=workflow_script("pseudo_labels.py"),
        target=target_train_spec,
        num_classes=num_classes,
        code=code_version("pseudo_labels.py"),
    shell:
        "python {params.script:q} --kind hard --model {input.model:q} --target {params.target:q}"
        " --num-classes {params.num_classes} --conf-thresholds '' --out {output:q}"
        " --threads {threads} > {log:q} 2>&1"


rule seco_psa:
    """Step 1: the base's confident pixels aggregated into regions (PSA)."""
    input:
        hard="results/{chain}/seco/{base}/base_labels.h5",
        manifest=target_manifest,
        sam=[SECO["sam"]["checkpoint"]] if SECO["sam"]["checkpoint"] else [],
    output:
        "results/{chain}/seco/{base}/psa_labels.h5",
    log:
        "logs/seco_psa/{chain}/{base}.log",
    benchmark:
        "logs/benchmark/seco_psa/{chain}/{base}.tsv"
    conda:
        "../envs/segcore.yaml"
    threads: 1
    params:
        script=workflow_script("seco_psa.py"),
        target=target_train_spec,
        num_classes=num_classes,
        base=seco_base_run,
        options=json.dumps({**SECO["psa"], "sam": SECO["sam"], "classical": SECO["classical"]}, sort_keys=True),
        code=code_version("seco_psa.py"),
    shell:
        "python {params.script:q} --hard-labels {input.hard:q} --target {params.target:q}"
        " --num-classes {params.num_classes} --base {params.base:q} --options {params.options:q}"
        " --out {output:q} --threads {threads} > {log:q} 2>&1"


rule seco_scc:
    """Step 2: the component classifier, the per-component loss and the noisy/clean rule."""
    input:
        psa="results/{chain}/seco/{base}/psa_labels.h5",
        manifest=target_manifest,
        imagenet=[SECO["scc"]["imagenet"]] if SECO["scc"]["imagenet"] else [],
    output:
        "results/{chain}/seco/{base}/scc_labels.h5",
    log:
        "logs/seco_scc/{chain}/{base}.log",
    benchmark:
        "logs/benchmark/seco_scc/{chain}/{base}.tsv"
    conda:
        "../envs/segcore.yaml"
    threads: 1
    resources:
        gpu=0,  # GPUs of the job (a profile sets them; >1: torchrun)
    params:
        script=workflow_script("seco_scc.py"),
        target=target_train_spec,
        num_classes=num_classes,
        options=json.dumps(SECO["scc"], sort_keys=True),
        seed=chain_seed,
        resume_dir=resume_dir("seco/{base}/scc"),
        code=code_version("seco_scc.py"),
    shell:
        train_command(
            "--target {params.target:q} --num-classes {params.num_classes} --psa-labels {input.psa:q}"
            " --options {params.options:q} --seed {params.seed} --out {output:q}"
            " --workdir {params.resume_dir:q} --threads {threads}"
        )


rule seco_retrain:
    """Step 3: the base's network re-trained on the SCC labels (seco.retrain.recipe)."""
    input:
        init=seco_base_model,
        refined="results/{chain}/seco/{base}/scc_labels.h5",
        source=source_manifest,
        target=target_manifest,
    output:
        model="results/{chain}/seco/{base}/retrain/model.pt",
    log:
        "logs/seco_retrain/{chain}/{base}.log",
    benchmark:
        "logs/benchmark/seco_retrain/{chain}/{base}.tsv"
    conda:
        "../envs/segcore.yaml"
    threads: 1
    resources:
        gpu=0,  # GPUs of the job (a profile sets them; >1: torchrun)
    params:
        script=workflow_script("seco_retrain.py"),
        recipe=SECO["retrain"]["recipe"],
        source=source_train_spec,
        target=target_train_spec,
        num_classes=num_classes,
        options=stage_options_json("seco.retrain"),
        seed=chain_seed,
        resume_dir=resume_dir("seco/{base}/retrain"),
        code=code_version("seco_retrain.py"),
    shell:
        train_command(
            "--recipe {params.recipe} --source {params.source:q} --target {params.target:q}"
            " --num-classes {params.num_classes} --options {params.options:q} --seed {params.seed}"
            " --init {input.init:q} --refined {input.refined:q} --out {output.model:q}"
            " --workdir {params.resume_dir:q} --threads {threads}"
        )


rule seco_quality:
    """Per-class precision and coverage of every label set against target-train ground truth
    (a measurement: no rule of the method reads it)."""
    input:
        stores=lambda wildcards: list(seco_quality_stores(wildcards).values()),
        manifest=target_manifest,
    output:
        csv="results/{chain}/seco/quality.csv",
        md="results/{chain}/seco/quality.md",
    log:
        "logs/seco_quality/{chain}.log",
    benchmark:
        "logs/benchmark/seco_quality/{chain}.tsv"
    conda:
        "../envs/segcore.yaml"
    threads: 1
    params:
        script=workflow_script("seco_quality.py"),
        target=target_train_spec,
        num_classes=num_classes,
        stores=seco_quality_flags,
        confident=json.dumps({k: SECO["psa"][k] for k in ("fraction", "scope")}, sort_keys=True),
        code=code_version("seco_quality.py"),
    shell:
        "python {params.script:q} --target {params.target:q} --num-classes {params.num_classes}"
        " {params.stores} --confident {params.confident:q} --out-csv {output.csv:q}"
        " --out-md {output.md:q} > {log:q} 2>&1"

# Raw datasets (generated when demo.enabled) and their conversion to trainId labels.
# Input functions: rules/common.smk.


if config["demo"]["enabled"]:
    for _ds in DATASETS:
        _demo = config["demo"][_ds]

        rule:
            name:
                f"demo_{_ds}"
            output:
                directory(config["datasets"][_ds]["root"]),
            log:
                f"logs/demo/{_ds}.log",
            benchmark:
                f"logs/benchmark/demo/{_ds}.tsv"
            conda:
                "../envs/segcore.yaml"
            params:
                script=workflow_script("make_demo.py"),
                dataset=_ds,
                n_images=_demo.get("count", _demo.get("train_count")),
                val_count=_demo.get("val_count", 0),
                size=_demo["size"],
                seed=config["demo"]["seed"],
                shift=config["demo"]["shift"],
                code=code_version("make_demo.py"),
            shell:
                "python {params.script:q} --dataset {params.dataset} --root {output:q}"
                " --count {params.n_images} --val-count {params.val_count}"
                " --size {params.size[0]} {params.size[1]} --seed {params.seed} --shift {params.shift}"
                " > {log:q} 2>&1"


rule convert:
    """Labels of one dataset to 19-class trainIds, with a manifest and class statistics."""
    input:
        raw_root,
    output:
        manifest="results/data/{dataset}/manifest.csv",
        stats="results/data/{dataset}/class_stats.json",
        counts="results/data/{dataset}/label_counts.csv",
        labels=directory("results/data/{dataset}/labels"),
    log:
        "logs/convert/{dataset}.log",
    benchmark:
        "logs/benchmark/convert/{dataset}.tsv"
    conda:
        "../envs/segcore.yaml"
    threads: 8
    params:
        script=workflow_script("convert.py"),
        size_mismatch=size_mismatch,
        code=code_version("convert.py"),
    shell:
        "python {params.script:q} --dataset {wildcards.dataset} --root {input:q}"
        " --out results/data/{wildcards.dataset} --workers {threads}"
        " --size-mismatch {params.size_mismatch} > {log:q} 2>&1"


rule lab_stats:
    """Per-image CIE-LAB mean and std of a target train set: the references of CPSL's colour
    transfer of the source images, computed once instead of on every source image read."""
    input:
        manifest="results/data/{dataset}/manifest.csv",
    output:
        "results/data/{dataset}/lab_stats_train.json",
    log:
        "logs/lab_stats/{dataset}.log",
    benchmark:
        "logs/benchmark/lab_stats/{dataset}.tsv"
    conda:
        "../envs/segcore.yaml"
    threads: 4
    params:
        script=workflow_script("lab_stats.py"),
        images=lambda wildcards: data_spec(wildcards.dataset, "train"),
        code=code_version("lab_stats.py"),
    shell:
        "python {params.script:q} --images {params.images:q} --out {output:q} --threads {threads}" " > {log:q} 2>&1"

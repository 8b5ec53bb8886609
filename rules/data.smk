# Raw datasets (generated when demo.enabled) and their conversion to trainId labels.


def raw_root(dataset):
    return config["datasets"][dataset]["root"]


if config["demo"]["enabled"]:
    for _ds in DATASETS:
        _demo = config["demo"][_ds]

        rule:
            name:
                f"demo_{_ds}"
            output:
                directory(raw_root(_ds)),
            params:
                dataset=_ds,
                n_images=_demo.get("count", _demo.get("train_count")),
                val_count=_demo.get("val_count", 0),
                size=_demo["size"],
                seed=config["demo"]["seed"],
                shift=config["demo"]["shift"],
                code=code_version("segcore/data/demo.py", "segcore/data/demo_scenes.py", "segcore/data/io.py"),
            log:
                f"logs/demo/{_ds}.log",
            benchmark:
                f"logs/benchmark/demo/{_ds}.tsv",
            shell:
                "python {SCRIPTS:q}/make_demo.py --dataset {params.dataset} --root {output:q}"
                " --count {params.n_images} --val-count {params.val_count}"
                " --size {params.size[0]} {params.size[1]} --seed {params.seed} --shift {params.shift}"
                " > {log:q} 2>&1"


rule convert:
    """Labels of one dataset to 19-class trainIds, with a manifest and class statistics."""
    input:
        lambda wc: raw_root(wc.dataset),
    output:
        manifest="results/data/{dataset}/manifest.csv",
        stats="results/data/{dataset}/class_stats.json",
        counts="results/data/{dataset}/label_counts.csv",
        labels=directory("results/data/{dataset}/labels"),
    params:
        size_mismatch=lambda wc: config["datasets"][wc.dataset]["size_mismatch"],
        code=code_version(*CODE_DATA),
    threads: 8
    log:
        "logs/convert/{dataset}.log",
    benchmark:
        "logs/benchmark/convert/{dataset}.tsv",
    shell:
        "python {SCRIPTS:q}/convert.py --dataset {wildcards.dataset} --root {input:q}"
        " --out results/data/{wildcards.dataset} --workers {threads}"
        " --size-mismatch {params.size_mismatch} > {log:q} 2>&1"

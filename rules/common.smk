# Shared helpers of the rules: chain lookups, input functions, shell commands, and the
# code version of each job. Functions only: the other .smk files hold the rules.
import json
import os
import shlex
from pathlib import Path

from segcore import config as segconfig
from segcore import stages
from segcore.code_version import code_version as closure_version

CHAINS = config["run_chains"]
SEEDS = config["seeds"]
# the rows of the results table: the declared runs, SeCo's those of seco.bases, DDB's those
# of ddb.rounds
TABLE_RUNS = stages.table_runs(config["seco"]["bases"], config["ddb"]["rounds"])
DATASETS = sorted({d for c in config["chains"].values() for d in segconfig.chain_datasets(c)})
WORKDIR = config["workdir"]


wildcard_constraints:
    # a chain's runs of its first seed, or chain/seed_<s> for another seed (seed_roots)
    chain="(?:{})(?:/seed_[0-9]+)?".format("|".join(config["chains"])),
    dataset="|".join(DATASETS),
    run="(?!seed_)[a-z0-9_]+(/[a-z0-9_]+)*",
    # the methods whose stages 2 and 3 the generic distillation rules write (segcore/stages.py)
    method="|".join(stages.methods_of_rule("distill_stage2")),


def repo_path(path):
    """A config path relative to the working directory, else to this repository (shipped files)."""
    if path is None or Path(path).is_absolute() or Path(path).exists():
        return path
    return str(Path(workflow.basedir) / path)


PUBLISHED = repo_path(config["published_results"])


def workflow_script(name):
    """The path a job's shell runs ``workflow_scripts/<name>`` by, relative to the working
    directory (the repository itself in the README's commands): a job's params stay the same
    when the checkout moves together with its working directory."""
    return os.path.relpath(Path(workflow.basedir, "workflow_scripts", name))


def code_version(name):
    """Hash of the files ``workflow_scripts/<name>`` imports inside segcore/ and
    workflow_scripts/ (found from the source: segcore/code_version.py), passed as the ``code``
    param so that Snakemake reruns a job, and what follows, when the code it runs changes
    (README: "Code changes")."""
    return closure_version(Path("workflow_scripts", name), workflow.basedir)


# --- chains and their data -------------------------------------------------------------


def chain_cfg(name):
    """The config of chain ``name`` (``{chain}``, with or without its /seed_<s> part)."""
    return config["chains"][name.split("/", 1)[0]]


def seed_roots(chain):
    """The folders under results/ of ``chain``'s runs, one per seed of ``seeds``: the chain's own
    folder for the first seed (a one-seed workflow has the plain layout), chain/seed_<s> for
    each other seed, so adding a seed adds only its own jobs."""
    return [chain] + [f"{chain}/seed_{s}" for s in SEEDS[1:]]


def chain_seed(wildcards):
    """The seed of the runs under results/{chain}/: s for chain/seed_<s>, else the first seed."""
    _, _, folder = wildcards.chain.partition("/")
    return int(folder.removeprefix("seed_")) if folder else SEEDS[0]


def method_seed(method=None):
    """Input function: the seed of ``method``'s ({method} when None) runs under results/{chain}/:
    the entry of ``<method>.seeds`` at the place of the folder's seed in ``seeds`` (CPSL's own
    official seed), else the folder's seed."""

    def seed(wildcards):
        s = chain_seed(wildcards)
        own = config.get(method or wildcards.method, {}).get("seeds")
        return own[SEEDS.index(s)] if own else s

    return seed


def manifest(dataset):
    return f"results/data/{dataset}/manifest.csv"


def data_spec(dataset, split):
    """JSON handed to training scripts: which converted set to read, and at which size."""
    return json.dumps({"manifest": manifest(dataset), "split": split, "resize": config["datasets"][dataset]["resize"]})


def source_datasets(wildcards):
    """The chain's source dataset(s), a list: several for a multi-source chain."""
    return segconfig.source_datasets(chain_cfg(wildcards.chain))


def source_manifest(wildcards):
    """The manifest(s) of the chain's source dataset(s)."""
    return [manifest(d) for d in source_datasets(wildcards)]


def target_manifest(wildcards):
    return manifest(chain_cfg(wildcards.chain)["target"])


def source_train_spec(wildcards):
    """JSON of the chain's source train set, or the list of them for a multi-source chain (the
    training scripts draw from their union)."""
    specs = source_specs(wildcards)
    return json.dumps(specs if len(specs) > 1 else specs[0])


def source_specs(wildcards):
    """The train spec (a dict) of each of the chain's source datasets."""
    return [json.loads(data_spec(d, "train")) for d in source_datasets(wildcards)]


def method_source_spec(method=None):
    """Input function: the chain's source train set(s) as ``method`` ({method} when None) reads
    them: at ``<method>.source_resize`` of a dataset where set (CPSL's own GTA5 size), else at the
    dataset's resize."""

    def spec(wildcards):
        own = config.get(method or wildcards.method, {}).get("source_resize") or {}
        specs = [
            dict(s, resize=own.get(d, s["resize"])) for d, s in zip(source_datasets(wildcards), source_specs(wildcards))
        ]
        return json.dumps(specs if len(specs) > 1 else specs[0])

    return spec


def target_train_spec(wildcards):
    return data_spec(chain_cfg(wildcards.chain)["target"], "train")


def lab_stats_input(stage):
    """Input function: the target's LAB statistics (rule lab_stats) when ``stage``
    ("cpsl.stage1", "{method}.stage2") sets ``lab_transfer``, else nothing."""

    def lab_stats(wildcards):
        opts = segconfig.stage_options(config, stage.format(**dict(wildcards.items())))
        if not opts.get("lab_transfer"):
            return []
        return f"results/data/{chain_cfg(wildcards.chain)['target']}/lab_stats_train.json"

    return lab_stats


def lab_stats_arg(wildcards, input):
    """The ``--lab-stats`` argument of a job whose input names ``lab_stats``, when it has one."""
    return f"--lab-stats {shlex.quote(str(input.lab_stats))}" if input.get("lab_stats") else ""


def simclr_images_spec(wildcards):
    """The SimCLR rule's images: the chain's target, then its source train split(s)."""
    return json.dumps([json.loads(target_train_spec(wildcards))] + source_specs(wildcards))


def target_resize_json(wildcards):
    return json.dumps(config["datasets"][chain_cfg(wildcards.chain)["target"]]["resize"])


def num_classes(wildcards):
    return chain_cfg(wildcards.chain)["num_classes"]


raw_root = lookup(dpath="datasets/{dataset}/root", within=config)
size_mismatch = lookup(dpath="datasets/{dataset}/size_mismatch", within=config)


# --- training jobs ----------------------------------------------------------------------


def imagenet_input():
    path = config["model"]["imagenet_weights"]
    return [path] if path else []


IMAGENET_FLAG = (
    f"--imagenet-weights {shlex.quote(config['model']['imagenet_weights'])}"
    if config["model"]["imagenet_weights"]
    else ""
)


def student_init_kind(wildcards):
    """How {method}'s stage-2 student starts: "simclr" (the official) or "imagenet"."""
    return segconfig.stage_options(config, f"{wildcards.method}.stage2")["student_init"]


def released_file(wildcards):
    """The released checkpoint of {run} for the chain (released.checkpoints); every seed of a
    chain reads the same file."""
    return config["released"]["checkpoints"][wildcards.chain.split("/", 1)[0]][wildcards.run]


def released_allow_pickle(wildcards, input):
    """``--allow-pickle`` where released.allow_pickle lists the job's file."""
    return "--allow-pickle" if str(input.released) in config["released"]["allow_pickle"] else ""


def released_stage_name(wildcards):
    """The stage name a released checkpoint records, as the training scripts do (proda_stage1)."""
    return "_".join(wildcards.run.split("/"))


def released_row_runs():
    """The runs with a `released` row in some chain: a released checkpoint not standing in for its run."""
    replaced = set(config["released"]["replace"])
    return sorted({r for c in CHAINS for r in config["released"]["checkpoints"].get(c, {}) if r not in replaced})


def table_released_rows():
    """(chain, method, stage, metrics) of each `released` row (the chain's own folder: one file per chain)."""
    replaced = set(config["released"]["replace"])
    return [
        (c, *TABLE_RUNS[run], f"results/{c}/eval/released/{run}.json")
        for c in CHAINS
        for run in config["released"]["checkpoints"].get(c, {})
        if run not in replaced
    ]


def released_warmup(wildcards):
    """The released warm-up checkpoint of the chain (warmup.mode: import)."""
    return config["warmup"]["released"][wildcards.chain.split("/", 1)[0]]


def stage2_student_init(wildcards):
    """The stage-2 student's backbone file: the ImageNet file (student_init: imagenet), else a
    configured SimCLR file, else our own `simclr` rule's."""
    if student_init_kind(wildcards) == "imagenet":
        return config["model"]["imagenet_weights"]
    return config["simclr"]["weights"] or f"results/{wildcards.chain}/simclr/backbone.pt"


def stage_options_json(stage):
    """The options JSON of a stage's job (``segconfig.job_options``)."""
    return json.dumps(segconfig.job_options(config, stage), sort_keys=True)


def distill_options_json(stage):
    """The options of ``{method}.<stage>`` (a distillation rule serves several methods)."""
    return lambda wildcards: stage_options_json(f"{wildcards.method}.{stage}")


# --- best-on-val (segcore/train/best.py): the stages with Stage.best_on_val -------------


def best_outputs(run):
    """The best-on-val outputs of ``run`` ("proda/stage1", "{method}/stage2"), next to its model.pt."""
    return dict(
        model_best=f"results/{{chain}}/{run}/model_best.pt",
        metrics_best=f"results/{{chain}}/{run}/metrics_best.json",
    )


def eval_spec(wildcards):
    """JSON of the evaluation split (evaluate.split of the chain's target), which best-on-val selects on."""
    return data_spec(chain_cfg(wildcards.chain)["target"], config["evaluate"]["split"])


def val_every(stage):
    """``val_every`` of ``stage`` ("proda.stage1", "{method}.stage2")."""
    return lambda wildcards: segconfig.stage_options(config, stage.format(**dict(wildcards.items())))["val_every"]


BEST_ARGS = (
    " --val {params.val:q} --val-every {params.val_every}"
    " --best-out {output.model_best:q} --best-metrics {output.metrics_best:q}"
)


def handoff_file(run):
    """The checkpoint of ``run`` that the next stages read: model_best.pt where its stage keeps
    one and its ``handoff`` is best, else model.pt."""
    found = stages.stage_of_run(run)
    if found is not None and found[1].best_on_val:
        if segconfig.stage_options(config, found[1].config)["handoff"] == "best":
            return "model_best.pt"
    return "model.pt"


def handoff(run):
    """Input function: the checkpoint of ``run`` ("warmup", "{method}/stage1") the next stage reads."""

    def path(wildcards):
        r = run.format(**dict(wildcards.items()))
        return f"results/{wildcards.chain}/{r}/{handoff_file(r)}"

    return path


def resume_dir(run):
    """The rolling resume state of a training job: ``<workdir>/{chain}/<run>`` (not an output)."""
    return lambda wildcards: f"{WORKDIR}/{wildcards.chain}/{run.format(**dict(wildcards.items()))}"


# How a training job starts its script: one process per GPU under torchrun when the job has
# more than one GPU, else one plain process (no GPU, or one). `resources.gpu` is 0 in every
# training rule (local runs) and a profile raises it per rule (profiles/slurm). Resources are
# not params, so switching profiles reruns nothing; the command template stays the same.
TRAIN_LAUNCH = (
    "$([ {resources.gpu} -gt 1 ] && echo torchrun --standalone --nproc_per_node={resources.gpu} || echo python)"
)


def train_command(args, best_on_val=False):
    """The shell of a training job: its script (``params.script``) under TRAIN_LAUNCH with
    ``args`` (and BEST_ARGS for a stage keeping a best-on-val checkpoint), the log capturing
    both streams; every value reaches the shell quoted."""
    best = BEST_ARGS if best_on_val else ""
    return f"{TRAIN_LAUNCH} {{params.script:q}} {args}{best} > {{log:q}} 2>&1"


def supervised_command(mode, unlabelled=False):
    """The shell of a train_source.py job (source-only, oracle, adversarial warm-up)."""
    args = (
        f"--mode {mode} --labelled {{params.labelled:q}} --num-classes {{params.num_classes}}"
        " --arch {params.arch} {params.imagenet} --options {params.options:q}"
        " --seed {params.seed} --out {output.model:q} --workdir {params.resume_dir:q} --threads {threads}"
    )
    if unlabelled:
        args += " --unlabelled {params.unlabelled:q}"
    return train_command(args, best_on_val=True)


def supervised_params(stage):
    """The params every train_source.py job shares."""
    return dict(
        script=workflow_script("train_source.py"),
        num_classes=num_classes,
        arch=config["model"]["arch"],
        imagenet=IMAGENET_FLAG,
        options=stage_options_json(stage),
        seed=chain_seed,
        resume_dir=resume_dir(stage),
        val=eval_spec,
        val_every=val_every(stage),
        code=code_version("train_source.py"),
    )


def distill_command(stage, init_kind):
    """The shell of a train_distill.py job (stage 2 or 3 of {method}); ``init_kind`` goes to
    ``--init-kind`` (a literal, or a ``{params.*}`` placeholder)."""
    return train_command(
        f"--stage {{wildcards.method}}_{stage}"
        " --source {params.source:q} --target {params.target:q} --num-classes {params.num_classes}"
        " --arch {params.arch} --options {params.options:q} --seed {params.seed}"
        " --teacher {input.teacher:q} --hard-labels {input.hard:q} --student-init {input.init:q}"
        f" --init-kind {init_kind} --out {{output.model:q}} --workdir {{params.resume_dir:q}}"
        " --threads {threads} {params.lab_stats}",
        best_on_val=True,
    )


def distill_params(stage):
    """The params of a distillation job (stage 2 or 3 of {method})."""
    return dict(
        script=workflow_script("train_distill.py"),
        source=method_source_spec(),
        target=target_train_spec,
        num_classes=num_classes,
        arch=config["model"]["arch"],
        options=distill_options_json(stage),
        seed=method_seed(),
        resume_dir=resume_dir(f"{{method}}/{stage}"),
        val=eval_spec,
        val_every=val_every(f"{{method}}.{stage}"),
        lab_stats=lab_stats_arg,
        code=code_version("train_distill.py"),
    )


# --- DDB (rules/ddb.smk) ---------------------------------------------------------------


def ddb_st_options_json(wildcards):
    """The options of a DDB ST path: ddb.st without the keys only the other path reads."""
    from segcore.methods.ddb.options import path_options

    return json.dumps(path_options(segconfig.job_options(config, "ddb.st"), wildcards.path), sort_keys=True)


def ddb_imagenet_input(wildcards):
    """The configured ImageNet file of DDB (every CKD student, round-1 ST paths), if any."""
    path = config["ddb"]["imagenet_weights"]
    return [path] if path else []


def ddb_st_imagenet_input(wildcards):
    return ddb_imagenet_input(wildcards) if int(wildcards.round) == 1 else []


def ddb_previous_student(wildcards):
    """A DDB ST path's start: none in round 1 (ImageNet), else the previous round's CKD student."""
    r = int(wildcards.round)
    return [f"results/{wildcards.chain}/ddb/r{r - 1}_ckd/model.pt"] if r > 1 else []


def ddb_st_start_flags(wildcards, input):
    """``--init`` (round > 1) or ``--imagenet`` (round 1, when configured) of a DDB ST job."""
    if input.init:
        return f"--init {shlex.quote(input.init[0])}"
    return f"--imagenet {shlex.quote(input.imagenet[0])}" if input.imagenet else ""


def ddb_imagenet_flag(wildcards, input):
    return f"--imagenet {shlex.quote(input.imagenet[0])}" if input.imagenet else ""


# --- pseudo-labels ----------------------------------------------------------------------


def hard_conf_thresholds(wildcards):
    """The threshold the next stage of the same method applies to ``{run}``'s hard labels
    (segcore/stages.py gives the order): the store keeps the confidence only as its side of
    that threshold (exact for it, 1/30 of the official files); "" (float16 confidence, any
    threshold) for a run that no declared stage reads with a threshold."""
    nxt = stages.next_stage(wildcards.run)
    if nxt is not None and nxt.config is not None:
        t = segconfig.stage_options(config, nxt.config).get("threshold")
        if t is not None:
            return repr(float(t))
    return ""


# --- results table ----------------------------------------------------------------------


def table_rows():
    """(chain, method, stage, metrics of each seed) of every row of the table."""
    return [
        (c, m, s, [f"results/{root}/eval/{run}.json" for root in seed_roots(c)])
        for c in CHAINS
        for run, (m, s) in TABLE_RUNS.items()
    ]


def table_best_rows():
    """(chain, method, stage, best-on-val metrics of each seed) of the rows that keep one."""
    return [
        (c, m, s, [f"results/{root}/{run}/metrics_best.json" for root in seed_roots(c)])
        for c in CHAINS
        for run, (m, s) in TABLE_RUNS.items()
        if run in stages.BEST_ON_VAL_RUNS
    ]


def table_metrics():
    return [path for *_, paths in table_rows() + table_best_rows() for path in paths] + [
        path for *_, path in table_released_rows()
    ]


def table_entry_args():
    """--entry CHAIN METHOD STAGE METRICS of each row, once per seed (make_table.py averages),
    and --best the same way for the rows that keep a best-on-val checkpoint."""
    per_seed = " ".join(
        "--{} {}".format(flag, " ".join(shlex.quote(x) for x in (c, m, s, path)))
        for flag, rows in (("entry", table_rows()), ("best", table_best_rows()))
        for c, m, s, paths in rows
        for path in paths
    )
    released = " ".join("--released " + " ".join(shlex.quote(x) for x in row) for row in table_released_rows())
    return f"{per_seed} {released}".strip()


def published_input():
    return [PUBLISHED] if PUBLISHED else []


def published_flag(wildcards, input):
    return f"--published {shlex.quote(input.published[0])}" if input.published else ""


# --- Uni-UVPT (rules/uvpt.smk): {backbone} is a family, swin or mit -------------------------


def uvpt_preset(wildcards):
    """The encoder preset of ``{backbone}`` (uvpt.backbones: swin_b, mit_b5 or a small one)."""
    return config["uvpt"]["backbones"][wildcards.backbone]


def uvpt_weights(wildcards):
    """The configured ImageNet encoder file of ``{backbone}``, as a list (empty: random init)."""
    path = config["uvpt"]["weights"][wildcards.backbone]
    return [path] if path else []


def uvpt_weights_arg(wildcards):
    """``uvpt_weights`` as one quoted shell word ('' for none)."""
    return shlex.quote("".join(uvpt_weights(wildcards)))


def uvpt_data_spec(role):
    """The source or target train set of Uni-UVPT: the dataset at ``uvpt.<role>_resize``
    (the official 1280x720 / 1024x512) or, when null, at its own resize."""

    def spec(wildcards):
        datasets = source_datasets(wildcards) if role == "source" else [chain_cfg(wildcards.chain)[role]]
        specs = [
            {
                "manifest": manifest(d),
                "split": "train",
                "resize": config["uvpt"][f"{role}_resize"] or config["datasets"][d]["resize"],
            }
            for d in datasets
        ]
        return json.dumps(specs if len(specs) > 1 else specs[0])

    return spec


def uvpt_options_json(step):
    """The options of ``uvpt.<step>`` for ``{backbone}``: its family's ``backbone_lr`` as ``lr``;
    for the source model, ``base_width`` = the resized source width (crop without rescale)."""

    def options(wildcards):
        opts = segconfig.job_options(config, f"uvpt.{step}")
        opts["lr"] = opts.pop("backbone_lr", {}).get(wildcards.backbone) or opts["lr"]
        spec = json.loads(uvpt_data_spec("source")(wildcards))
        resize = (spec[0] if isinstance(spec, list) else spec)["resize"]
        if step == "source" and resize:
            opts["base_width"] = resize[0]
        return json.dumps(opts, sort_keys=True)

    return options


# --- SeCo (rules/seco.smk) --------------------------------------------------------------


def seco_folder(run):
    """The folder of a SeCo sub-chain under results/{chain}/seco/: the base's run with / as _."""
    return "_".join(Path(run).parts)


def seco_base_run(wildcards):
    """The run folder of the stage a SeCo sub-chain refines."""
    return {seco_folder(run): run for run in TABLE_RUNS}[wildcards.base]


def seco_base_model(wildcards):
    """The base's checkpoint the SeCo sub-chain reads (its hand-off)."""
    run = seco_base_run(wildcards)
    return f"results/{wildcards.chain}/{run}/{handoff_file(run)}"


def seco_quality_stores(wildcards):
    """The label sets of the SeCo quality table of {chain} (name -> store): per base in
    seco.bases its hard labels, PSA and SCC stores, and the hard labels of seco.quality_runs."""
    out = {}
    for run in config["seco"]["bases"]:
        d = f"results/{wildcards.chain}/seco/{seco_folder(run)}"
        out[f"hard:{run}"] = f"{d}/base_labels.h5"
        out[f"seco:{run} PSA"] = f"{d}/psa_labels.h5"
        out[f"seco:{run} SCC"] = f"{d}/scc_labels.h5"
    for run in config["seco"]["quality_runs"]:
        out.setdefault(f"hard:{run}", f"results/{wildcards.chain}/{run}/hard_labels.h5")
    return out


def seco_quality_flags(wildcards, input):
    """--hard / --seco NAME=PATH of each store of seco_quality_stores, quoted."""
    flags = []
    for name, path in seco_quality_stores(wildcards).items():
        kind, label = name.split(":", 1)
        flags.append(f"--{kind} {shlex.quote(f'{label}={path}')}")
    return " ".join(flags)


def seco_quality_tables():
    """The SeCo quality table of each chain, when seco.bases names a base (for `rule all`)."""
    roots = [root for c in CHAINS for root in seed_roots(c)]
    return [f"results/{root}/seco/quality.md" for root in roots] if config["seco"]["bases"] else []


def table_notes():
    """--note of the results-table rows that need one: each SeCo row's proposer, the stages 2
    and 3 of a method whose stage-2 student starts from ImageNet weights instead of SimCLR, and
    the warm-up when it is a released checkpoint (warmup.mode: import)."""
    from segcore.seco.proposers import proposer_name

    imagenet = {
        m
        for m in stages.methods_of_rule("distill_stage2")
        if segconfig.stage_options(config, f"{m}.stage2")["student_init"] == "imagenet"
    }
    notes = []
    for c, m, s, _ in table_rows():
        if m == "seco":
            notes.append((c, m, s, f"labels: {proposer_name(config['seco'])} proposer"))
        elif m in imagenet and s in ("stage2", "stage3"):
            notes.append((c, m, s, "stage-2 student: ImageNet weights, not SimCLR"))
        elif s == "warmup" and config["warmup"]["mode"] == "import":
            notes.append((c, m, s, f"released checkpoint {Path(config['warmup']['released'][c]).name}, not trained"))
        elif f"{m}/{s}" in config["released"]["replace"]:
            name = Path(config["released"]["checkpoints"][c][f"{m}/{s}"]).name
            notes.append((c, m, s, f"released checkpoint {name}, not trained"))
    return " ".join("--note " + " ".join(shlex.quote(x) for x in note) for note in notes)


# --- report (rules/report.smk) ----------------------------------------------------------


def overlay_runs():
    """The runs the overlays show: report.overlay_runs, else every run of the results table."""
    return config["report"]["overlay_runs"] or list(TABLE_RUNS)


def overlay_models(wildcards):
    return [f"results/{wildcards.chain}/{run}/model.pt" for run in overlay_runs()]


def overlay_run_args(wildcards):
    """--run LABEL MODEL of each overlay run, quoted (the label is the table's method and stage)."""
    args = []
    for run in overlay_runs():
        method, stage = TABLE_RUNS[run]
        label = method if method == stage else f"{method} {stage}"
        args.append(f"--run {shlex.quote(label)} {shlex.quote(f'results/{wildcards.chain}/{run}/model.pt')}")
    return " ".join(args)


def quality_plots():
    """The pseudo-label quality plot of each quality table the workflow makes (seco_quality)."""
    return [f"results/report/{c}/pseudo_label_quality.svg" for c in CHAINS] if config["seco"]["bases"] else []


# rules about the workflow itself: their inputs are not walked, and they are left out of the
# cost table and the drawn rule graph
WORKFLOW_META_RULES = ("report_cost", "report_rulegraph")


def _producer(path):
    """(rule, wildcards) of the rule whose output (or log, benchmark) pattern matches ``path``,
    the most specific match (fewest wildcard characters) when several do; None for a source file."""
    best = None
    for r in workflow.rules:
        if r.name != "all" and r.is_producer(path):
            wc = r.get_wildcards(path)
            if best is None or sum(map(len, wc.values())) < sum(map(len, best[1].values())):
                best = (r, wc)
    return best


_WORKFLOW_JOBS = {}


def workflow_jobs():
    """Every job that `all` needs, found as Snakemake's DAG finds them: from `all`, each input
    file's producing rule and its wildcards, then that job's inputs (Snakemake's rule objects;
    the only place that needs them). Returns {"benchmarks": [[rule, wildcards, tsv], ...],
    "edges": {(from rule, to rule), ...}}; computed once per run of Snakemake."""
    if _WORKFLOW_JOBS:
        return _WORKFLOW_JOBS
    seen, todo, benchmarks, edges = set(), [(workflow.get_rule("all"), {})], [], set()
    while todo:
        job_rule, wc = todo.pop()
        key = (job_rule.name, tuple(sorted(wc.items())))
        if key in seen:
            continue
        seen.add(key)
        bench = job_rule.expand_benchmark(wc) if job_rule.benchmark else None
        if bench is not None and job_rule.name not in WORKFLOW_META_RULES:
            benchmarks.append([job_rule.name, ", ".join(f"{k}={v}" for k, v in wc.items()), str(bench)])
        if job_rule.name in WORKFLOW_META_RULES:
            continue
        for path in job_rule.expand_input(wc)[0]:
            found = _producer(str(path))
            if found is not None:
                if found[0].name not in WORKFLOW_META_RULES:
                    edges.add((found[0].name, job_rule.name))
                todo.append(found)
    _WORKFLOW_JOBS.update(benchmarks=sorted(benchmarks, key=lambda b: b[2]), edges=edges)
    return _WORKFLOW_JOBS


def rule_graph():
    """{"nodes", "edges", "highlight"} of the rules `all` needs (what `snakemake --rulegraph`
    draws, without WORKFLOW_META_RULES); nodes in the order the rules are defined, training
    stages highlighted."""
    edges = workflow_jobs()["edges"]
    used = {n for e in edges for n in e}
    nodes = [r.name for r in workflow.rules if r.name in used]
    training = {s.rule for m in stages.METHODS for s in m.stages} | {"simclr"}
    return {"nodes": nodes, "edges": sorted(edges), "highlight": sorted(training & used)}


def report_results():
    """The report's tables and figures of results (not those about the workflow itself); the
    cost table runs after them, so every other job has written its benchmark file by then."""
    return [
        *rules.report_tables.output,
        *expand("results/report/{chain}/{kind}", chain=CHAINS, kind=("progression.svg", "per_class_iou.svg")),
        *expand("results/report/{chain}/overlays.png", chain=CHAINS),
        *quality_plots(),
        *seco_quality_tables(),
    ]


def report_targets():
    """Everything the report shows (inputs of `all`)."""
    return [*report_results(), *rules.report_cost.output, *rules.report_rulegraph.output]

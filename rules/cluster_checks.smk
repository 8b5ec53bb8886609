# Cluster settings that cannot work stop the run when the workflow is parsed, before anything is
# planned or submitted, with one line naming the rule, the resource and the config key (the
# checks themselves: segcore/cluster_check.py). Included after the rule files, when each
# rule's resources are final, with a profile's `set-resources` or a command-line
# `--set-resources` applied on top of the rule's own (Snakemake applies them when it defines
# the rule), so `snakemake --profile slurm -n` reports the same line as a real run.
# Code only, no rules (the functions stay next to the one check that uses them).
import sys

from snakemake_interface_executor_plugins.settings import ExecMode

from segcore import cluster_check
from segcore.stages import METHODS

# how a training rule starts its script with more than one GPU (TRAIN_LAUNCH in common.smk)
_TORCHRUN_MARK = "--nproc_per_node={resources.gpu}"


def _resource_values(job_rule):
    """Concrete values of a rule's resources; an expression that needs a job to evaluate is
    left out (only a number given as a string, `--set-resources r:gpu=1.5`, is kept)."""
    values = {}
    for name, res in job_rule.resources.items():
        if name.startswith("_") or name in ("tmpdir", "disk_mb", "disk"):
            continue
        if not res.is_evaluable():
            values[name] = res.value
        elif isinstance(res.raw, str):
            try:
                float(res.raw)
            except ValueError:
                continue
            values[name] = res.raw
    return values


def _resource_origins(job_rule):
    overwritten = workflow.resource_settings.overwrite_resources.get(job_rule.name, {})
    defaults = workflow.resource_settings.default_resources or {}
    return {
        name: "set-resources" if name in overwritten else "default-resources" if name in defaults else "rule"
        for name in job_rule.resources.keys()
    }


def _rule_batches(job_rule):
    """The global batch sizes of a rule's training: its declared stages (segcore/stages.py), else
    its `options` param (the simclr rule)."""
    stages = [s.config for m in METHODS for s in m.stages if s.rule == job_rule.name and s.config]
    if stages:
        return tuple(cluster_check.stage_batch(config, stage) for stage in stages)
    options = getattr(job_rule.params, "options", None) if "options" in job_rule.params.keys() else None
    if isinstance(options, str):
        found = cluster_check.options_batch(config, options)
        return (found,) if found else ()
    return ()


def _cluster_settings():
    for r in workflow.rules:
        yield cluster_check.RuleSettings(
            r.name,
            resources=_resource_values(r),
            origin=_resource_origins(r),
            torchrun=_TORCHRUN_MARK in (r.shellcmd or ""),
            batches=_rule_batches(r),
        )


# Only where the jobs are planned: a cluster job's own Snakemake (exec mode remote) reparses
# the workflow with the resources of that one job.
if workflow.exec_mode == ExecMode.DEFAULT:
    _cluster_errors = cluster_check.check_rules(_cluster_settings())
    if _cluster_errors:
        sys.exit("\n".join(_cluster_errors))

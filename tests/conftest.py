import sys
from pathlib import Path
from typing import NamedTuple

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/workflow_helpers.py

from workflow_helpers import copy_workflow, snakemake, tiny_config, write_config  # noqa: E402


class TinyWorkflow(NamedTuple):
    repo: Path  #: the copy of the workflow that ran (tests may edit its sources, and restore them)
    work: Path  #: its working directory, every rule of both chains run to completion

    def snakemake(self, *args: str, timeout: int = 900):
        return snakemake(self.work, *args, timeout=timeout, snakefile=self.repo / "Snakefile")


@pytest.fixture(scope="session")
def tiny_workflow(tmp_path_factory) -> TinyWorkflow:
    """The whole workflow on the tiny config, run once for the session from a copy of the
    workflow files, in a working directory whose path has a space (it must survive the shell).

    Tests that only read it or dry-run it share it; a test that changes the config or a source
    file restores it; a test that changes outputs works on ``copy_workdir`` of it."""
    base = tmp_path_factory.mktemp("tiny")
    repo = copy_workflow(base / "repo")
    work = base / "work dir"
    work.mkdir()
    write_config(work, tiny_config())
    run = TinyWorkflow(repo, work)
    proc = run.snakemake(timeout=1800)  # a loaded machine can take minutes
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run

"""A stage's code version is the hash of its entry script's import closure (segcore/code_version.py):
found from the source on a tiny fake package, and on the repository's own scripts."""
from __future__ import annotations

from pathlib import Path

from segcore.code_version import code_version, import_closure

ROOT = Path(__file__).resolve().parents[1]

FAKE = {
    "pkg/__init__.py": "",
    "pkg/a.py": "from . import b\nfrom .sub import c as cc\n",
    "pkg/b.py": "import pkg.sub.d as dd\nfrom pkg import NAME_IN_INIT\n",
    "pkg/sub/__init__.py": "from .. import e\n",
    "pkg/sub/c.py": "X = 1\n",
    # an import inside a function counts
    "pkg/sub/d.py": "def f():\n    from pkg.lazy import thing\n    return thing\n",
    "pkg/sub/never.py": "Y = 2\n",  # in a package that is imported, but never imported itself
    "pkg/e.py": "try:\n    from .optional import z\nexcept ImportError:\n    from .fallback import z\n",
    "pkg/optional.py": "z = 3\n",
    "pkg/fallback.py": "z = 4\n",
    "pkg/lazy.py": "import os\nimport numpy\nthing = 1\n",
    "pkg/unused.py": "import pkg.a\n",  # imports the closure, but nothing imports it
    "scripts/run.py": "import os\nimport torch\nfrom pkg import a\nimport helper\n",
    "scripts/helper.py": "import pkg.e\n",
    "scripts/other.py": "import pkg.unused\n",
    "elsewhere/mod.py": "",
}


def make_fake(base: Path) -> Path:
    for rel, text in FAKE.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_text(text)
    return base


def closure(base: Path, script: str) -> list[str]:
    return [p.relative_to(base.resolve()).as_posix() for p in import_closure(script, base, roots=("pkg", "scripts"))]


def test_closure_of_a_fake_package(tmp_path):
    base = make_fake(tmp_path)
    assert closure(base, "scripts/run.py") == [
        "pkg/__init__.py", "pkg/a.py", "pkg/b.py", "pkg/e.py", "pkg/fallback.py", "pkg/lazy.py", "pkg/optional.py",
        "pkg/sub/__init__.py", "pkg/sub/c.py", "pkg/sub/d.py", "scripts/helper.py", "scripts/run.py",
    ]


def test_code_version_follows_the_closure_only(tmp_path):
    base = make_fake(tmp_path)
    version = lambda: code_version("scripts/run.py", base, roots=("pkg", "scripts"))  # noqa: E731
    before = version()
    (base / "pkg/unused.py").write_text("import pkg.a\n# edited\n")
    (base / "pkg/sub/never.py").write_text("Y = 3\n")
    (base / "scripts/other.py").write_text("# edited\n")
    assert version() == before  # files the script does not import
    (base / "pkg/sub/d.py").write_text(FAKE["pkg/sub/d.py"] + "# edited\n")
    after = version()
    assert after != before  # two levels down, imported inside a function
    (base / "pkg/sub/d.py").write_text(FAKE["pkg/sub/d.py"])
    assert version() == before


def test_repository_scripts_import_what_their_stage_runs():
    def files(script):
        return {p.relative_to(ROOT).as_posix() for p in import_closure(f"workflow_scripts/{script}", ROOT)}

    evaluate = files("evaluate.py")
    # segcore/evaluate.py imports the upsampling helper of the warm-up module (the hand-kept list missed it)
    assert {"segcore/evaluate.py", "segcore/metrics.py", "segcore/methods/warmup.py"} <= evaluate
    assert "segcore/methods/distill.py" not in evaluate
    assert "segcore/methods/distill.py" in files("train_distill.py")
    stage1 = files("train_proda_stage1.py")
    assert "segcore/methods/distill.py" not in stage1 and "segcore/methods/proda.py" in stage1
    assert "segcore/methods/cpsl.py" not in stage1
    assert files("make_table.py") >= {"segcore/tables.py", "segcore/stages.py", "workflow_scripts/make_table.py"}

"""The code version of a workflow stage: a hash of the source files its entry script imports.

Snakemake does not see edits inside a Python package, so every rule passes the hash of the
files its job runs as a ``code`` param: editing one of them makes that job (and what follows)
out of date, editing any other file does not. The files are found from the source, not
listed by hand: the import closure of the rule's entry script (``workflow_scripts/X.py``),
restricted to the files under the given package folders (``segcore/``, ``workflow_scripts/``).

The closure is read with :mod:`ast`, without importing anything: every ``import`` and
``from ... import`` statement anywhere in a module (also inside functions and ``try``
blocks) counts. ``import a.b.c`` brings ``a/__init__.py``, ``a/b/__init__.py`` and
``a/b/c.py``; ``from a.b import x`` brings ``a.b`` and, when ``x`` is a submodule,
``a/b/x.py``; relative imports resolve against the importing module's package. A module
name that is not a file under the roots (the standard library, torch, ...) is ignored.
A top-level name that matches a file next to the entry script counts too, because a
script's folder is first on ``sys.path``.
"""
from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

__all__ = ["import_closure", "code_version"]


@cache
def _module_file(base: Path, roots: tuple[str, ...], dotted: str) -> Path | None:
    """The file of module ``dotted`` (a package's ``__init__.py``) under ``base``, if it lies
    inside one of ``roots``."""
    parts = dotted.split(".")
    if not parts or parts[0] not in roots:
        return None
    path = base.joinpath(*parts)
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(base: Path, file: Path) -> tuple[str, bool]:
    """(dotted name, is a package) of ``file`` under ``base``."""
    rel = file.relative_to(base).with_suffix("")
    parts = list(rel.parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def _import_statements(body):
    """Every import statement in ``body`` and the statements nested in it (functions, classes,
    ``if``/``try``/``with``/loops), without visiting expressions: imports are statements."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            for child in getattr(node, field, None) or ():
                yield from _import_statements([child] if isinstance(child, ast.stmt) else child.body)


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """Every dotted module name a module's source may import, parents first."""
    names = []
    package = module if is_package else module.rpartition(".")[0]
    for node in _import_statements(tree.body):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                names += [".".join(parts[: i + 1]) for i in range(len(parts))]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".") if package else []
                if node.level > 1:
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not base:
                continue
            parts = base.split(".")
            names += [".".join(parts[: i + 1]) for i in range(len(parts))]
            # `from pkg import x`: x is a submodule or a name defined in pkg (then it is not a file)
            names += [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
    return names


def _names_in(file: Path, module: str, is_package: bool) -> tuple[str, ...]:
    stat = file.stat()
    return _parsed_names(file, module, is_package, (stat.st_mtime_ns, stat.st_size))


@cache
def _parsed_names(file: Path, module: str, is_package: bool, stamp: tuple) -> tuple[str, ...]:
    """The imported names of one file, parsed once per version of the file (the Snakefile asks
    for the closures of a dozen scripts that share most of their files)."""
    tree = ast.parse(file.read_bytes(), filename=str(file))
    return tuple(_imported_names(tree, module, is_package))


def import_closure(script, base, roots=("segcore", "workflow_scripts")) -> list[Path]:
    """The files under ``base`` (inside the folders ``roots``) that ``script`` imports, directly
    or not, with ``script`` itself; sorted."""
    base = Path(base).resolve()
    script = Path(script)
    script = (script if script.is_absolute() else base / script).resolve()
    roots = tuple(roots)
    script_dir = script.parent
    seen: set[Path] = set()
    todo = [script]
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        if file.is_relative_to(base) and file.relative_to(base).parts[0] in roots:
            module, is_package = _module_name(base, file)
        else:
            module, is_package = file.stem, False
        for name in _names_in(file, module, is_package):
            found = _module_file(base, roots, name)
            if found is None and "." not in name and file.parent == script_dir:
                sibling = script_dir / f"{name}.py"  # a helper module next to the entry script
                found = sibling if sibling.is_file() and sibling != file else None
            if found is not None and found not in seen:
                todo.append(found)
    return sorted(seen)


def code_version(script, base, roots=("segcore", "workflow_scripts")) -> str:
    """16 hex digits of the SHA-256 of the path and bytes of every file of
    :func:`import_closure` (``script`` relative to ``base`` or absolute)."""
    h = hashlib.sha256()
    base = Path(base).resolve()
    for file in import_closure(script, base, roots):
        h.update(file.relative_to(base).as_posix().encode() + b"\0")
        h.update(file.read_bytes() + b"\0")
    return h.hexdigest()[:16]

"""Imports flow one way: core <- pretrain, eval, transfer <- pipeline, and nothing forms a cycle.

Every project .py file is parsed with ast (no import is executed), imports inside functions
included: a lazy import is still a dependency. A failure names the file, the line and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path
from tests.helpers import REPO

PACKAGES = ("core", "embedded", "pretrain", "eval", "transfer", "pipeline", "bench")
STAGES = ("pretrain", "eval", "transfer", "pipeline", "embedded", "bench")

# package -> the project packages it must not import (bench is also checked for everyone: see below)
FORBIDDEN = {
    "core": set(STAGES),
    "embedded": set(STAGES) - {"embedded"},  # the data generator: a tool of its own, on core alone
    "pretrain": {"eval", "transfer", "pipeline", "embedded", "bench"},
    "eval": {"pretrain", "transfer", "pipeline", "embedded", "bench"},
    "transfer": {"pretrain", "eval", "pipeline", "embedded", "bench"},
    "pipeline": {"bench"},
    "bench": set(),
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(tree: ast.AST, module: str, is_package: bool):
    """(line, dotted name) of every import in the tree; `from a import b` yields a.b (b may be a module)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[:len(package) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}" if alias.name != "*" else base


def project_imports(root: Path, packages=PACKAGES):
    """{module: path} of the project's modules and [(module, path, line, target)] of their project imports,
    target being the longest prefix of the imported name that is a project module (or the package)."""
    files = {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    edges = []
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, name in imported_names(tree, module, path.name == "__init__.py"):
            if name.split(".")[0] not in packages:
                continue  # the standard library and third-party packages
            parts = name.split(".")
            target = next((".".join(parts[:k]) for k in range(len(parts), 0, -1) if ".".join(parts[:k]) in files),
                          parts[0])
            edges.append((module, path, line, target))
    return files, edges


def layer_violations(root: Path, edges) -> list[str]:
    found = []
    for module, path, line, target in edges:
        src, dst = module.split(".")[0], target.split(".")[0]
        if dst in FORBIDDEN.get(src, set()):
            found.append(f"{path.relative_to(root)}:{line} imports {target} ({src} must not import {dst})")
    return found


def find_cycle(files, edges) -> list[str] | None:
    """One import cycle as [m0, m1, ..., m0], by depth-first search over the module graph; None if acyclic."""
    graph = {m: sorted({t for s, _, _, t in edges if s == m and t in files and t != m}) for m in files}
    state, stack = {}, []  # state: 1 on the current path, 2 finished

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(files):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def where(cycle, edges, root: Path) -> str:
    """The import lines that make up a cycle, one per hop."""
    hops = []
    for a, b in zip(cycle, cycle[1:]):
        path, line = next((p, ln) for s, p, ln, t in edges if s == a and t == b)
        hops.append(f"{path.relative_to(root)}:{line} imports {b}")
    return "; ".join(hops)


def test_stages_import_only_downstream_layers():
    files, edges = project_imports(REPO)
    assert len(files) > 40  # the walk found the project, not an empty tree
    violations = layer_violations(REPO, edges)
    assert not violations, "imports against the one-way flow:\n" + "\n".join(violations)


def test_no_import_cycle():
    files, edges = project_imports(REPO)
    cycle = find_cycle(files, edges)
    assert cycle is None, f"import cycle {' -> '.join(cycle)}: {where(cycle, edges, REPO)}"


def test_checker_sees_lazy_and_relative_imports_and_cycles(tmp_path):
    """The checker itself: a violation inside a function, a relative import and a two-module cycle are found."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "core" / "a.py").write_text("import os\n\ndef f():\n    from pretrain import loop\n")
    (tmp_path / "pretrain" / "loop.py").write_text("from . import data\n")
    (tmp_path / "pretrain" / "data.py").write_text("import pretrain.loop\n")
    (tmp_path / "eval" / "knn.py").write_text("from bench import table\n")
    (tmp_path / "bench" / "table.py").write_text("")
    files, edges = project_imports(tmp_path)
    assert layer_violations(tmp_path, edges) == [
        "core/a.py:4 imports pretrain.loop (core must not import pretrain)",
        "eval/knn.py:1 imports bench.table (eval must not import bench)",
    ]
    cycle = find_cycle(files, edges)
    assert cycle is not None and set(cycle) >= {"pretrain.loop", "pretrain.data"}
    assert "pretrain/loop.py:1 imports pretrain.data" in where(cycle, edges, tmp_path)

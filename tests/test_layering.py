"""Imports flow one way: experiments -> analysis -> lowbit_jax (README.md, section "Layout")."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"lowbit_jax": {"analysis", "experiments"}, "analysis": {"experiments"}}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_one_way(package):
    offenders = {
        str(p.relative_to(ROOT)): bad
        for p in (ROOT / package).rglob("*.py")
        if (bad := _imported_packages(p) & FORBIDDEN[package])
    }
    assert not offenders, f"{package} must not import {FORBIDDEN[package]}: {offenders}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _internal_imports(path: Path, package: str) -> set[str]:
    """Modules of `package` that `path` imports anywhere (top level or inside functions), resolved to modules."""
    tree, here = ast.parse(path.read_text()), _module_name(path)
    base = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == package}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                anchor = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                mod = f"{anchor}.{mod}" if mod else anchor
            if mod.split(".")[0] != package:
                continue
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}  # `from pkg import module`
    return found


def test_no_import_cycles_inside_lowbit_jax():
    """The import graph of lowbit_jax's modules (every import, deferred ones included) has no cycle."""
    files = {_module_name(p): p for p in (ROOT / "lowbit_jax").rglob("*.py")}
    graph = {m: {d for d in _internal_imports(p, "lowbit_jax") if d in files and d != m} for m, p in files.items()}
    for m in graph:  # importing a submodule runs its package's __init__ first: drop that implicit edge
        graph[m] = {d for d in graph[m] if not m.startswith(d + ".")}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d) :] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def _has_main(path: Path) -> bool:
    """Whether the module defines a top-level `main` function (an entry point of `python -m`)."""
    tree = ast.parse(path.read_text())
    return any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)


SHARED = {"experiments", "experiments.common"}  # the package itself and the CLI plumbing every entry point shares


def test_experiments_are_independent_entry_points():
    """Every experiments module but common and __init__ has a main, and no entry point imports another one: what
    two experiments share lives in experiments.common (CLI helpers) or in analysis."""
    files = {_module_name(p): p for p in (ROOT / "experiments").glob("*.py")}
    without_main = sorted(m for m, p in files.items() if m not in SHARED and not _has_main(p))
    assert not without_main, f"experiments modules without a main (move libraries to analysis/): {without_main}"
    offenders = {
        m: sorted(bad)
        for m, p in files.items()
        if m not in SHARED and (bad := {d for d in _internal_imports(p, "experiments") if d in files} - SHARED)
    }
    assert not offenders, f"experiments entry points import other entry points: {offenders}"


def _layout_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_layout_names_every_module():
    """Each module of the three packages (and each subpackage folder) appears in backticks in README's Layout."""
    layout = _layout_section()
    named = set(re.findall(r"`([^`]+)`", layout))
    missing = []
    for package in ("lowbit_jax", "analysis", "experiments"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "__init__.py":
                folder = str(path.parent.relative_to(ROOT)) + "/"
                if folder.count("/") > 1 and folder not in named:
                    missing.append(folder)
            elif path.stem not in named:
                missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"README.md, section Layout, does not name: {missing}"

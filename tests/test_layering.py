"""Imports flow one way: experiments -> analysis -> lowbit_jax (DESIGN.md section 2)."""

import ast
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

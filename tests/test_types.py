"""Type annotations of the public API: mypy passes on lowbit_jax, and every public callable is fully annotated."""

import importlib.util
import inspect
import subprocess
import sys
import types
from pathlib import Path

import pytest

import lowbit_jax as lb

ROOT = Path(__file__).resolve().parents[1]


def _public_callables() -> dict[str, object]:
    """Name -> callable: the functions and classes of lb.__all__, the public methods and properties of those
    classes, and the public functions and classes defined in the modules lb.__all__ re-exports."""
    found: dict[str, object] = {}

    def add_class(name: str, cls: type) -> None:
        found[name] = cls
        for attr, member in vars(cls).items():
            if attr.startswith("_"):
                continue
            if isinstance(member, property):
                found[f"{name}.{attr}"] = member.fget
            elif isinstance(member, staticmethod | classmethod):
                found[f"{name}.{attr}"] = member.__func__
            elif inspect.isfunction(member):
                found[f"{name}.{attr}"] = member

    for name in lb.__all__:
        obj = getattr(lb, name)
        if isinstance(obj, types.ModuleType):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or getattr(member, "__module__", None) != obj.__name__:
                    continue
                if inspect.isclass(member):
                    add_class(f"{name}.{attr}", member)
                elif inspect.isfunction(member):
                    found[f"{name}.{attr}"] = member
        elif inspect.isclass(obj):
            add_class(name, obj)
        elif callable(obj):
            found[name] = obj
    return found


def _missing_annotations(fn: object) -> list[str]:
    """The parameters (and 'return') of `fn` without an annotation; a class is checked by its constructor."""
    target = getattr(fn, "__wrapped__", fn)  # functools.wraps / contextlib.contextmanager keep the original here
    sig = inspect.signature(target)
    missing = [
        p.name
        for i, p in enumerate(sig.parameters.values())
        if p.annotation is inspect.Parameter.empty and not (i == 0 and p.name in ("self", "cls"))
    ]
    if not inspect.isclass(target) and sig.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


def test_public_callables_are_found():
    """The collector sees the API the test guards (so an empty walk cannot pass)."""
    names = _public_callables()
    for name in ("quantize", "qdot_general", "Format.replace", "QArray.equals", "Report.record", "scaling.divide"):
        assert name in names, name
    assert len(names) > 150


def test_missing_annotation_is_detected():
    def half(x, y: int):
        return x

    assert _missing_annotations(half) == ["x", "return"]


def test_every_public_callable_is_annotated():
    missing = {name: m for name, fn in _public_callables().items() if (m := _missing_annotations(fn))}
    assert not missing, f"public callables with unannotated parameters or return: {missing}"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed (the 'test' extra)")
def test_mypy_passes_on_lowbit_jax(request, tmp_path):
    """`mypy lowbit_jax` with the [tool.mypy] configuration of pyproject.toml reports no error (its cache kept in
    pytest's cache folder, so reruns are incremental, or in a temporary one under -p no:cacheprovider; the
    checkout gains no .mypy_cache)."""
    pytest_cache = getattr(request.config, "cache", None)
    cache = tmp_path if pytest_cache is None else pytest_cache.mkdir("mypy")
    config = str(ROOT / "pyproject.toml")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "lowbit_jax", "--config-file", config, "--cache-dir", str(cache)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr

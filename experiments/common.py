"""Shared plumbing for experiments: Config <-> command line, output folders, JSON/CSV, tables, progress."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import platform
import sys
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path

try:
    from tqdm.auto import tqdm
except ImportError:  # a bare GPU machine (scripts/gpu_check.sh): plain iteration, no bar
    tqdm = None

RESULTS = Path("results")


def _field_parser(field: dataclasses.Field, hint):
    """(argparse type, is_tuple) for a Config field: int/float/str/bool or a tuple of them (comma-separated, commas
    inside parentheses kept: format specs such as fp(3,2))."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        inner = typing.get_args(hint)[0]
        return inner, True
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)][0]
        return inner, False
    return hint, False


def _convert(text: str, typ, name: str):
    try:
        if typ is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        return typ(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--{name}: cannot read {text!r} as {typ.__name__}") from None


def split_list(text: str, sep: str = ",") -> list[str]:
    """`text` split on `sep` outside parentheses, so that 'mxint8,fp(3,2):block_size=(16,16)' is two specs."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if ch == sep and depth <= 0:
            parts.append(text[start:i])
            start, depth = i + 1, 0
    return [*parts, text[start:]]


def parse_config(cls, argv: Sequence[str] | None, description: str, presets: dict | None = None):
    """Build `cls` (a frozen dataclass) from the command line: one --flag per field, plus --preset and --out."""
    presets = presets or {}
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default results/<experiment>/)")
    if presets:
        parser.add_argument("--preset", choices=sorted(presets), default=None, help="start from a named preset")
    for f in dataclasses.fields(cls):
        typ, is_tuple = _field_parser(f, hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = ",".join(map(str, default)) if is_tuple else default
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            metavar=typ.__name__.upper() + ("[,...]" if is_tuple else ""),
            help=f"(default: {shown})",
        )
    args = parser.parse_args(argv)
    base = presets[args.preset] if presets and args.preset else cls()
    overrides = {}
    for f in dataclasses.fields(cls):
        text = getattr(args, f.name)
        if text is None:
            continue
        typ, is_tuple = _field_parser(f, hints[f.name])
        flag = f.name.replace("_", "-")
        try:
            if is_tuple:
                overrides[f.name] = tuple(_convert(t.strip(), typ, flag) for t in split_list(text) if t.strip())
            else:
                overrides[f.name] = _convert(text, typ, flag)
        except argparse.ArgumentTypeError as err:
            parser.error(str(err))
    try:
        cfg = dataclasses.replace(base, **overrides)
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    return cfg, args.out


def _is_repo(path: Path) -> bool:
    return (path / "docs" / "data").is_dir() and (path / "notebooks").is_dir()


def repo_root() -> Path:
    """The lowbit_jax checkout in use, from any working directory (notebooks run from notebooks/): the checkout
    holding this package if it is one (editable installs), else the nearest parent of the cwd that is one;
    FileNotFoundError if neither is."""
    here = Path(__file__).resolve().parent.parent
    for path in (here, Path.cwd().resolve(), *Path.cwd().resolve().parents):
        if _is_repo(path):
            return path
    raise FileNotFoundError("not inside a lowbit_jax checkout (a folder with docs/data/ and notebooks/)")


def saved_results(name: str) -> Path | None:
    """The folder of a saved run of experiment `name`: the user's results/<name>/ (in the working directory or
    the checkout) if it holds <name>.json, else the documented run's docs/data/ if that holds it, else None."""
    root = repo_root()
    for folder in (RESULTS / name, root / RESULTS / name, root / "docs" / "data"):
        if (folder / f"{name}.json").exists():
            return folder
    return None


def output_dir(name: str, out: Path | None) -> Path:
    """The experiment's output folder, created (default results/<name>/)."""
    path = Path(out) if out is not None else RESULTS / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _jsonable(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path, obj) -> Path:
    """Write `obj` as indented JSON (dataclasses and numpy scalars converted, non-finite floats as null)."""
    path.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    """Write a list of flat dicts as CSV (columns from the first row)."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    return path


def format_table(headers: Sequence[str], rows: Iterable[Sequence], floatfmt: str = ".3f") -> str:
    """A plain-text table with right-aligned numbers."""
    cells = [[f"{v:{floatfmt}}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, sep, *body])


def progress(iterable=None, **kwargs):
    """tqdm progress bar on stderr (disabled when stderr is not a terminal unless forced by the caller)."""
    if tqdm is None:
        return iterable
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def machine_description() -> str:
    """A one-line description of the host and JAX backend, for benchmark records."""
    import jax

    dev = jax.devices()[0]
    cpu = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{dev.platform}: {dev.device_kind} | host {cpu}, {cores} cores | jax {jax.__version__}"

"""Shared plumbing for experiments: Config <-> command line, 'INT/FP' pair flags, output folders, JSON/CSV, tables,
progress."""

from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import dataclasses
import inspect
import io
import json
import math
import os
import platform
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import lowbit_jax as lb
from lowbit_jax.models import hf

try:
    from tqdm.auto import tqdm
except ImportError:  # a bare GPU machine (scripts/gpu_check.sh): plain iteration, no bar
    tqdm = None

RESULTS = Path("results")


def _field_parser(field: dataclasses.Field, hint):
    """(argparse type, is_tuple) for a Config field: int/float/str/bool or a tuple of them (comma-separated, commas
    inside parentheses kept: format specs such as fp(3,2)), or an optional one (`none` on the command line)."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        inner = typing.get_args(hint)[0]
        return inner, True
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)][0]
        return inner, False
    return hint, False


def _optional(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


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


def _class_comments(klass) -> dict[str, str]:
    """{field: comment} for the annotated fields of one class body: the `# ...` comments on a field's lines."""
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):  # no source (an interactive session): no help texts
        return {}
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    comments = {t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT}
    (node,) = ast.parse(source).body
    return {
        f.target.id: " ".join(comments[n] for n in range(f.lineno, f.end_lineno + 1) if n in comments)
        for f in node.body
        if isinstance(f, ast.AnnAssign) and isinstance(f.target, ast.Name)
    }


def field_help(cls) -> dict[str, str]:
    """{field: help text} of a Config dataclass. The convention: each field carries its help as a trailing
    comment, `name: type = default  # help`; a subclass that redefines a field without a comment keeps the base
    class's text."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            out |= {k: v for k, v in _class_comments(klass).items() if v}
    return out


def _shown(default, is_tuple: bool) -> str:
    """A default as the command line spells it ('' for empty); long lists cut to their first items."""
    if default is None:
        return "none"
    if not is_tuple:
        return str(default) or "''"
    text = ",".join(map(str, default)) or "''"
    return text if len(text) <= 80 else ",".join(map(str, default[:3])) + f",... ({len(default)} in all)"


def build_parser(cls, description: str, presets: dict | None = None) -> argparse.ArgumentParser:
    """The argparse parser of a Config dataclass: --out, --preset (if any) and one --flag per field, its help line
    from the field's comment (field_help) and its default."""
    hints, helps = typing.get_type_hints(cls), field_help(cls)
    spec = getattr(sys.modules.get(cls.__module__), "__spec__", None)  # python -m runs the module as __main__
    prog = f"python -m {spec.name if spec is not None else cls.__module__}"
    flags = "[--preset NAME] [--FLAG VALUE ...]" if presets else "[--FLAG VALUE ...]"
    parser = argparse.ArgumentParser(
        prog=prog,
        usage=f"{prog} {flags}   (--help lists every flag)",  # short: errors print it above their one line
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: results/<experiment>/)")
    if presets:
        parser.add_argument("--preset", choices=sorted(presets), default=None, help="start from a named preset")
    for f in dataclasses.fields(cls):
        typ, is_tuple = _field_parser(f, hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = helps.get(f.name, "")
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            metavar=typ.__name__.upper() + ("[,...]" if is_tuple else ""),
            help=f"{text}{' ' if text else ''}(default: {_shown(default, is_tuple)})".replace("%", "%%"),
        )
    return parser


# Expected user errors from a Config: shown as one argparse error line (exit code 2), never a traceback.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError)


def parse_config(cls, argv: Sequence[str] | None, description: str, presets: dict | None = None):
    """Build `cls` (a frozen dataclass) from the command line: one --flag per field, plus --preset and --out.

    Bad values (unknown formats, bad sizes, a missing checkpoint: the Config's __post_init__ and its optional
    check_paths(), for checks that need the file system) end the program with one error line and exit code 2.
    """
    presets = presets or {}
    hints = typing.get_type_hints(cls)
    parser = build_parser(cls, description, presets)
    args = parser.parse_args(argv)
    overrides = {}
    for f in dataclasses.fields(cls):
        text = getattr(args, f.name)
        if text is None:
            continue
        typ, is_tuple = _field_parser(f, hints[f.name])
        flag = f.name.replace("_", "-")
        try:
            if _optional(hints[f.name]) and text.strip().lower() == "none":
                overrides[f.name] = None
            elif is_tuple:
                overrides[f.name] = tuple(_convert(t.strip(), typ, flag) for t in split_list(text) if t.strip())
            else:
                overrides[f.name] = _convert(text, typ, flag)
        except argparse.ArgumentTypeError as err:
            parser.error(str(err))
    try:
        base = presets[args.preset] if presets and args.preset else cls()
        cfg = dataclasses.replace(base, **overrides)
        if hasattr(cfg, "check_paths"):
            cfg.check_paths()
    except USER_ERRORS as err:
        parser.error(_one_line(err))
    return cfg, args.out


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def require_checkpoint(folder: str, flag: str) -> None:
    """FileNotFoundError naming `flag` unless `folder` holds a checkpoint written by analysis.lm.run; ValueError if
    it was trained with a tokenizer (the experiments that take checkpoints read byte-level text)."""
    path = Path(folder)
    if not (path / "checkpoint.msgpack").is_file() or not (path / "model.json").is_file():
        where = "no such folder" if not path.is_dir() else "no checkpoint.msgpack and model.json in it"
        raise FileNotFoundError(
            f"{flag} {folder}: {where}; train one first, e.g. python -m experiments.train --precision none"
        )
    try:
        info = json.loads((path / "model.json").read_text())
    except ValueError:
        raise ValueError(f"{flag} {folder}: model.json is not valid JSON") from None
    tokenizer = info.get("meta", {}).get("text", {}).get("tokenizer")
    if tokenizer not in (None, "utf-8 bytes"):  # the evaluations read byte-level pydoc_data text
        raise ValueError(
            f"{flag} {folder}: trained with the tokenizer {tokenizer}; this experiment evaluates byte-level text, "
            "whose ids would mean other tokens to this model"
        )


def require_model_folder(folder: str, flag: str = "--model") -> None:
    """Unless `folder` is empty: FileNotFoundError naming `flag` without a config.json there, ValueError naming
    the config field this loader does not support (lowbit_jax.models.hf)."""
    if not folder:
        return
    if not (Path(folder) / "config.json").is_file():
        where = "no such folder" if not Path(folder).is_dir() else "no config.json in it"
        raise FileNotFoundError(f"{flag} {folder}: {where} (a local Hugging Face checkpoint folder)")
    try:
        hf.config_from_hf(json.loads((Path(folder) / "config.json").read_text()))
    except ValueError as err:
        raise ValueError(f"{flag} {folder}: {err}") from None


def check_model_flags(model: str, text: str, devices: int) -> None:
    """ValueError for --text or --devices > 1 without --model (MiniLM reads its own split, on one device)."""
    if text and not model:
        raise ValueError("--text needs --model (MiniLM reads its own pydoc_data split)")
    if devices < 1 or (devices > 1 and not model):
        raise ValueError("--devices >= 1, and more than one only with --model")


def check_model_paths(model: str, text: str) -> None:
    """Before any work: the --model folder (require_model_folder) and the --text file exist."""
    require_model_folder(model)
    if text and not Path(text).is_file():
        raise FileNotFoundError(f"--text {text}: no such file")


@contextlib.contextmanager
def user_errors(module: str) -> Iterator[None]:
    """Expected user errors raised after parsing (a checkpoint or text that turns out unusable) end the program
    with one error line and exit code 2, as bad flags do."""
    try:
        yield
    except USER_ERRORS as err:
        print(f"python -m {module}: error: {_one_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None


def lower_all(specs: Iterable[str]) -> tuple[str, ...]:
    """Format names and specs in lower case (the library reads any case; the experiments compare names)."""
    return tuple(s.strip().lower() for s in specs)


# ---------------------------------------------------------------------------------------------- format pairs
# The paper's four INT/FP pairs (arXiv 2510.25602, Fig. 3 and 4), as --pairs takes them.
PAPER_PAIRS = ("mxint8/mxfp8", "mxint6/mxfp6", "mxint4/mxfp4", "nvint4/nvfp4")


def parse_pair(text: str, block_size: int = 0, scale: str = "") -> tuple[str, lb.Format, lb.Format]:
    """'INT spec/FP spec' (format specs, e.g. 'mxint8/mxfp8' or 'int(6):block_size=16/fp(3,2):block_size=16') ->
    (pair key: the text upper-cased, INT format, FP format), block size / scale type overridden if set."""
    names = [n.strip() for n in text.strip().split("/")]
    if len(names) != 2 or not all(names):
        raise ValueError(f"a pair is 'INT/FP', e.g. mxint8/mxfp8; got {text!r}")
    over = {"block_size": block_size} if block_size else {}
    over |= {"scale": scale} if scale else {}
    fmts = [lb.get_format(n, **over) for n in names]
    kinds = [None if f.is_identity else f.elem.kind for f in fmts]
    if kinds != ["int", "fp"]:
        raise ValueError(f"pair {text!r} must name an INT format then an FP format")
    if fmts[0].block_size != fmts[1].block_size:
        raise ValueError(f"pair {text!r}: both formats need the same block size")
    return "/".join(names).upper(), fmts[0], fmts[1]


def pair_formats(pairs) -> tuple[lb.Format, ...]:
    """The distinct formats named by 'INT/FP' pairs, in order of first appearance."""
    return tuple(dict.fromkeys(f for p in pairs for f in parse_pair(p)[1:]))


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


# ---------------------------------------------------------------------------------------------- benchmark records
def save_rows(name: str, stem: str, out: Path | None, cfg, rows: list[dict]) -> tuple[dict, Path]:
    """Write {machine, config, rows} as <stem>.json and the rows as <stem>.csv under results/<name>/ (or --out),
    print the machine line; returns (result, folder)."""
    result = {"machine": machine_description(), "config": cfg, "rows": rows}
    folder = output_dir(name, out)
    write_json(folder / f"{stem}.json", result)
    write_csv(folder / f"{stem}.csv", rows)
    print(f"\n{result['machine']}\n")
    return result, folder


def print_failures(rows: list[dict], keys: tuple[str, ...]) -> None:
    """One line per row whose kernel failed (error text recorded by analysis.timing.time_case), named by `keys`."""
    for r in rows:
        if r["error"]:
            print(f"failed: {' '.join(str(r[k]) for k in keys)}: {r['error']}")


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

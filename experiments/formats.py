"""The named formats as a table (element x block layout x scale rule x second level), from the library's objects,
and the 4-bit element grids side by side.

    python -m experiments.formats                     # every named format; well under a second after imports
    python -m experiments.formats --formats "mxint8,fp(3,2):block_size=16:scale=e4m3,nvfp4_2d"
    python -m experiments.formats --grids "mxfp4,mxint4,nf4,sf4,int(4):int_range=asymmetric"

Every number is read off the Format objects (lowbit_jax.formats, .elements, .scaling), nothing is typed in:
  values            distinct finite element values (FP: every bit pattern decoded, specials dropped)
  bits/elem         Format.bits_per_element: element bits + block-scale (and zero-point) bits / block elements
                    (per-channel and per-tensor formats: element bits; one FP32 scale per row is extra)
  max               largest finite value: elem.max x the block scale type's largest value (UE8M0: OCP X = 2^127,
                    i.e. 2^(127 - scale_shift) in element units; E4M3 448; UE5M3 122880; FP32/BF16 their dtype max),
                    for two-level formats at tensor scale g = 1 (g moves the whole range)
  min               smallest positive value: smallest nonzero |element| x the smallest positive block scale
  range             log2(max / min) in binades: what one tensor (one g) can hold
  block range       log2(elem.max / smallest nonzero |element|): what one block (one scale) can hold
Adaptive formats (lb.adaptive) show the union of their candidates' grids and value ranges; their scale column
marks a choice stored beside the scales ("+sel") or in the E4M3 scale's sign bit ("±").
Formats with an FP32 block scale or an E8M0 X near 2^127 reach beyond float32 in principle; float32 inputs only
use the part below 3.4e38.

Output (--out, default results/formats/):
  formats.json  {"formats": [row per format, the keys of formats.csv], "grids": {label: {"element", "count",
                "values" (normalised to max |value| 1)}}, "config"}
  formats.csv   format, element, kind, elem_bits, values, block, block_elems, scale, scale_bits, second_level,
                bits_per_element, max_value, min_value, range_binades, block_range_binades
  grids.png     the --grids elements, normalised to max 1, one row each, with their value counts
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

import lowbit_jax as lb
from experiments import common
from lowbit_jax import scaling
from lowbit_jax.elements import FPElem, IntElem, LUTElem

GRIDS = ("mxfp4", "mxint4", "nf4", "sf4")  # E2M1, INT4, NF4, SF4


@dataclasses.dataclass(frozen=True)
class Config:
    formats: tuple[str, ...] = tuple(lb.list_formats())  # format specs of the table (any case)
    grids: tuple[str, ...] = GRIDS  # formats whose element grids grids.png shows

    def __post_init__(self):
        if not self.formats or not self.grids:
            raise ValueError("--formats and --grids need at least one format spec each")
        for spec in self.formats:
            lb.get_format(spec)
        for spec in self.grids:
            if lb.get_format(spec).is_identity:
                raise ValueError(f"--grids takes formats with an element grid; {spec!r} is an identity format")


@functools.cache
def _grid(elem) -> tuple[float, ...]:
    if isinstance(elem, FPElem):
        codes = jnp.arange(2**elem.bits, dtype=jnp.uint8)
        v = np.asarray(jax.jit(elem.decode)(codes), np.float64)  # one compilation, not one per eager op
        return tuple(np.unique(v[np.abs(v) <= elem.max] + 0.0).tolist())
    if isinstance(elem, IntElem):
        return tuple(np.arange(elem.min, elem.max + 1, dtype=np.float64).tolist())
    if isinstance(elem, LUTElem):
        return tuple(float(v) for v in elem.values)
    if isinstance(elem, lb.ScaledIntElem):
        return elem.table.values
    if elem.kind == "adaptive":  # the union of the candidates' grids
        return tuple(np.unique(np.concatenate([_grid(e) for e in elem.elems])).tolist())
    raise TypeError(f"no grid for element {elem!r}")


def grid_values(elem) -> np.ndarray:
    """The distinct finite values of an element grid, increasing (float64; FP: all codes decoded, specials and
    the duplicate -0 dropped)."""
    return np.asarray(_grid(elem), np.float64)


def smallest_positive(elem) -> float:
    """The smallest nonzero |value| of an element grid."""
    v = np.abs(grid_values(elem))
    return float(v[v > 0].min())


def _dtype_range(dtype: str) -> tuple[float, float]:
    """(largest finite, smallest positive) of a float dtype."""
    fi = jnp.finfo(dtype)
    return float(fi.max), float(fi.smallest_subnormal)


def block_scale_range(fmt: lb.Format) -> tuple[float, float]:
    """(largest, smallest positive) block scale in element units (second level g = 1)."""
    rule = fmt.scale_rule
    if isinstance(rule, scaling.UE8M0):
        shift = fmt.elem.scale_shift  # the E8M0 byte holds OCP's X = 2^shift x the element scale
        return 2.0 ** (scaling.E8M0_MAX_EXP - shift), 2.0 ** (scaling.E8M0_MIN_EXP - shift)
    if rule.grid is None:
        return _dtype_range(rule.dtype)
    return rule.grid.max, rule.grid.min_subnormal


def value_range(fmt: lb.Format) -> tuple[float, float]:
    """(largest, smallest positive) value of a block format (adaptive formats: over their candidates)."""
    if fmt.is_adaptive:
        ranges = [value_range(c) for c in fmt.candidates]
        return max(r[0] for r in ranges), min(r[1] for r in ranges)
    s_hi, s_lo = block_scale_range(fmt)
    return fmt.elem.max * s_hi, smallest_positive(fmt.elem) * s_lo


def scale_text(fmt: lb.Format) -> str:
    """The block-scale rule in words, e.g. 'ue8m0 ceil', 'e4m3', 'fp32 (bf16)'."""
    if fmt.is_adaptive:
        return scale_text(fmt.candidates[0]) + {"separate": " +sel", "scale_sign": " ±"}.get(fmt.selector, "")
    rule = fmt.scale_rule
    if isinstance(rule, scaling.UE8M0):
        return f"ue8m0 {rule.rounding}" + (" (bf16)" if rule.dtype == "bfloat16" else "")
    return rule.name + (" (bf16)" if rule.dtype == "bfloat16" else "")


def _block_text(bs) -> tuple[str, int | None]:
    if isinstance(bs, tuple):
        return f"{bs[0]}x{bs[1]}", bs[0] * bs[1]
    return (str(bs), bs) if isinstance(bs, int) else (bs, None)


def describe(fmt: lb.Format) -> dict:
    """One table row for a format (module docstring)."""
    block, elems = _block_text(fmt.block_size)
    if fmt.is_identity:
        hi, lo = _dtype_range(fmt.passthrough_dtype)
        bits = 8 * jnp.dtype(fmt.passthrough_dtype).itemsize
        n_values = None
        element, kind, scale, scale_bits, second = fmt.passthrough_dtype, "float", "none", 0, "none"
        block_range = math.log2(hi / lo)
    else:
        elem = fmt.elem
        grid = grid_values(elem)
        hi, lo = value_range(fmt)
        bits, n_values = elem.bits, len(grid)
        element, kind, scale, scale_bits = elem.name, elem.kind, scale_text(fmt), fmt.scale_rule.bits
        second = getattr((fmt.candidates[0] if fmt.is_adaptive else fmt).scale_rule, "tensor", "none")
        block_range = math.log2(elem.max / smallest_positive(elem))
    return {
        "format": fmt.label,
        "element": element,
        "kind": kind,
        "elem_bits": bits,
        "values": n_values,
        "block": block,
        "block_elems": elems,
        "scale": scale,
        "scale_bits": scale_bits,
        "second_level": second,
        "bits_per_element": fmt.bits_per_element,
        "max_value": hi,
        "min_value": lo,
        "range_binades": math.log2(hi / lo),
        "block_range_binades": block_range,
    }


def grids_figure(grids: dict[str, dict]) -> Figure:
    """One row per element grid: its values normalised to max |value| 1 as dots on a line, with the count."""
    fig = Figure(figsize=(9.0, 0.75 * len(grids) + 0.9))
    ax = fig.add_subplot()
    for row, g in enumerate(grids.values()):
        y = len(grids) - 1 - row
        ax.axhline(y, color="0.85", lw=0.8, zorder=0)
        ax.plot(g["values"], [y] * len(g["values"]), "o", ms=5, color=f"C{row}", zorder=2)
        ax.annotate(f"{g['count']} values", (1.04, y), va="center", fontsize=8, annotation_clip=False)
    names = [g["element"].upper() + ("" if k == g["element"] else f" ({k})") for k, g in reversed(grids.items())]
    ax.set_yticks(range(len(grids)), names)
    ax.set_xlim(-1.08, 1.2)
    ax.set_ylim(-0.6, len(grids) - 0.4)
    ax.set_xlabel("element value / max |value|")
    ax.set_title("4-bit element grids, normalised to max 1")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def grid_entry(spec: str) -> tuple[str, dict]:
    """(format label, {"element", "count", "values" normalised to max |value| 1}) of a --grids spec."""
    fmt = lb.get_format(spec)
    v = grid_values(fmt.elem)
    return fmt.label, {"element": fmt.elem.name, "count": len(v), "values": (v / np.abs(v).max()).tolist()}


def print_table(rows: list[dict]) -> None:
    """The table as text (numbers to 4 significant digits, ranges in binades)."""
    cells = [
        (
            r["format"],
            r["element"],
            "-" if r["values"] is None else str(r["values"]),
            r["block"],
            r["scale"],
            r["second_level"],
            f"{r['bits_per_element']:.4g}",
            f"{r['max_value']:.4g}",
            f"{r['min_value']:.4g}",
            f"{r['range_binades']:.1f}",
            f"{r['block_range_binades']:.2f}",
        )
        for r in rows
    ]
    heads = ["format", "element", "values", "block", "scale", "2nd level", "bits/elem", "max", "min", "range"]
    print(common.format_table([*heads, "block range"], cells))
    print("(range and block range in binades: log2(max / min) over one tensor and within one block)")


def main(argv=None) -> dict:
    cfg, out = common.parse_config(Config, argv, __doc__)
    t0 = time.perf_counter()
    rows = [describe(lb.get_format(spec)) for spec in cfg.formats]
    grids = dict(grid_entry(spec) for spec in cfg.grids)
    result = {"formats": rows, "grids": grids, "config": cfg}
    folder = common.output_dir("formats", out)
    common.write_json(folder / "formats.json", result)
    common.write_csv(folder / "formats.csv", rows)
    fig = grids_figure(grids)
    fig.savefig(folder / "grids.png", dpi=130)
    print_table(rows)
    print(f"\nwrote {folder}/formats.json, formats.csv, grids.png ({time.perf_counter() - t0:.1f} s)")
    return result


if __name__ == "__main__":
    main()

"""Block formats as data: Format = element grid x block layout x scale rule (x second level), the named
formats, and the one format-spec grammar.

Spec grammar (used by get_format, CLI flags, interceptor rules and QDotConfig strings), case-insensitive:
    spec     := base (":" key "=" value)*
    base     := a named format ("mxint8", "nvfp4", ...; lb.list_formats()) | "fp(e,m)" | "fp(e,m,special)"
                | "int(b)"   (custom elements default to block_size=32, scale=ue8m0)
    key      := block_size | scale | scale_rounding | scale_dtype | int_range | tensor_scale | select | numerics
    block_size values: an int, "RxC" or "(R,C)" (a 2-D tile), "channel" (or -1), "tensor"
    select (adaptive formats only): mse | mae | absmax
    numerics (E4M3 block scales of plain formats): exact (default) | torchao | te
e.g. "mxint8:block_size=64:scale_rounding=floor", "fp(3,2):block_size=32:scale=ue8m0",
"int(5):block_size=16:scale=e4m3", "nvfp4:block_size=16x16", "if4:select=mae", "nvfp4:numerics=torchao".
Overrides of an adaptive format apply to each of its candidates (block_size, scale_rounding, ...).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from lowbit_jax import blocks, scaling
from lowbit_jax.blocks import PER_CHANNEL, PER_TENSOR, BlockSize
from lowbit_jax.elements import (
    INT_RANGES,
    ElemType,
    FPElem,
    IntElem,
    LUTElem,
    ScaledIntElem,
    Special,
    check_choice,
    fp,
    int_,
    lut,
    stretched_int,
)
from lowbit_jax.scaling import (
    E4M3_SCALE_MAX,
    NUMERICS,
    SCALE_DTYPES,
    TENSOR_SCALES,
    UE8M0_ROUNDINGS,
    FloatScale,
    ScaleRule,
)
from lowbit_jax.selection import SELECTS, AdaptiveElem, AdaptiveScale, selector_bits, selector_mode

__all__ = [
    "AdaptiveFormat",
    "E4M3_SCALE_MAX",
    "PER_CHANNEL",
    "PER_TENSOR",
    "ElemType",
    "FPElem",
    "Format",
    "IntElem",
    "LUTElem",
    "ScaledIntElem",
    "adaptive",
    "fp",
    "get_format",
    "int_",
    "list_formats",
    "lut",
    "parse_spec",
    "stretched_int",
]

SCALE_TYPES = ("ue8m0", "e4m3", "ue5m3", "fp32", "none")
# The named formats by name, filled below once their parts exist; a new Format checks its name against it.
_FORMATS: dict[str, Format] = {}
_ALIASES = {"mxfp8": "mxfp8_e4m3", "mxfp6": "mxfp6_e2m3", "mxfp4_e2m1": "mxfp4"}


def _kind(fmt: Format) -> str:
    return "an adaptive" if fmt.is_adaptive else "an identity" if fmt.elem is None else "a block"


def _check_name_kind(fmt: Format) -> None:
    """Refuse a name that a named format of another kind holds: labels describe a format relative to its name."""
    named = _FORMATS.get(_ALIASES.get(fmt.name, fmt.name))
    if named is not None and _kind(named) != _kind(fmt):
        raise ValueError(
            f"{fmt.name!r} names {_kind(named)} format; {_kind(fmt)} format needs a name of its own (name=...)"
        )


SCALE_ROUNDINGS = UE8M0_ROUNDINGS


@dataclass(frozen=True)
class Format:
    """A block format: element grid, block layout along the quantized axis (or axes), and the scale rule.

    block_size: a positive int (1-D blocks), a (rows, cols) pair (2-D tiles over two axes), "channel" (the
    whole axis is one block; -1 is accepted) or "tensor".
    scale: "ue8m0" (power of two; scale_rounding ceil/floor/round/even/ceil_amax), "e4m3" (E4M3 block scale,
    by default times an FP32 tensor scale, NVFP4-style), "ue5m3" (unsigned E5M3 block scale, no tensor scale by
    default), "fp32" (unrounded amax / Qmax), "none" (identity formats bf16 / fp32), or a scale-rule object
    from lowbit_jax.scaling (then scale_rounding, scale_dtype and tensor_scale are ignored).
    scale_dtype: "bfloat16" evaluates the scale and x / scale in bf16 (UE8M0 and FP32 scales).
    tensor_scale: the second level of E4M3 / UE5M3 scales: "fp32", "ue8m0" (a power of two) or "none";
    None: the default ("fp32" for E4M3, "none" for UE5M3).
    numerics: whose float32 arithmetic an E4M3 block scale runs: "exact" (the library's contract), "torchao"
    or "te" (the peers' NVFP4 code, operation by operation; lowbit_jax.scaling.PEER_NUMERICS). With a
    scale-rule object, the object's own numerics unless another is given here.
    """

    name: str
    elem: ElemType | AdaptiveElem | None  # None: identity formats; AdaptiveFormat derives an AdaptiveElem
    block_size: BlockSize = 32
    scale: str | ScaleRule = "ue8m0"
    scale_rounding: str = "ceil"
    scale_dtype: str = "float32"
    passthrough_dtype: str | None = None
    tensor_scale: str | None = None
    numerics: str = "exact"
    scale_rule: ScaleRule | AdaptiveScale | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_size", blocks.check_block_size(self.block_size))
        check_choice("numerics", self.numerics, NUMERICS)
        if self.elem is not None and not isinstance(self.elem, FPElem | IntElem | LUTElem | ScaledIntElem):
            raise TypeError(
                f"Format {self.name!r}: elem must be an element grid (lb.fp(e, m), lb.int_(b), lb.lut(...)), "
                f"got {self.elem!r}; for a named format use lb.get_format"
            )
        if (self.elem is None) != (self.scale == "none"):
            raise ValueError("identity formats (scale='none') have no element type, and only they")
        _check_name_kind(self)
        if self.elem is None:
            if self.numerics != "exact":
                raise ValueError(f"identity format {self.name!r} has no scales: numerics applies to E4M3 block scales")
            return
        if not isinstance(self.scale, str):
            own = getattr(self.scale, "numerics", "exact")
            rule = self.scale if self.numerics == "exact" else scaling.with_numerics(self.scale, self.numerics)
            object.__setattr__(self, "scale_rule", rule)
            object.__setattr__(self, "numerics", own if self.numerics == "exact" else self.numerics)
        else:
            check_choice("scale", self.scale, SCALE_TYPES)
            check_choice("scale_rounding", self.scale_rounding, SCALE_ROUNDINGS)
            check_choice("scale_dtype", self.scale_dtype, SCALE_DTYPES)
            if self.tensor_scale is not None:
                check_choice("tensor_scale", self.tensor_scale, TENSOR_SCALES)
            rule = scaling.rule(self.scale, self.scale_rounding, self.scale_dtype, self.tensor_scale, self.numerics)
            object.__setattr__(self, "scale_rule", rule)
            if self.tensor_scale == scaling.default_tensor_scale(self.scale):  # one spelling per format
                object.__setattr__(self, "tensor_scale", None)
        assert self.scale_rule is not None  # set just above
        self.scale_rule.check(self.elem)
        if self.scale_rule.has_tensor_scale and self.block_size == PER_TENSOR:
            kind = self.scale_rule.name.upper()
            raise ValueError(f"an {kind} block scale with a tensor scale needs blocks smaller than the tensor")

    @property
    def is_identity(self) -> bool:
        return self.elem is None

    @property
    def is_adaptive(self) -> bool:
        """Whether blocks choose among candidate formats (AdaptiveFormat)."""
        return False

    @property
    def qmax(self) -> float:
        assert self.elem is not None, f"{self.name} is an identity format: it has no Qmax"
        return self.elem.max

    @property
    def default_axis(self) -> int | tuple[int, int]:
        """The quantization axis when none is given: (-2, -1) for 2-D tiles, else -1."""
        return blocks.default_axis(self.block_size)

    @property
    def side_bits(self) -> int:
        """Stored bits per block beside the elements: the block scale (and zero point, or selector)."""
        assert self.elem is not None and self.scale_rule is not None, f"{self.name} is an identity format"
        return self.scale_rule.bits + (self.elem.bits if getattr(self.elem, "zero_point", False) else 0)

    @property
    def bits_per_element(self) -> float:
        """Element bits plus `side_bits` spread over a block (1-D blocks and 2-D tiles)."""
        if self.is_identity:
            return float(8 * (2 if self.passthrough_dtype == "bfloat16" else 4))
        assert self.elem is not None
        n = self.block_size[0] * self.block_size[1] if isinstance(self.block_size, tuple) else self.block_size
        return self.elem.bits + (self.side_bits / n if isinstance(n, int) else 0.0)

    @property
    def label(self) -> str:
        """The name plus every field that differs from the named format, e.g. 'mxint8[block_size=64]'."""
        base = _base_format(self.name)
        if base is None or base == self:
            return self.name
        diffs = [
            f"{f.name}={_show(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if f.init and f.name not in ("name", "elem") and getattr(self, f.name) != getattr(base, f.name)
        ]
        if (
            isinstance(self.elem, IntElem)
            and isinstance(base.elem, IntElem)
            and self.elem.int_range != base.elem.int_range
        ):
            diffs.append(f"int_range={self.elem.int_range}")
        elif self.elem != base.elem:
            assert self.elem is not None, f"identity format {self.name!r} shares the name of a block format"
            diffs.append(f"elem={self.elem.name}")
        return f"{self.name}[{', '.join(diffs)}]"

    def replace(self, **overrides: Any) -> Format:
        """A copy with fields replaced; `int_range` is forwarded to the (INT) element."""
        elem = self.elem
        if "int_range" in overrides:
            int_range = overrides.pop("int_range")
            if not isinstance(elem, IntElem):
                assert elem is not None, f"{self.name} is an identity format: it takes no int_range"
                raise ValueError(f"int_range applies to INT formats only; {self.name} has element {elem.name}")
            elem = dataclasses.replace(elem, int_range=int_range)
        return dataclasses.replace(self, elem=elem, **overrides)


@dataclass(frozen=True)
class AdaptiveFormat(Format):
    """A per-block choice among candidate formats (lowbit_jax.selection): every block is quantized by each
    candidate, the lowest `select` error wins (ties: the earlier candidate) and the choice is stored.

    Build one with `adaptive(candidates, select)`; `elem` and `scale_rule` are derived (the candidates' grids and
    rules with the choice's storage), and block_size, scale, scale_rounding, scale_dtype, tensor_scale are the
    candidates' (they share the block layout, the scale type and the second-level scale).
    """

    candidates: tuple[Format, ...] = ()
    select: str = "mse"

    def __post_init__(self) -> None:
        cands = tuple(self.candidates)
        if len(cands) < 2 or not all(isinstance(c, Format) for c in cands):
            raise ValueError("an adaptive format needs at least two candidate Formats")
        for c in cands:
            if c.is_identity or c.is_adaptive:
                raise ValueError(f"candidate {c.name} must be a plain block format (not identity or adaptive)")
            if c.numerics != "exact":
                raise ValueError(
                    f"adaptive formats choose per block with the exact arithmetic; candidate {c.label} has "
                    f"numerics={c.numerics!r} (peer numerics apply to plain E4M3 formats such as nvfp4)"
                )
        check_choice("select", self.select, SELECTS)
        _check_name_kind(self)
        first = cands[0]
        if any(c.block_size != first.block_size for c in cands):
            sizes = ", ".join(f"{c.name}: {_show(c.block_size)}" for c in cands)
            raise ValueError(f"adaptive candidates must share one block layout, got {sizes}")
        totals = {_tensor_total(c) for c in cands}
        if len(totals) != 1:
            raise ValueError(
                "adaptive candidates must share one second-level scale (equal Qmax x bound), got "
                + ", ".join(f"{c.name}: {_tensor_total(c)}" for c in cands)
            )
        # plain block formats (checked above): their elements and rules are the concrete grids and scale rules
        elems = cast(tuple[ElemType, ...], tuple(c.elem for c in cands))
        rules = cast(tuple[ScaleRule, ...], tuple(c.scale_rule for c in cands))
        object.__setattr__(self, "candidates", cands)
        object.__setattr__(self, "elem", AdaptiveElem(elems))
        object.__setattr__(self, "scale_rule", AdaptiveScale(rules, selector_mode(elems, rules)))
        for f in ("block_size", "scale", "scale_rounding", "scale_dtype", "passthrough_dtype", "tensor_scale"):
            object.__setattr__(self, f, getattr(first, f))

    @property
    def is_adaptive(self) -> bool:
        return True

    @property
    def selector(self) -> str:
        """Where the per-block choice is stored: "scale_sign", "scale" or "separate" (lowbit_jax.selection)."""
        assert isinstance(self.scale_rule, AdaptiveScale)  # set by __post_init__
        return self.scale_rule.mode

    @property
    def selector_bits(self) -> int:
        """Extra bits per block for the choice (0 when it lives in the scale's sign bit or value)."""
        return selector_bits(self.selector, len(self.candidates))

    @property
    def side_bits(self) -> int:
        """The block scale's and the selector's bits per block."""
        assert self.scale_rule is not None  # set by __post_init__
        return self.scale_rule.bits + self.selector_bits

    @property
    def label(self) -> str:
        """The name, plus what differs from the named format (select, then the candidates' overrides)."""
        base = cast("AdaptiveFormat | None", _base_format(self.name))  # the named format of an adaptive name
        if base is None or base == self:
            return self.name
        diffs = [] if self.select == base.select else [f"select={self.select}"]
        if len(base.candidates) == len(self.candidates):
            first = self.candidates[0].replace(name=base.candidates[0].name)
            inner = first.label
            if inner != first.name:
                diffs.append(inner[len(first.name) + 1 : -1])
        return f"{self.name}[{', '.join(diffs)}]" if diffs else self.name

    def replace(self, **overrides: Any) -> AdaptiveFormat:
        """A copy with `select` / `name` replaced and every other override applied to each candidate."""
        own = {k: overrides.pop(k) for k in ("select", "name") if k in overrides}
        cands = tuple(c.replace(**overrides) for c in self.candidates) if overrides else self.candidates
        return AdaptiveFormat(own.get("name", self.name), None, candidates=cands, select=own.get("select", self.select))


def _tensor_total(fmt: Format) -> float | None:
    """Qmax x bound of a format's second-level scale (what its tensor scale divides the tensor amax by)."""
    rule = cast(FloatScale, fmt.scale_rule)  # only float block scales (E4M3, UE5M3 grids) have a second level
    if not rule.has_tensor_scale:
        return None
    grid, elem = cast(FPElem, rule.grid), cast(ElemType, fmt.elem)
    return elem.max * (grid.max if rule.bound is None else rule.bound)


def plain_parts(fmt: Format) -> tuple[ElemType, ScaleRule]:
    """The element grid and scale rule of a block format that is neither identity nor adaptive."""
    elem, rule = fmt.elem, fmt.scale_rule
    assert elem is not None and rule is not None, f"{fmt.name} is an identity format"
    assert not isinstance(elem, AdaptiveElem) and not isinstance(rule, AdaptiveScale), f"{fmt.name} is adaptive"
    return elem, rule


def adaptive_parts(fmt: Format) -> tuple[AdaptiveFormat, AdaptiveElem, AdaptiveScale]:
    """An adaptive format with its derived element (the candidates' grids) and scale rule."""
    assert isinstance(fmt, AdaptiveFormat), f"{fmt.name} is not an adaptive format"
    assert isinstance(fmt.elem, AdaptiveElem) and isinstance(fmt.scale_rule, AdaptiveScale)  # __post_init__
    return fmt, fmt.elem, fmt.scale_rule


def adaptive(candidates: Iterable[Format | str], select: str = "mse", name: str | None = None) -> AdaptiveFormat:
    """A format whose every block takes the candidate (Formats or spec strings) with the lowest `select` error
    ("mse", "mae" or "absmax"; ties: the earlier candidate).

    Candidates must share the block layout, the scale type and the second-level scale. Storage cost of the
    choice: none when the candidates share one grid and differ in the scale value (the stored scale is the
    chosen one), none for two candidates sharing one E4M3 scale rule (the choice is the scale's sign bit), else
    ceil(log2 n) bits per block beside the scales (QArray.selectors).
    """
    cands = tuple(c if isinstance(c, Format) else get_format(c) for c in candidates)
    label = name if name is not None else "adaptive(" + "|".join(c.label for c in cands) + ")"
    return AdaptiveFormat(label, None, candidates=cands, select=select)


def _show(v: object) -> str:
    return f"{v[0]}x{v[1]}" if isinstance(v, tuple) else str(v)


def _mx(name: str, elem: ElemType, block: BlockSize = 32) -> Format:
    return Format(name, elem, block_size=block, scale="ue8m0")


def _nv(name: str, elem: ElemType, block: BlockSize = 16) -> Format:
    return Format(name, elem, block_size=block, scale="e4m3")


# NF4: the 16 quantiles of N(0, 1) normalised to [-1, 1] as bitsandbytes defines them (the float32 literals
# of bitsandbytes' NF4 table; QLoRA, Dettmers et al. 2023); bitsandbytes' default block is 64.
NF4_VALUES = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)
# SF4: the Student-t (nu = 5) table of Dotzel et al., "Learning from Students: Applying t-Distributions to
# Explore Accurate and Efficient Formats for LLMs", ICML 2024: the six-decimal SF4_5 list of the authors' code
# (cornell-zhang/llm-datatypes), the NF4 construction with t(5) quantiles in place of normal ones; their RTN
# examples use absmax groups of 128.
SF4_VALUES = (
    -1.0,
    -0.627781,
    -0.454736,
    -0.334331,
    -0.237434,
    -0.152899,
    -0.074982,
    0.0,
    0.065513,
    0.132965,
    0.204661,
    0.283835,
    0.375805,
    0.491076,
    0.656781,
    1.0,
)

_FORMATS.update(
    (f.name, f)
    for f in [
        _mx("mxfp8_e4m3", fp(4, 3)),
        _mx("mxfp8_e5m2", fp(5, 2)),
        _mx("mxfp6_e2m3", fp(2, 3)),
        _mx("mxfp6_e3m2", fp(3, 2)),
        _mx("mxfp4", fp(2, 1)),
        _mx("mxint8", int_(8)),
        _mx("mxint6", int_(6)),
        _mx("mxint4", int_(4)),
        _nv("nvfp4", fp(2, 1)),
        _nv("nvint4", int_(4)),
        _nv("nvfp4_2d", fp(2, 1), (16, 16)),
        _mx("mxfp8_2d", fp(4, 3), (32, 32)),
        Format("nf4", lut(NF4_VALUES, "nf4"), block_size=64, scale="fp32"),
        Format("sf4", lut(SF4_VALUES, "sf4"), block_size=128, scale="fp32"),
        _nv("nvfp6", fp(2, 3)),
        # The INT candidates of IF4 / IF6 (arXiv 2603.28765): INT4 / INT6 stretched to the FP grid's max, so they
        # share its E4M3 block scale; and Four Over Six's two NVFP4 mappings (arXiv 2512.02010), whose tensor
        # scale bound is 256 so that a block mapped to 4 (a 1.5x larger scale) still fits E4M3.
        _nv("if4_int", stretched_int(4, 6.0)),
        _nv("if6_int", stretched_int(6, 7.5)),
        Format("nvfp4_to6", fp(2, 1), 16, FloatScale("e4m3", tensor="fp32", bound=256.0)),
        Format("nvfp4_to4", fp(2, 1), 16, FloatScale("e4m3", tensor="fp32", bound=256.0, target=4.0)),
        Format("fp8_channel", fp(4, 3), block_size=PER_CHANNEL, scale="fp32"),
        Format("int8_channel", int_(8), block_size=PER_CHANNEL, scale="fp32"),
        Format("bf16", None, block_size=PER_TENSOR, scale="none", passthrough_dtype="bfloat16"),
        Format("fp32", None, block_size=PER_TENSOR, scale="none", passthrough_dtype="float32"),
    ]
)
_FORMATS.update(
    (f.name, f)
    for f in [
        adaptive([_FORMATS["nvfp4"], _FORMATS["if4_int"]], name="if4"),
        adaptive([_FORMATS["nvfp6"], _FORMATS["if6_int"]], name="if6"),
        adaptive([_FORMATS["mxfp4"], _FORMATS["mxint4"]], name="mxif4"),
        adaptive([_FORMATS["mxfp6_e2m3"], _FORMATS["mxint6"]], name="mxif6"),
        adaptive([_FORMATS["mxfp8_e4m3"], _FORMATS["mxint8"]], name="mxif8"),
        adaptive([_FORMATS["nvfp4_to6"], _FORMATS["nvfp4_to4"]], name="nvfp4_4over6"),
    ]
)
_OVERRIDABLE = (
    "block_size",
    "scale",
    "scale_rounding",
    "scale_dtype",
    "int_range",
    "tensor_scale",
    "select",
    "numerics",
)
_ELEMENT_SPEC = re.compile(r"^(fp|int)\(([^()]*)\)$")


def list_formats() -> list[str]:
    """Canonical names of the named formats (aliases: mxfp8 = mxfp8_e4m3, mxfp6 = mxfp6_e2m3)."""
    return list(_FORMATS)


def _custom_element(base: str) -> ElemType | None:
    """The element of 'fp(e,m[,special])' / 'int(b)', None if `base` has neither form."""
    m = _ELEMENT_SPEC.match(base)
    if m is None:
        return None
    kind, args = m.group(1), [a.strip() for a in m.group(2).split(",")]
    try:
        if kind == "int":
            (b,) = args
            return int_(int(b))
        if len(args) not in (2, 3):
            raise ValueError("fp takes (e, m) or (e, m, special)")
        return fp(int(args[0]), int(args[1]), *cast(list[Special], args[2:]))  # fp checks `special`
    except (TypeError, ValueError) as err:
        raise ValueError(f"bad element {base!r}: {err}; write fp(e,m), fp(e,m,special) or int(b)") from err


def _base_format(name: str) -> Format | None:
    """The named format, or the default format of a custom element spec (block 32, UE8M0), or None."""
    key = _ALIASES.get(name, name)
    if key in _FORMATS:
        return _FORMATS[key]
    elem = _custom_element(name)
    return None if elem is None else Format(name, elem, block_size=32, scale="ue8m0")


def _unknown_format(name: str) -> ValueError:
    valid = sorted(list(_FORMATS) + list(_ALIASES))
    hint = difflib.get_close_matches(str(name).lower(), valid, n=1)
    extra = f" (did you mean {hint[0]!r}?)" if hint else ""
    return ValueError(
        f"unknown format {name!r}{extra}; valid names: {', '.join(valid)}, or a custom element fp(e,m) / int(b)"
    )


def _parse_block_size(text: str) -> BlockSize:
    t = text.strip().lower().replace(" ", "")
    m = re.fullmatch(r"\(?(\d+)[x,](\d+)\)?", t)
    if m:
        return (int(m.group(1)), int(m.group(2)))
    if t.lstrip("-").isdigit():
        return int(t)
    return t


def parse_spec(spec: str) -> Format:
    """The Format of a spec string (module docstring); ValueError naming the bad part and what is allowed."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a format spec is a non-empty string, got {spec!r}")
    base, *parts = [p.strip() for p in spec.strip().split(":")]
    overrides: dict[str, Any] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or not value.strip():
            raise ValueError(f"format spec {spec!r}: {part!r} is not key=value; keys: {', '.join(_OVERRIDABLE)}")
        if key not in _OVERRIDABLE:
            raise ValueError(f"format spec {spec!r}: unknown key {key!r}; allowed: {', '.join(_OVERRIDABLE)}")
        if key in overrides:
            raise ValueError(f"format spec {spec!r}: {key!r} is given twice")
        value = value.strip()
        overrides[key] = _parse_block_size(value) if key == "block_size" else value.lower()
    try:
        return get_format(base.lower().replace(" ", ""), **overrides)
    except ValueError as err:
        raise ValueError(f"format spec {spec!r}: {err}") from err


def get_format(name: str | Format, **overrides: Any) -> Format:
    """A named format, a custom element spec or a full spec string (module docstring), optionally with
    `block_size`, `scale`, `scale_rounding`, `scale_dtype`, `int_range`, `tensor_scale`, `select`, `numerics`
    replaced."""
    fmt: Format | None
    if isinstance(name, Format):
        fmt = name
    elif not isinstance(name, str):
        raise TypeError(f"a format is a Format or a spec string, got {type(name).__name__}")
    elif ":" in name:
        fmt = parse_spec(name)
    else:
        fmt = _base_format(name.strip().lower().replace(" ", ""))
        if fmt is None:
            raise _unknown_format(name)
    unknown = set(overrides) - set(_OVERRIDABLE)
    if unknown:
        raise ValueError(f"unknown override(s) {sorted(unknown)}; allowed: {list(_OVERRIDABLE)}")
    if fmt.is_identity and overrides:
        raise ValueError(f"{fmt.name} is an identity format and takes no overrides")
    if "int_range" in overrides:
        check_choice("int_range", overrides["int_range"], INT_RANGES)
    if "select" in overrides and not fmt.is_adaptive:
        raise ValueError(f"select applies to adaptive formats only (e.g. if4, mxif4); {fmt.name} is not one")
    return fmt.replace(**overrides) if overrides else fmt

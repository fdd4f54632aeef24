"""Number formats as data: element types (FP(e,m), INT(b)) and block formats (element + block + scale).

Conventions follow OCP MX v1.0 and ml_dtypes: E4M3 is the "fn" variant (no Inf, S.1111.111 = NaN, max 448),
E5M2 is IEEE-like (Inf and NaN in the top binade), FP6/FP4 (and every element narrower than 8 bits) have no
special values. Every FP element has subnormals. INT(b) is symmetric, [-(2^(b-1)-1), 2^(b-1)-1], by default.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Literal

import jax.numpy as jnp

Special = Literal["none", "fn", "ieee"]
ScaleType = Literal["ue8m0", "e4m3", "fp32", "none"]
ScaleRounding = Literal["ceil", "floor", "round"]
IntRange = Literal["symmetric", "asymmetric"]
ScaleDtype = Literal["float32", "bfloat16"]

PER_CHANNEL = "channel"
PER_TENSOR = "tensor"
SCALE_TYPES = ("ue8m0", "e4m3", "fp32", "none")
SCALE_ROUNDINGS = ("ceil", "floor", "round")
INT_RANGES = ("symmetric", "asymmetric")
SCALE_DTYPES = ("float32", "bfloat16")
E4M3_SCALE_MAX = 448.0


def _check_choice(what: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {list(choices)}, got {value!r}")


@dataclass(frozen=True)
class FPElem:
    """FP(e, m) element: sign, `exp_bits` exponent bits (bias 2^(e-1)-1), `man_bits` mantissa bits, subnormals."""

    exp_bits: int
    man_bits: int
    special: Special = "none"

    def __post_init__(self):
        e, m = self.exp_bits, self.man_bits
        if not (isinstance(e, int) and isinstance(m, int)) or e < 1 or m < 0 or e + m + 1 > 8:
            raise ValueError(f"FP(e={e}, m={m}) needs integers e >= 1, m >= 0 and e + m + 1 <= 8")
        _check_choice("special", self.special, ("none", "fn", "ieee"))
        if self.special == "fn" and m == 0:
            raise ValueError("the 'fn' convention (only S.1..1.1..1 is NaN) needs at least one mantissa bit")
        if self.special == "ieee" and e < 2:
            raise ValueError("the 'ieee' convention reserves the top binade and needs at least two exponent bits")

    kind = "fp"

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def bias(self) -> int:
        return 2 ** (self.exp_bits - 1) - 1

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal, 1 - bias."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite value."""
        top = 2**self.exp_bits - 1 - self.bias
        return top - 1 if self.special == "ieee" else top

    @property
    def max(self) -> float:
        """Largest finite magnitude (448 for E4M3, 57344 for E5M2, 7.5 for E2M3, 6 for E2M1)."""
        ulps_lost = 2 if self.special == "fn" else 1
        return (2.0 - ulps_lost * 2.0**-self.man_bits) * 2.0**self.emax

    @property
    def min_normal(self) -> float:
        return 2.0**self.emin

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (self.emin - self.man_bits)

    @property
    def dynamic_range(self) -> float:
        return self.max / self.min_subnormal

    @property
    def name(self) -> str:
        return f"e{self.exp_bits}m{self.man_bits}"

    @property
    def storage_dtype(self):
        """Narrowest dtype XLA can hold the codes in; other FP elements are stored as uint8 bit patterns."""
        native = {
            (4, 3, "fn"): jnp.float8_e4m3fn,
            (5, 2, "ieee"): jnp.float8_e5m2,
            (2, 1, "none"): jnp.float4_e2m1fn,
        }
        return native.get((self.exp_bits, self.man_bits, self.special), jnp.uint8)


@dataclass(frozen=True)
class IntElem:
    """INT(b) element: integers in [-(2^(b-1)-1), 2^(b-1)-1] (symmetric) or down to -2^(b-1) (asymmetric)."""

    bits: int
    int_range: IntRange = "symmetric"

    def __post_init__(self):
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ValueError(f"INT(b) needs an integer 2 <= b <= 8, got {self.bits!r}")
        _check_choice("int_range", self.int_range, INT_RANGES)

    kind = "int"

    @property
    def max(self) -> float:
        return float(2 ** (self.bits - 1) - 1)

    @property
    def min(self) -> float:
        """Most negative code value."""
        return -self.max - (1.0 if self.int_range == "asymmetric" else 0.0)

    @property
    def emax(self) -> int:
        """floor(log2(max)): the OCP element emax (MXINT8 = INT8 codes x 2^-6 has emax 0 relative to it)."""
        return self.bits - 2

    @property
    def min_subnormal(self) -> float:
        return 1.0

    @property
    def dynamic_range(self) -> float:
        return self.max

    @property
    def name(self) -> str:
        return f"int{self.bits}"

    @property
    def storage_dtype(self):
        if self.bits <= 2:
            return jnp.int2
        return jnp.int4 if self.bits <= 4 else jnp.int8


ElemType = FPElem | IntElem


def fp(exp_bits: int, man_bits: int, special: Special | None = None) -> FPElem:
    """FP(e, m) with the OCP/ml_dtypes convention for its width unless `special` is given."""
    if special is None:
        if 1 + exp_bits + man_bits < 8 or exp_bits < 2:  # IEEE's reserved top binade needs >= 2 exponent bits
            special = "none"
        else:
            special = "fn" if (exp_bits, man_bits) == (4, 3) else "ieee"
    return FPElem(exp_bits, man_bits, special)


def int_(bits: int, int_range: IntRange = "symmetric") -> IntElem:
    """INT(b) element."""
    return IntElem(bits, int_range)


@dataclass(frozen=True)
class Format:
    """A block format: element type, block size along the quantization axis, and the scale rule.

    block_size: a positive int, "channel" (the whole axis is one block; -1 is accepted) or "tensor".
    scale: "ue8m0" (power of two), "e4m3" (E4M3 block scale times an FP32 tensor scale, NVFP4-style),
    "fp32" (unrounded amax / Qmax), "none" (identity formats bf16 / fp32).
    """

    name: str
    elem: ElemType | None
    block_size: int | str = 32
    scale: ScaleType = "ue8m0"
    scale_rounding: ScaleRounding = "ceil"
    scale_dtype: ScaleDtype = "float32"
    passthrough_dtype: str | None = None

    def __post_init__(self):
        bs = self.block_size
        if isinstance(bs, int) and not isinstance(bs, bool) and bs == -1:
            object.__setattr__(self, "block_size", PER_CHANNEL)
        elif not (bs in (PER_CHANNEL, PER_TENSOR) or (type(bs) is int and bs > 0)):
            raise ValueError(f"block_size must be a positive int, -1 or 'channel', or 'tensor'; got {bs!r}")
        _check_choice("scale", self.scale, SCALE_TYPES)
        _check_choice("scale_rounding", self.scale_rounding, SCALE_ROUNDINGS)
        _check_choice("scale_dtype", self.scale_dtype, SCALE_DTYPES)
        if (self.elem is None) != (self.scale == "none"):
            raise ValueError("identity formats (scale='none') have no element type, and only they")
        if self.scale == "e4m3" and self.block_size == PER_TENSOR:
            raise ValueError("an E4M3 block scale with a tensor scale needs blocks smaller than the tensor")

    @property
    def is_identity(self) -> bool:
        return self.elem is None

    @property
    def qmax(self) -> float:
        return self.elem.max

    @property
    def label(self) -> str:
        """The name plus every field that differs from the named format, e.g. 'mxint8[block_size=64]'."""
        base = _FORMATS.get(self.name)
        if base is None or base == self:
            return self.name
        diffs = [
            f"{f.name}={getattr(self, f.name)}"
            for f in dataclasses.fields(self)
            if f.name not in ("name", "elem") and getattr(self, f.name) != getattr(base, f.name)
        ]
        if isinstance(self.elem, IntElem) and self.elem.int_range != base.elem.int_range:
            diffs.append(f"int_range={self.elem.int_range}")
        if self.elem != base.elem and not isinstance(self.elem, IntElem):
            diffs.append(f"elem={self.elem.name}")
        return f"{self.name}[{', '.join(diffs)}]"

    def replace(self, **overrides) -> Format:
        """A copy with fields replaced; `int_range` and element fields are forwarded to the element."""
        elem = self.elem
        if "int_range" in overrides:
            int_range = overrides.pop("int_range")
            if not isinstance(elem, IntElem):
                raise ValueError(f"int_range applies to INT formats only; {self.name} has element {elem}")
            elem = dataclasses.replace(elem, int_range=int_range)
        return dataclasses.replace(self, elem=elem, **overrides)


def _mx(name: str, elem: ElemType) -> Format:
    return Format(name, elem, block_size=32, scale="ue8m0")


def _nv(name: str, elem: ElemType) -> Format:
    return Format(name, elem, block_size=16, scale="e4m3")


_FORMATS: dict[str, Format] = {
    f.name: f
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
        Format("fp8_channel", fp(4, 3), block_size=PER_CHANNEL, scale="fp32"),
        Format("int8_channel", int_(8), block_size=PER_CHANNEL, scale="fp32"),
        Format("bf16", None, block_size=PER_TENSOR, scale="none", passthrough_dtype="bfloat16"),
        Format("fp32", None, block_size=PER_TENSOR, scale="none", passthrough_dtype="float32"),
    ]
}
_ALIASES = {"mxfp8": "mxfp8_e4m3", "mxfp6": "mxfp6_e2m3", "mxfp4_e2m1": "mxfp4"}
_OVERRIDABLE = ("block_size", "scale", "scale_rounding", "scale_dtype", "int_range")


def list_formats() -> list[str]:
    """Canonical names of the named formats (aliases: mxfp8 = mxfp8_e4m3, mxfp6 = mxfp6_e2m3)."""
    return list(_FORMATS)


def get_format(name: str | Format, **overrides) -> Format:
    """A named format, optionally with `block_size`, `scale`, `scale_rounding`, `scale_dtype`, `int_range` replaced."""
    if isinstance(name, Format):
        fmt = name
    else:
        key = _ALIASES.get(name, name) if isinstance(name, str) else name
        if key not in _FORMATS:
            valid = sorted(list(_FORMATS) + list(_ALIASES))
            hint = difflib.get_close_matches(str(name), valid, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ValueError(f"unknown format {name!r}{extra}; valid names: {', '.join(valid)}")
        fmt = _FORMATS[key]
    unknown = set(overrides) - set(_OVERRIDABLE)
    if unknown:
        raise ValueError(f"unknown override(s) {sorted(unknown)}; allowed: {list(_OVERRIDABLE)}")
    if fmt.is_identity and overrides:
        raise ValueError(f"{fmt.name} is an identity format and takes no overrides")
    return fmt.replace(**overrides) if overrides else fmt

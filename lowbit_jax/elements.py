"""Element grids as objects: FP(e, m), INT(b) and lookup tables, each with one interface.

Every grid has `name`, `kind`, `bits`, `max` (the Qmax a scale rule maps the block amax to), `min`,
`storage_dtype`, and the methods `round(v, uniform=None)` (float32 onto the grid: RNE, or stochastic when
`uniform` in [0, 1) is given; saturating), `encode(values) -> codes`, `decode(codes) -> float32 values` and
`code_bytes(values)` (codes as bytes, for kernels that cannot store sub-byte dtypes).

Conventions follow OCP MX v1.0 and ml_dtypes: E4M3 is the "fn" variant (no Inf, S.1111.111 = NaN, max 448),
E5M2 is IEEE-like (Inf and NaN in the top binade), FP6/FP4 (every element narrower than 8 bits) have no
special values. Every FP element has subnormals. INT(b) is symmetric, [-(2^(b-1)-1), 2^(b-1)-1], by default.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lowbit_jax import rounding
from lowbit_jax._types import ArrayLike, DTypeLike

Special = Literal["none", "fn", "ieee"]
IntRange = Literal["symmetric", "asymmetric", "zero_point"]
INT_RANGES = ("symmetric", "asymmetric", "zero_point")


def check_choice(what: str, value: object, choices: Collection[object]) -> None:
    """ValueError naming `what` and the allowed values unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{what} must be one of {list(choices)}, got {value!r}")


@dataclass(frozen=True)
class FPElem:
    """FP(e, m) element: sign (unless `signed=False`), `exp_bits` exponent bits (bias 2^(e-1)-1), `man_bits`
    mantissa bits, subnormals; `special` says which codes are NaN/Inf ("none", "fn": only S.1..1.1..1 is NaN,
    "ieee": the top binade)."""

    exp_bits: int
    man_bits: int
    special: Special = "none"
    signed: bool = True

    kind = "fp"
    scale_shift = 0  # log2 of the implicit factor OCP puts between a UE8M0 scale and the element values
    byte_dtype = jnp.uint8  # dtype of code_bytes

    def __post_init__(self) -> None:
        e, m = self.exp_bits, self.man_bits
        if not (isinstance(e, int) and isinstance(m, int)) or e < 1 or m < 0 or e + m + self.signed > 8:
            raise ValueError(f"FP(e={e}, m={m}) needs integers e >= 1, m >= 0 and e + m + 1 <= 8")
        check_choice("special", self.special, ("none", "fn", "ieee"))
        if self.special == "fn" and m == 0:
            raise ValueError("the 'fn' convention (only S.1..1.1..1 is NaN) needs at least one mantissa bit")
        if self.special == "ieee" and e < 2:
            raise ValueError("the 'ieee' convention reserves the top binade and needs at least two exponent bits")

    @property
    def bits(self) -> int:
        return int(self.signed) + self.exp_bits + self.man_bits

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
    def min(self) -> float:
        return -self.max if self.signed else 0.0

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
        return f"{'' if self.signed else 'u'}e{self.exp_bits}m{self.man_bits}"

    @property
    def storage_dtype(self) -> DTypeLike:
        """Narrowest dtype XLA can hold the codes in; other FP elements are stored as uint8 bit patterns."""
        native = {
            (4, 3, "fn", True): jnp.float8_e4m3fn,
            (5, 2, "ieee", True): jnp.float8_e5m2,
            (2, 1, "none", True): jnp.float4_e2m1fn,
        }
        return native.get((self.exp_bits, self.man_bits, self.special, self.signed), jnp.uint8)

    def round(self, v: jax.Array, uniform: jax.Array | None = None) -> jax.Array:
        """float32 `v` onto the grid: RNE (or stochastic) with subnormals, saturating to +-max, NaN kept."""
        q = rounding.round_fp(v, self, uniform)
        return q if self.signed else jnp.maximum(q, 0.0)

    def code_bytes(self, values: jax.Array) -> jax.Array:
        """The uint8 bit pattern (sign | exponent | mantissa) of grid values."""
        e, m = self.exp_bits, self.man_bits
        a = jnp.abs(values)
        normal = a >= self.min_normal
        exp = jnp.maximum(rounding.f32_exponent(a), self.emin)
        fld = jnp.where(normal, exp + self.bias, 0)
        man = jnp.round(a * rounding.pow2(m - exp)).astype(jnp.int32) - jnp.where(normal, 1 << m, 0)
        code = (fld << m) | man
        if self.signed:
            code = code | (jnp.signbit(values).astype(jnp.int32) << (e + m))
        return code.astype(jnp.uint8)

    def encode(self, values: jax.Array) -> jax.Array:
        """Grid values (float32) -> codes in `storage_dtype` (uint8 bit patterns for FP6 and other non-native)."""
        dtype = self.storage_dtype
        return values.astype(dtype) if dtype != jnp.uint8 else self.code_bytes(values)

    def decode(self, codes: jax.Array) -> jax.Array:
        """Codes (storage dtype or uint8 bit patterns) -> values as float32 (exact)."""
        if codes.dtype != jnp.uint8:
            return codes.astype(jnp.float32)
        e, m = self.exp_bits, self.man_bits
        c = codes.astype(jnp.int32)
        fld = (c >> m) & ((1 << e) - 1)
        man = c & ((1 << m) - 1)
        normal = fld > 0
        sig = (man + jnp.where(normal, 1 << m, 0)).astype(jnp.float32)
        mag = sig * rounding.pow2(jnp.where(normal, fld, 1) - self.bias - m)
        return jnp.where(self.signed & ((c >> (e + m)) & 1 == 1), -mag, mag)

    def codes_from_bytes(self, codes_u8: jax.Array) -> jax.Array:
        """code_bytes output -> codes in `storage_dtype` (a bitcast for 8-bit floats)."""
        dtype = self.storage_dtype
        if dtype == jnp.uint8:
            return codes_u8
        if self.bits == 8:
            return lax.bitcast_convert_type(codes_u8, dtype)
        return self.decode(codes_u8).astype(dtype)


@dataclass(frozen=True)
class IntElem:
    """INT(b) element: integers in [-(2^(b-1)-1), 2^(b-1)-1] (symmetric), down to -2^(b-1) (asymmetric), or
    [0, 2^b - 1] around a per-block integer zero point (zero_point; the block's scale rule then maps the
    span max - min, zero included, to 2^b - 1)."""

    bits: int
    int_range: IntRange = "symmetric"

    kind = "int"

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ValueError(f"INT(b) needs an integer 2 <= b <= 8, got {self.bits!r}")
        check_choice("int_range", self.int_range, INT_RANGES)

    @property
    def zero_point(self) -> bool:
        return self.int_range == "zero_point"

    @property
    def max(self) -> float:
        """Largest code value (2^(b-1) - 1; zero_point: 2^b - 1, the span of the unsigned codes)."""
        return float(2**self.bits - 1) if self.zero_point else float(2 ** (self.bits - 1) - 1)

    @property
    def min(self) -> float:
        """Most negative code value (zero_point: 0, the codes are unsigned)."""
        if self.zero_point:
            return 0.0
        return -self.max - (1.0 if self.int_range == "asymmetric" else 0.0)

    @property
    def emax(self) -> int:
        """floor(log2(max)) of the signed grid: the OCP element emax (MXINT8 = INT8 codes x 2^-6 has emax 0)."""
        return self.bits - 2

    @property
    def scale_shift(self) -> int:
        """OCP MXINT elements are fixed point with b - 2 fraction bits: the UE8M0 byte is X = 2^(b-2) * scale.
        Zero-point codes have no OCP meaning; their UE8M0 byte is the scale of the integer codes itself."""
        return 0 if self.zero_point else self.bits - 2

    @property
    def min_subnormal(self) -> float:
        return 1.0

    @property
    def dynamic_range(self) -> float:
        return self.max

    @property
    def name(self) -> str:
        return f"{'uint' if self.zero_point else 'int'}{self.bits}"

    @property
    def storage_dtype(self) -> DTypeLike:
        if self.zero_point:
            return jnp.uint4 if self.bits <= 4 else jnp.uint8
        if self.bits <= 2:
            return jnp.int2
        return jnp.int4 if self.bits <= 4 else jnp.int8

    def round(
        self, v: jax.Array, uniform: jax.Array | None = None, lo: ArrayLike | None = None, hi: ArrayLike | None = None
    ) -> jax.Array:
        """float32 `v` to integer codes (as float32): RNE (or stochastic), clipped to [lo, hi] (default the
        signed range; zero-point blocks pass their own bounds -z and 2^b - 1 - z)."""
        return rounding.round_int(v, self.min if lo is None else lo, self.max if hi is None else hi, uniform)

    @property
    def byte_dtype(self) -> DTypeLike:
        return jnp.uint8 if self.zero_point else jnp.int8

    def code_bytes(self, values: jax.Array) -> jax.Array:
        return values.astype(self.byte_dtype)

    def encode(self, values: jax.Array) -> jax.Array:
        return values.astype(self.storage_dtype)

    def decode(self, codes: jax.Array) -> jax.Array:
        return codes.astype(jnp.float32)

    def codes_from_bytes(self, codes_bytes: jax.Array) -> jax.Array:
        return codes_bytes.astype(self.storage_dtype)


def _f32(v: float) -> float:
    return float(np.float32(v))


def f32_nearest(value: Fraction) -> float:
    """The float32 nearest to an exact rational (ties to even), without a float64 double rounding."""
    t = np.float32(float(value))
    for cand in (np.nextafter(t, np.float32(-np.inf)), np.nextafter(t, np.float32(np.inf))):
        d_c, d_t = abs(Fraction(float(cand)) - value), abs(Fraction(float(t)) - value)
        if d_c < d_t or (d_c == d_t and int(cand.view(np.uint32)) % 2 == 0):
            t = cand
    return float(t)


def _up_threshold(lo: float, hi: float, up_wins_tie: bool) -> float:
    """The smallest float32 t such that every float32 v >= t is nearer to `hi` than to `lo` (ties: `hi` iff
    up_wins_tie): the midpoint when it is a float32 and the tie goes up, else the next float32 above it."""
    mid = (Fraction(lo) + Fraction(hi)) / 2
    t = np.float32(mid)
    if Fraction(float(t)) < mid or (Fraction(float(t)) == mid and not up_wins_tie):
        t = np.nextafter(t, np.float32(np.inf))
    return float(t)


SELECT_MAX = 64  # tables up to this size use compare-and-select chains (Pallas/Triton lower no gather)


def _select(index: jax.Array, table: tuple[float, ...]) -> jax.Array:
    """table[index] (float32) as a chain of selects on int32 `index` in [0, len(table))."""
    out = jnp.full(index.shape, table[0], jnp.float32)
    for i in range(1, len(table)):
        out = jnp.where(index >= i, table[i], out)
    return out


def _count_at_least(v: jax.Array, points: tuple[float, ...]) -> jax.Array:
    """The number of `points` that are <= float32 `v` (int32; 0 for NaN), as a sum of comparisons."""
    count = jnp.zeros(v.shape, jnp.int32)
    for p in points:
        count = count + (v >= p).astype(jnp.int32)
    return count


@dataclass(frozen=True)
class LUTElem:
    """A lookup-table grid: any strictly increasing table of 2..256 values (rounded to float32); round to the
    nearest value (ties to the even code index; `tie_parity` 1: to the odd index); codes are table indices.
    Scales map the block amax to max |value|. Tables of at most SELECT_MAX values compute with comparisons and
    selects only (no gather or searchsorted), so the Pallas kernels lower them; larger tables use searchsorted
    and gathers."""

    values: tuple[float, ...]
    label: str = "lut"
    tie_parity: int = 0
    thresholds: tuple[float, ...] = field(init=False, repr=False, compare=False)

    kind = "lut"
    scale_shift = 0
    byte_dtype = jnp.uint8

    def __post_init__(self) -> None:
        vals = tuple(_f32(v) for v in self.values)
        if not 2 <= len(vals) <= 256:
            raise ValueError(f"a lookup table needs 2 to 256 values, got {len(vals)}")
        if any(not math.isfinite(v) for v in vals):
            raise ValueError("lookup-table values must be finite float32 numbers")
        if any(b <= a for a, b in zip(vals, vals[1:])):
            raise ValueError("lookup-table values must be strictly increasing (as float32)")
        object.__setattr__(self, "values", vals)
        if self.tie_parity not in (0, 1):
            raise ValueError(f"tie_parity must be 0 or 1, got {self.tie_parity!r}")
        ts = tuple(
            _up_threshold(a, b, (i + 1 + self.tie_parity) % 2 == 0) for i, (a, b) in enumerate(zip(vals, vals[1:]))
        )
        object.__setattr__(self, "thresholds", ts)

    @property
    def name(self) -> str:
        return self.label

    @property
    def bits(self) -> int:
        return max(1, math.ceil(math.log2(len(self.values))))

    @property
    def max(self) -> float:
        return max(abs(self.values[0]), abs(self.values[-1]))

    @property
    def min(self) -> float:
        return self.values[0]

    @property
    def dynamic_range(self) -> float:
        smallest = min(abs(v) for v in self.values if v != 0)
        return self.max / smallest

    @property
    def storage_dtype(self) -> DTypeLike:
        return jnp.uint4 if len(self.values) <= 16 else jnp.uint8

    @property
    def selects(self) -> bool:
        """Whether this table computes with compare-and-select chains (at most SELECT_MAX values)."""
        return len(self.values) <= SELECT_MAX

    def _lookup(self, index: jax.Array) -> jax.Array:
        """The table values (float32) at int32 indices."""
        if self.selects:
            return _select(index, self.values)
        return jnp.asarray(self.values, jnp.float32)[index]

    def _count(self, v: jax.Array, points: tuple[float, ...]) -> jax.Array:
        """How many of the increasing float32 `points` are <= v (int32)."""
        if self.selects:
            return _count_at_least(v, points)
        return jnp.searchsorted(jnp.asarray(points, jnp.float32), v, side="right", method="compare_all").astype(
            jnp.int32
        )

    def _stochastic(self, v: jax.Array, uniform: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """(lower neighbour's index, its value, the upper neighbour's value, up) of `v` clipped to the table's
        range; up: uniform < (v - lower) / (upper - lower), the quotient correctly rounded."""
        table = self.values
        c = jnp.clip(v, table[0], table[-1])
        lo = jnp.clip(self._count(c, table[1:-1]), 0, len(table) - 2)
        a, b = self._lookup(lo), self._lookup(lo + 1)
        return lo, a, b, uniform < rounding.div_exact(c - a, b - a)

    def index(self, v: ArrayLike, uniform: jax.Array | None = None) -> jax.Array:
        """The code (int32 table index) of float32 `v`: nearest value, ties to the even index; outside the
        table's range the end codes (saturation); stochastic between the two neighbours given `uniform`.
        NaN gets an arbitrary code (`round` keeps NaN; the codec stores non-finite blocks as the code of 0)."""
        v = jnp.asarray(v, jnp.float32)
        if uniform is None:
            return self._count(v, self.thresholds)
        lo, _, _, up = self._stochastic(v, uniform)
        return lo + up.astype(jnp.int32)

    def round(self, v: ArrayLike, uniform: jax.Array | None = None) -> jax.Array:
        """float32 `v` onto the table (NaN kept)."""
        v = jnp.asarray(v, jnp.float32)
        if uniform is None:
            q = self._lookup(self.index(v))
        else:
            _, a, b, up = self._stochastic(v, uniform)
            q = jnp.where(up, b, a)
        return jnp.where(jnp.isnan(v), v, q)

    def code_bytes(self, values: jax.Array) -> jax.Array:
        return self.index(values).astype(jnp.uint8)

    def encode(self, values: jax.Array) -> jax.Array:
        """Table values -> indices in `storage_dtype`."""
        return self.index(values).astype(self.storage_dtype)

    def decode(self, codes: jax.Array) -> jax.Array:
        """Codes (table indices, any integer dtype) -> table values as float32."""
        return self._lookup(codes.astype(jnp.int32))

    def codes_from_bytes(self, codes_u8: jax.Array) -> jax.Array:
        return codes_u8.astype(self.storage_dtype)


@dataclass(frozen=True)
class ScaledIntElem:
    """INT(b) codes k in [-(2^(b-1)-1), 2^(b-1)-1] standing for the values fl32(k * top / (2^(b-1)-1)): the
    symmetric integer grid stretched so that its largest code equals `top` (IF4's INT candidate: INT4 with
    top 6, the values +-6k/7, each correctly rounded to float32). Rounding goes to the nearest of these values,
    ties to the even k, saturating; codes are the integers k (two's complement)."""

    bits: int
    top: float
    table: LUTElem = field(init=False, repr=False, compare=False)

    kind = "int"
    int_range = "symmetric"
    zero_point = False
    scale_shift = 0  # no OCP fixed-point meaning: a UE8M0 byte is the scale of these values itself
    byte_dtype = jnp.int8

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ValueError(f"a stretched INT(b) grid needs an integer 2 <= b <= 8, got {self.bits!r}")
        top = Fraction(self.top)
        if not (top > 0 and math.isfinite(self.top)) or float(np.float32(self.top)) != self.top:
            raise ValueError(f"top must be a positive float32 value, got {self.top!r}")
        q = self.qmax
        vals = [f32_nearest(Fraction(k) * top / q) for k in range(-q, q + 1)]
        object.__setattr__(self, "table", LUTElem(tuple(vals), self.name, tie_parity=q % 2))

    @property
    def qmax(self) -> int:
        """The largest code, 2^(b-1) - 1."""
        return 2 ** (self.bits - 1) - 1

    @property
    def step(self) -> float:
        """The grid step top / qmax (exact value, as a Python float)."""
        return self.top / self.qmax

    @property
    def max(self) -> float:
        return float(self.top)

    @property
    def min(self) -> float:
        return -float(self.top)

    @property
    def emax(self) -> int:
        return math.floor(math.log2(self.top))

    @property
    def min_subnormal(self) -> float:
        return self.table.values[self.qmax + 1]

    @property
    def dynamic_range(self) -> float:
        return float(self.qmax)

    @property
    def name(self) -> str:
        return f"int{self.bits}@{self.top:g}"

    @property
    def storage_dtype(self) -> DTypeLike:
        return jnp.int4 if self.bits <= 4 else jnp.int8

    def round(self, v: ArrayLike, uniform: jax.Array | None = None) -> jax.Array:
        """float32 `v` onto the stretched grid (nearest value, ties to even k; stochastic given `uniform`)."""
        return self.table.round(v, uniform)

    def code_bytes(self, values: jax.Array) -> jax.Array:
        return (self.table.index(values) - self.qmax).astype(jnp.int8)

    def encode(self, values: jax.Array) -> jax.Array:
        return (self.table.index(values) - self.qmax).astype(self.storage_dtype)

    def decode(self, codes: jax.Array) -> jax.Array:
        return self.table.decode(codes.astype(jnp.int32) + self.qmax)

    def codes_from_bytes(self, codes_bytes: jax.Array) -> jax.Array:
        return codes_bytes.astype(self.storage_dtype)


ElemType = FPElem | IntElem | LUTElem | ScaledIntElem


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


def stretched_int(bits: int, top: float) -> ScaledIntElem:
    """The symmetric INT(b) grid stretched so that its largest code is `top` (values fl32(k * top / qmax))."""
    return ScaledIntElem(bits, top)


def lut(values: Iterable[float], name: str = "lut") -> LUTElem:
    """A lookup-table element from a sorted sequence of at most 256 values (nearest value, ties to even index)."""
    return LUTElem(tuple(values), name)

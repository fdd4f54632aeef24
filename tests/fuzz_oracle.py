"""An independent numpy oracle of the numerics contract (docs/formats.md) for any FP(e,m) / INT(b) block format.

The format is described by plain data (`FuzzSpec`), never by lowbit_jax objects. Element rounding is gfloat's
(RNE, saturating) for FP(e,m) and round-half-even of the clipped value for INT(b). Scale exponents are decided
by their defining inequalities in exact float64 arithmetic (no bit tricks), the E4M3 / UE5M3 block scales are
gfloat roundings of the two correctly rounded quotients, and every float32 step is an IEEE operation computed in
float64 (exact for products and differences, innocuously double-rounded for quotients: 53 >= 2 * 24 + 2) and then
rounded the way XLA:CPU rounds: float32 subnormal operands read as zeros, and a result whose exact value lies
below 2^-126 becomes a zero of its sign (both measured with jax 0.10.2; the contract allows such values to
flush). bfloat16 scale arithmetic rounds each float32 step to bfloat16 (a finite amax or x beyond bfloat16's range
saturates at its maximum); its log2 is float64's, rounded to float32 then to bfloat16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np
from gfloat import Domain, FormatInfo, RoundMode, round_ndarray

F32_TINY = 2.0**-126
F32_MAX = float(np.finfo(np.float32).max)
BF16_MAX = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16)}


@dataclass(frozen=True)
class FuzzSpec:
    """A block format as data: element ("fp" with exp_bits/man_bits/special, or "int" with bits/int_range), block
    (int k, (rows, cols), "channel" or "tensor"), scale ("ue8m0", "e4m3", "ue5m3", "fp32"), UE8M0 rounding,
    scale_dtype ("float32" / "bfloat16") and tensor scale ("fp32", "ue8m0", "none"; None: the scale's default)."""

    kind: str
    exp_bits: int = 0
    man_bits: int = 0
    special: str | None = None
    bits: int = 0
    int_range: str = "symmetric"
    block: int | tuple[int, int] | str = 32
    scale: str = "ue8m0"
    rounding: str = "ceil"
    scale_dtype: str = "float32"
    tensor: str | None = None

    @property
    def spec(self) -> str:
        """The spec-grammar string of this format (docs/formats.md, 'The spec grammar')."""
        if self.kind == "fp":
            base = f"fp({self.exp_bits},{self.man_bits}" + (f",{self.special})" if self.special else ")")
        else:
            base = f"int({self.bits})"
        block = f"{self.block[0]}x{self.block[1]}" if isinstance(self.block, tuple) else str(self.block)
        parts = [base, f"block_size={block}", f"scale={self.scale}"]
        if self.scale == "ue8m0" and self.rounding != "ceil":
            parts.append(f"scale_rounding={self.rounding}")
        if self.scale_dtype != "float32":
            parts.append(f"scale_dtype={self.scale_dtype}")
        if self.kind == "int" and self.int_range != "symmetric":
            parts.append(f"int_range={self.int_range}")
        if self.tensor is not None:
            parts.append(f"tensor_scale={self.tensor}")
        return ":".join(parts)

    @property
    def fp_special(self) -> str:
        """The special-value convention: as given, else OCP/ml_dtypes' for the width (E4M3 'fn', other 8-bit
        elements with at least two exponent bits IEEE-like, narrower ones none)."""
        if self.special is not None:
            return self.special
        if 1 + self.exp_bits + self.man_bits < 8 or self.exp_bits < 2:
            return "none"
        return "fn" if (self.exp_bits, self.man_bits) == (4, 3) else "ieee"

    @property
    def zero_point(self) -> bool:
        return self.kind == "int" and self.int_range == "zero_point"

    @property
    def qmax(self) -> float:
        """The value a block's amax (zero point: span) maps to: the element's largest finite value."""
        if self.kind == "fp":
            return float(gfloat_elem(self.exp_bits, self.man_bits, self.fp_special).max)
        return float(2**self.bits - 1) if self.zero_point else float(2 ** (self.bits - 1) - 1)

    @property
    def code_range(self) -> tuple[float, float]:
        """(lowest, highest) element value of INT(b) (zero point: of the integer k, before the shift)."""
        top = 2 ** (self.bits - 1) - 1
        return (-top - 1.0 if self.int_range == "asymmetric" else -float(top)), float(top)

    @property
    def scale_shift(self) -> int:
        """log2 of OCP's factor between the stored UE8M0 byte and the element scale: b - 2 for (signed) MXINT."""
        return self.bits - 2 if self.kind == "int" and not self.zero_point else 0

    @property
    def even_bits(self) -> int:
        """Mantissa bits the 'even' rule rounds amax to: m for FP, b - 2 for INT (zero point included)."""
        return self.man_bits if self.kind == "fp" else self.bits - 2

    @property
    def tensor_kind(self) -> str:
        if self.tensor is not None:
            return self.tensor
        return "fp32" if self.scale == "e4m3" else "none"


DISTRIBUTIONS = ("normal", "t", "uniform", "grid")


def sample_values(rng: np.random.Generator, dist: str, shape) -> np.ndarray:
    """float64 values of one of DISTRIBUTIONS: normal, Student t(1.5), uniform(-1, 1), or "grid": multiples of 1/8
    in [-8, 8] (exact grid points and midpoints under power-of-two scales)."""
    if dist == "normal":
        return rng.normal(size=shape)
    if dist == "t":
        return rng.standard_t(1.5, size=shape)
    if dist == "uniform":
        return rng.uniform(-1, 1, size=shape)
    return rng.integers(-64, 65, size=shape) / 8.0


def gfloat_elem(e: int, m: int, special: str, signed: bool = True) -> FormatInfo:
    """gfloat's FP(e, m): bias 2^(e-1) - 1, subnormals, specials "none", "fn" (only S.1..1.1..1 NaN) or "ieee"."""
    return FormatInfo(
        f"e{e}m{m}_{special}",
        int(signed) + e + m,
        m + 1,
        bias=2 ** (e - 1) - 1,
        is_signed=signed,
        domain=Domain.Extended if special == "ieee" else Domain.Finite,
        has_nz=signed,
        num_high_nans={"none": 0, "fn": 1, "ieee": 2**m - 1}[special],
        has_subnormals=True,
        is_twos_complement=False,
    )


E4M3_FI = gfloat_elem(4, 3, "fn")
UE5M3_FI = gfloat_elem(5, 3, "none")  # the signed grid; scales are never negative


# --- float32 arithmetic as XLA:CPU performs it ------------------------------------------------------------------------


def daz(a) -> np.ndarray:
    """float32 operands as XLA:CPU reads them: subnormals are zeros of their sign."""
    a = np.asarray(a, np.float32)
    return np.where(np.abs(a) < F32_TINY, np.copysign(np.float32(0), a), a).astype(np.float32)


def ftz(exact) -> np.ndarray:
    """The float32 result of an operation whose float64 value is `exact`: RNE, Inf on overflow, a zero of its
    sign when the value lies below 2^-126."""
    exact = np.asarray(exact, np.float64)
    with np.errstate(over="ignore"):
        r = exact.astype(np.float32)
    return np.where(np.abs(exact) < F32_TINY, np.copysign(np.float32(0), exact).astype(np.float32), r)


def f64(a) -> np.ndarray:
    return daz(a).astype(np.float64)


def fmul(a, b) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return ftz(f64(a) * f64(b))


def fdiv(a, b) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return ftz(f64(a) / f64(b))


def fsub(a, b) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return ftz(f64(a) - f64(b))


def bf16(a) -> np.ndarray:
    """float32 rounded to the nearest bfloat16 (ties to even), as float32."""
    return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def bf16_sat(a) -> np.ndarray:
    """bf16, with finite values beyond bfloat16's range saturated at its maximum."""
    a = np.asarray(a, np.float32)
    r = bf16(a)
    return np.where(np.isinf(r) & np.isfinite(a), np.copysign(np.float32(BF16_MAX), a), r).astype(np.float32)


# --- scale exponents (exact, from the defining inequalities) ----------------------------------------------------------


def floor_log2(a: np.ndarray) -> np.ndarray:
    """floor(log2 a) of positive float64 values (exact, from frexp)."""
    return np.frexp(a)[1].astype(np.int64) - 1


def smallest_e(amax: np.ndarray, q: float) -> np.ndarray:
    """The smallest integer e with amax <= q * 2^e (amax > 0; float64 comparisons of exact values)."""
    e = floor_log2(amax) - int(floor_log2(np.float64(q))) - 1  # amax > q * 2^e here, and amax <= q * 2^(e + 2)
    for _ in range(2):
        e = e + (amax > np.ldexp(q, e))
    return e


def ue8m0_exponent(amax: np.ndarray, sp: FuzzSpec) -> np.ndarray:
    """The element-scale exponent e (scale 2^e) of finite block amaxes under sp.rounding, float32 arithmetic,
    clamped so that OCP's X = 2^(e + shift) lies in [2^-127, 2^127]; a zero block gets the bottom of the clamp."""
    a = np.asarray(amax, np.float64)
    pos = a > 0
    safe = np.where(pos, a, 1.0)
    q = sp.qmax
    fq = int(floor_log2(np.float64(q)))
    rule = sp.rounding
    if rule == "ceil":  # the smallest e with amax <= Qmax 2^e
        e = smallest_e(safe, q)
    elif rule == "floor":  # floor(log2 amax) - floor(log2 Qmax)
        e = floor_log2(safe) - fq
    elif rule == "round":  # the integer nearest log2(amax / Qmax): k or k + 1 as amax^2 < or > 2 (Qmax 2^k)^2
        k = smallest_e(safe, q)
        k = k - (safe < np.ldexp(q, k))
        e = k + (safe * safe > 2.0 * np.ldexp(q, k) ** 2)
    elif rule == "even":  # floor(log2(amax rounded to nearest-even with `even_bits` mantissa bits))
        mant, ex = np.frexp(safe)
        p = sp.even_bits + 1
        rounded = np.ldexp(np.round(np.ldexp(mant, p)), ex - p)
        e = floor_log2(rounded) - fq
    elif rule == "ceil_amax":  # ceil(log2 amax) - floor(log2 Qmax)
        e = smallest_e(safe, 1.0) - fq
    else:
        raise ValueError(rule)
    e = np.where(pos, e, -(10**6))
    return np.clip(e, -127 - sp.scale_shift, 127 - sp.scale_shift)


def ue8m0_exponent_bf16(amax: np.ndarray, sp: FuzzSpec) -> np.ndarray:
    """The bfloat16 arithmetic: s = bf16(amax) / bf16(Qmax) rounded to bf16, then ceil / floor / round(-half-
    even) of bf16(log2 s); s == 0 gives the bottom exponent; clamped as ue8m0_exponent."""
    s = bf16(fdiv(bf16_sat(amax), bf16(np.float32(sp.qmax))))
    with np.errstate(divide="ignore"):
        log2_s = bf16(np.log2(np.where(s > 0, s, 1.0).astype(np.float64)).astype(np.float32))
    op = {"ceil": np.ceil, "floor": np.floor, "round": np.round}[sp.rounding]
    e = np.where(s > 0, op(log2_s), -(10**6)).astype(np.int64)
    return np.clip(e, -127 - sp.scale_shift, 127 - sp.scale_shift)


def pow2_ceil_exponent(amax: float, q: float) -> int:
    """The smallest e with amax <= q 2^e, within float32's normal powers of two [-126, 127]."""
    return int(np.clip(smallest_e(np.asarray([amax], np.float64), q)[0], -126, 127))


# --- element rounding -------------------------------------------------------------------------------------------------


def round_elements(v: np.ndarray, sp: FuzzSpec, lo=None, hi=None) -> np.ndarray:
    """float32 element-domain values onto the grid: FP by gfloat (RNE, saturating, zeros keep v's sign); INT:
    round-half-even of v clipped to [lo, hi] (default the INT range), zeros +0."""
    v = np.asarray(v, np.float32)
    if sp.kind == "fp":
        fi = gfloat_elem(sp.exp_bits, sp.man_bits, sp.fp_special)
        a = np.minimum(np.abs(v.astype(np.float64)), sp.qmax)
        r = np.abs(round_ndarray(fi, a, RoundMode.TiesToEven, sat=True))
        if sp.man_bits == 0:
            # One significant bit: IEEE's "even last digit" does not decide a tie between 2^k and 2^(k+1) (gfloat
            # takes the even code). ml_dtypes' one-bit type (float8_e8m0fnu) rounds such ties up: so does this.
            k = floor_log2(np.where(a > 0, a, 1.0))
            tie = (a > 0) & (a == 1.5 * np.ldexp(1.0, k)) & (k >= 2 - 2 ** (sp.exp_bits - 1))
            r = np.where(tie, np.ldexp(1.0, k + 1), r)
        return np.copysign(r, v).astype(np.float32)
    if lo is None:
        lo, hi = sp.code_range
    c = np.clip(v.astype(np.float64), lo, hi)
    r = np.round(c)  # half to even
    return np.where(r == 0, 0.0, r).astype(np.float32)


def round_grid(v: np.ndarray, fi: FormatInfo) -> np.ndarray:
    """Non-negative float32 values onto a scale grid (RNE, saturating at its max); NaN kept."""
    v = np.asarray(v, np.float64)
    r = round_ndarray(fi, np.minimum(np.where(np.isnan(v), 0.0, v), fi.max), RoundMode.TiesToEven, sat=True)
    return np.where(np.isnan(v), np.nan, np.abs(r)).astype(np.float32)


# --- block layout -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """x cut into blocks: `rows` (blocks, elements per block) float32, and how to put rows and scales back."""

    rows: np.ndarray
    shape: tuple[int, ...]
    axes: tuple[int, ...]
    block: tuple[int, ...]
    per_tensor: bool

    @property
    def moved_shape(self) -> tuple[int, ...]:
        rest = [n for d, n in enumerate(self.shape) if d not in self.axes]
        return tuple(rest + [self.shape[a] for a in self.axes])

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(-(-self.shape[a] // b) for a, b in zip(self.axes, self.block))

    def to_x(self, per_elem: np.ndarray) -> np.ndarray:
        """(blocks, elements per block) values -> x's shape (padding cropped)."""
        if self.per_tensor:
            return per_elem.reshape(self.shape)
        rest = self.moved_shape[: len(self.shape) - len(self.axes)]
        k = len(self.axes)
        t = per_elem.reshape(rest + self.counts + self.block)
        n = len(rest)
        order = list(range(n)) + [j for i in range(k) for j in (n + i, n + k + i)]
        t = t.transpose(order).reshape(rest + tuple(c * b for c, b in zip(self.counts, self.block)))
        t = t[tuple(slice(0, m) for m in self.moved_shape)]
        return np.moveaxis(t, range(n, n + k), self.axes)

    def scales_to_rows(self, scales: np.ndarray) -> np.ndarray:
        """Stored scales (x's layout) -> one value per row, (blocks, 1): the inverse of to_scales."""
        if self.per_tensor:
            return scales.reshape(1, 1)
        n = len(self.shape) - len(self.axes)
        return np.moveaxis(scales, self.axes, range(n, n + len(self.axes))).reshape(-1, 1)

    def to_scales(self, per_row: np.ndarray) -> np.ndarray:
        """One value per block -> the stored scales' shape (x's shape, each blocked axis holding its count)."""
        if self.per_tensor:
            return per_row.reshape(())
        rest = self.moved_shape[: len(self.shape) - len(self.axes)]
        t = per_row.reshape(rest + self.counts)
        return np.moveaxis(t, range(len(rest), len(rest) + len(self.axes)), self.axes)


def cut_rows(x32: np.ndarray, block, axis) -> Rows:
    """x (float32) as zero-padded blocks of `block` along `axis` (an int, or two axes for an (r, c) tile: r along
    the first axis given, c along the second; a side longer than its axis is cut to the axis, which changes no
    value); "channel": the whole axis; "tensor": all of x."""
    shape = x32.shape
    if block == "tensor":
        return Rows(x32.reshape(1, -1), shape, (), (x32.size,), True)
    axes = tuple(a % x32.ndim for a in ((axis,) if isinstance(axis, int) else axis))
    sizes = (shape[axes[0]],) if block == "channel" else ((block,) if isinstance(block, int) else tuple(block))
    sizes = tuple(min(b, max(1, shape[a])) for a, b in zip(axes, sizes))  # a block longer than its axis: the axis
    moved = np.moveaxis(x32, axes, range(x32.ndim - len(axes), x32.ndim))
    n = moved.ndim - len(axes)
    pad = [(0, 0)] * n + [(0, -shape[a] % b) for a, b in zip(axes, sizes)]
    moved = np.pad(moved, pad)
    counts = tuple(-(-shape[a] // b) for a, b in zip(axes, sizes))
    split = moved.reshape(moved.shape[:n] + tuple(v for cb in zip(counts, sizes) for v in cb))
    k = len(axes)
    order = list(range(n)) + [n + 2 * i for i in range(k)] + [n + 2 * i + 1 for i in range(k)]
    rows = split.transpose(order).reshape(-1, math.prod(sizes))
    return Rows(rows, shape, axes, sizes, False)


# --- the contract -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """What quantize / fake_quant must return: y (x's dtype), the stored scales as float32 values (UE8M0: the
    uint8 bytes), the tensor scale g (float32 or None), zero points and element code values (float32, x's shape,
    zero points added)."""

    y: np.ndarray
    scales: np.ndarray
    tensor: np.float32 | None
    zero_points: np.ndarray | None
    codes: np.ndarray


def block_scale_values(amax: np.ndarray, sp: FuzzSpec, finite: np.ndarray):
    """(divisor d per block, stored scale per block, tensor scale g or None) of a float-scaled format; d is the
    float32 value x is divided by and the elements are multiplied by."""
    q32 = np.float32(sp.qmax)
    if sp.scale == "fp32":
        if sp.scale_dtype == "bfloat16":
            s = bf16(fdiv(bf16_sat(amax), bf16(q32)))
        else:
            s = fdiv(amax, q32)
        s = np.where(daz(amax) > 0, np.maximum(s, np.float32(F32_TINY)), s).astype(np.float32)
        return s, np.where(finite, s, np.nan).astype(np.float32), None
    fi = E4M3_FI if sp.scale == "e4m3" else UE5M3_FI
    g = None
    s = fdiv(amax, q32)
    if sp.tensor_kind != "none":
        amax_t = np.float32(np.max(np.where(finite, daz(amax), 0.0), initial=0.0))
        total = np.float32(sp.qmax * fi.max)  # exact: few significant bits
        if amax_t == 0:
            g = np.float32(1.0)
        elif sp.tensor_kind == "fp32":
            g = np.float32(max(fdiv(amax_t, total)[()], np.float32(F32_TINY)))
        else:
            g = np.float32(2.0 ** pow2_ceil_exponent(float(amax_t), float(total)))
        s = fdiv(np.maximum(s, 0.0), g)
    s = np.where(finite, round_grid(s, fi), np.nan).astype(np.float32)
    d = s if g is None else fmul(s, g)
    return d, s, g


def divide(x: np.ndarray, sp: FuzzSpec, e=None, d=None, s=None, g=None) -> np.ndarray:
    """x (float32, rows) over the block scale 2^e or d (float32, 0 where d is not positive: a zero of x's sign);
    bfloat16 scale arithmetic rounds x first (and, for float scales, the quotient). A two-level divisor d = s g
    that overflows to Inf divides by g, then by s (each step rounded)."""
    if sp.scale_dtype == "bfloat16":
        x = bf16_sat(x)
    if e is not None:
        return ftz(f64(x) * np.ldexp(1.0, -e))
    v = np.where(d > 0, fdiv(x, np.where(d > 0, d, 1.0)), np.copysign(np.float32(0), x)).astype(np.float32)
    if g is not None:
        v = np.where(np.isinf(d), fdiv(fdiv(x, g), s), v).astype(np.float32)
    return bf16(v) if sp.scale_dtype == "bfloat16" else v


def multiply(q: np.ndarray, d: np.ndarray, s=None, g=None) -> np.ndarray:
    """Element values q times the divisor d (float32); an overflowing two-level d = s g multiplies by s, then g."""
    y = fmul(q, d)
    return y if g is None else np.where(np.isinf(d), fmul(fmul(q, s), g), y).astype(np.float32)


def expected(x: np.ndarray, sp: FuzzSpec, axis) -> Expected:
    """The contract's quantize / fake_quant of x (float32, bfloat16 or float16) along `axis`.

    float32 subnormal inputs: arithmetic reads them as zeros (fmul, fdiv, ... apply `daz`), and so does a maximum
    over several elements. Steps on bits see them as they are: bfloat16 rounding (a subnormal can round up to
    2^-126), which may also meet the amax of a one-element block (no maximum is taken there). The float32 UE8M0
    rule reads a subnormal amax as zero: exponents come from the bits of a flushed value.
    """
    dtype = x.dtype
    lay = cut_rows(x.astype(np.float32), sp.block, axis)
    finite = np.isfinite(lay.rows).all(axis=1, keepdims=True)
    xr = np.where(finite, lay.rows, np.float32(0))  # non-finite blocks: NaN outputs, computed on zeros
    single = lay.rows.shape[1] == 1
    if sp.zero_point:
        lo = np.minimum(daz(xr).min(axis=1, keepdims=True), np.float32(0))
        hi = np.maximum(daz(xr).max(axis=1, keepdims=True), np.float32(0))
        stat = np.minimum(fsub(hi, lo), np.float32(F32_MAX))  # a span beyond float32 saturates
    else:
        stat = np.abs(xr if single else daz(xr)).max(axis=1, keepdims=True)
    tensor = None
    if sp.scale == "ue8m0":
        e = ue8m0_exponent_bf16(stat, sp) if sp.scale_dtype == "bfloat16" else ue8m0_exponent(daz(stat), sp)
        stored = np.where(finite, e + sp.scale_shift + 127, 255).astype(np.float32)
        scale_args = {"e": e}
    else:
        d, stored, tensor = block_scale_values(stat, sp, finite)
        d = np.where(finite, d, np.float32(0))
        scale_args = {"d": d, "s": np.where(finite, stored, np.float32(0)), "g": tensor}
    z = None
    if sp.zero_point:
        z = round_elements(divide(-lo, sp, **scale_args), sp, lo=0.0, hi=sp.qmax)
        q = round_elements(divide(xr, sp, **scale_args), sp, lo=-z, hi=sp.qmax - z)
    else:
        q = round_elements(divide(xr, sp, **scale_args), sp)
    if "e" in scale_args:
        y = ftz(q.astype(np.float64) * np.ldexp(1.0, e))
    else:
        y = multiply(q, **scale_args)
    y = np.where(finite, y, np.nan).astype(np.float32)
    big = np.float32(float(ml_dtypes.finfo(dtype).max))
    y = np.clip(y, -big, big).astype(dtype)
    codes = np.where(finite, q if z is None else q + z, np.float32(0)).astype(np.float32)
    zero = None if z is None else lay.to_scales(np.where(finite, z, 0).astype(np.float32))
    return Expected(
        y=lay.to_x(y),
        scales=lay.to_scales(stored),
        tensor=tensor,
        zero_points=zero,
        codes=lay.to_x(codes),
    )


def decode_fp_bytes(codes_u8: np.ndarray, e: int, m: int) -> np.ndarray:
    """uint8 bit patterns sign | e exponent bits | m mantissa bits -> float32 values (specials not decoded)."""
    c = codes_u8.astype(np.int64)
    bias = 2 ** (e - 1) - 1
    fld, man = (c >> m) & ((1 << e) - 1), c & ((1 << m) - 1)
    mag = np.where(fld > 0, np.ldexp(1.0 + man / 2.0**m, fld - bias), np.ldexp(man / 2.0**m, 1 - bias))
    return np.where((c >> (e + m)) & 1 == 1, -mag, mag).astype(np.float32)

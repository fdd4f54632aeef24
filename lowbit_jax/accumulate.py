"""Emulated hardware accumulators for GEMMs: float32 chunk sums of `block` products, accumulated in a narrow format.

A GEMM on a tensor core adds its products in a wide inner accumulator for a short run of K and hands the partial
sum to an accumulator register, which may be narrower than float32. `accumulated_dot` computes, for every output,

    s_c = float32 dot of the c-th chunk of `block` consecutive products (the last chunk may be shorter)
    acc = round(s_0);  acc = round(acc + s_c) for c = 1, 2, ... (left to right)

where `round` is round-to-nearest-even onto the accumulator format and `acc + s_c` is the exact sum, rounded once.

Chunk sums. s_c is lax.dot_general of the chunk at `precision` (HIGHEST by default): XLA's summation order inside
a chunk is unspecified, so s_c is a float32-rounded sum, as a tensor core's float32 inner accumulation is. It is
the exact sum whenever every product a_i b_i is exact in float32 and all are integer multiples of one 2^q >=
2^-126 with sum_i |a_i b_i| <= 2^(24 + q): every partial sum, in any order, is then a multiple of 2^q below 2^24
of them, which float32 holds. Low-bit grid values meet this: products of MXINT8 elements sharing a scale block
(|n| <= 127^2, so chunks up to 1040 products) or of FP4 (E2M1) elements (multiples of 1/4 up to 36).

Accumulator formats, all IEEE-like with subnormals, ties to even and overflow to +-Inf (as IEEE adders do; the
library's element grids saturate instead, but an accumulator that overflows is a fault the emulation should show):
"float32", "bfloat16", "float16", and "fp(e,m)": e exponent bits (bias 2^(e-1) - 1, the top binade for Inf and
NaN), m mantissa bits, largest finite value (2 - 2^-m) 2^(2^(e-1) - 1); 2 <= e <= 8 and 0 <= m <= 21. fp(8,7) is
bfloat16 and fp(5,10) is float16. As everywhere in XLA, float32 subnormals flush to zero (so do the subnormals of
bfloat16 and of fp(8, m)); float16's subnormals are normal float32 values and are kept.

One rounding per add. s_c has 24 significant bits, so rounding the float32 sum fl(acc + s_c) to the format would
be a double rounding, and wrong even for bfloat16: 1 + (2^-8 + 2^-30) rounds to 1 + 2^-8 in float32, a bfloat16
tie that goes to 1, while the exact sum rounds up to 1 + 2^-7 (the 2p + 2 rule covers operands already in the
narrow format, not float32 ones). So the sum is first rounded to odd: TwoSum gives its exact error, and an inexact
float32 sum whose last bit is even moves one ulp toward the exact value. Rounding a round-to-odd value of q bits
to p <= q - 2 bits gives the correctly rounded exact value (Boldo and Melquiond, "Emulation of FMA and correctly
rounded sums: proved algorithms using rounding to odd", IEEE Trans. Computers 57(4), 2008); q = 24 allows p <= 22,
i.e. m <= 21. Narrow roundings use rounding.round_to_dtype (XLA:GPU would drop a cast pair) or, for fp(e,m), an
RNE on the float32 exponent bits.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax

from lowbit_jax import rounding
from lowbit_jax._types import ArrayLike, Precision

NAMED_FORMATS = {"float32": (8, 23), "bfloat16": (8, 7), "float16": (5, 10)}  # (exponent bits, mantissa bits)
MAX_MAN_BITS = 21  # round-to-odd float32 sums (24 bits) round correctly to p = m + 1 <= 22 bits
_CUSTOM = re.compile(r"fp\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_GROUP_ELEMENTS = 1 << 21  # chunk sums held at once: groups of chunks per scan step cover at most this many outputs


def _parse_format(fmt: object) -> tuple[str, int, int]:
    """(canonical name, exponent bits, mantissa bits) of an accumulator format string; ValueError/TypeError."""
    if not isinstance(fmt, str):
        raise TypeError(f"AccumSpec.format must be a string such as 'bfloat16' or 'fp(5,10)', got {fmt!r}")
    if fmt in NAMED_FORMATS:
        return (fmt, *NAMED_FORMATS[fmt])
    match = _CUSTOM.fullmatch(fmt.strip())
    if match is None:
        raise ValueError(f"AccumSpec.format must be one of {list(NAMED_FORMATS)} or 'fp(e,m)', got {fmt!r}")
    e, m = int(match[1]), int(match[2])
    if not 2 <= e <= 8:
        raise ValueError(f"AccumSpec.format {fmt!r}: fp(e,m) needs 2 <= e <= 8 exponent bits (float32's range)")
    if m > MAX_MAN_BITS:
        raise ValueError(
            f"AccumSpec.format {fmt!r}: fp(e,m) needs m <= {MAX_MAN_BITS} mantissa bits (a float32 sum rounded to "
            f"odd rounds correctly only to 2 bits fewer than its 24); use 'float32' for m = 23"
        )
    return f"fp({e},{m})", e, m


@dataclass(frozen=True)
class AccumSpec:
    """An emulated accumulator: chunks of `block` products summed in float32, chunk sums added in `format`
    ("float32", "bfloat16", "float16" or "fp(e,m)"; RNE, IEEE overflow to Inf), each add rounded once."""

    block: int
    format: str = "float32"

    def __post_init__(self) -> None:
        if not isinstance(self.block, int) or isinstance(self.block, bool):
            raise TypeError(f"AccumSpec.block must be an int (products per float32 chunk), got {self.block!r}")
        if self.block < 1:
            raise ValueError(f"AccumSpec.block must be >= 1, got {self.block}")
        object.__setattr__(self, "format", _parse_format(self.format)[0])

    @property
    def exp_bits(self) -> int:
        return _parse_format(self.format)[1]

    @property
    def man_bits(self) -> int:
        return _parse_format(self.format)[2]

    @property
    def max(self) -> float:
        """Largest finite accumulator value, (2 - 2^-m) 2^(2^(e-1) - 1)."""
        return (2.0 - 2.0**-self.man_bits) * 2.0 ** (2 ** (self.exp_bits - 1) - 1)

    def round(self, x_f32: ArrayLike) -> jax.Array:
        """float32 `x` rounded to the nearest accumulator value (ties to even, overflow to +-Inf), as float32."""
        x = jnp.asarray(x_f32, jnp.float32)
        if self.format in NAMED_FORMATS:
            return rounding.round_to_dtype(x, self.format)
        return _round_fp_ieee(x, self.exp_bits, self.man_bits, self.max)

    def add(self, acc: ArrayLike, s: ArrayLike) -> jax.Array:
        """The exact float32 sum acc + s rounded once to the accumulator format (RNE, overflow to Inf)."""
        acc, s = jnp.asarray(acc, jnp.float32), jnp.asarray(s, jnp.float32)
        if self.format == "float32":
            return acc + s
        return self.round(_sum_round_to_odd(acc, s))


def _round_fp_ieee(x: jax.Array, e: int, m: int, max_finite: float) -> jax.Array:
    """RNE of float32 `x` onto fp(e, m) with subnormals, beyond the largest finite value to +-Inf, NaN kept."""
    a = jnp.abs(x)
    emin = 2 - 2 ** (e - 1)
    step_exp = jnp.maximum(rounding.f32_exponent(a), emin) - m  # subnormals share the smallest normal's step
    q = rounding.mul_pow2(jnp.round(rounding.mul_pow2(a, -step_exp)), step_exp)  # exact scalings; RNE integer
    q = jnp.where(q > max_finite, jnp.inf, q)  # ties at the top go to 2^(emax+1), even, i.e. Inf
    return jnp.where(jnp.isfinite(x), rounding.with_sign_of(q, x), x)


def _sum_round_to_odd(x: jax.Array, y: jax.Array) -> jax.Array:
    """x + y in float32 rounded to odd: the RNE sum, moved one ulp toward the exact sum (TwoSum's error term)
    when it is inexact and its last bit is even."""
    t = x + y
    y_part = t - x
    err = (x - (t - y_part)) + (y - y_part)  # Knuth's TwoSum: x + y = t + err exactly (no FTZ, no overflow)
    bits = rounding.f32_bits(t)
    inexact_even = (err != 0) & (t != 0) & jnp.isfinite(t) & ((bits & 1) == 0)
    away_from_zero = (err > 0) == (t > 0)
    odd = jnp.where(away_from_zero, bits + jnp.uint32(1), bits - jnp.uint32(1))
    return jnp.where(inexact_even, lax.bitcast_convert_type(odd, jnp.float32), t)


def _check_operands(a: ArrayLike, b: ArrayLike, n_batch: object) -> tuple[jax.Array, jax.Array, int]:
    """a, b as float32 after checking dtypes (floats of at most 32 bits) and canonical shapes."""
    if not isinstance(n_batch, int) or isinstance(n_batch, bool) or n_batch < 0:
        raise ValueError(f"accumulated_dot: n_batch must be an int >= 0, got {n_batch!r}")
    for name, x in (("a", a), ("b", b)):
        dt = getattr(x, "dtype", None)
        if dt is None or not jnp.issubdtype(dt, jnp.floating) or jnp.finfo(dt).bits > 32:
            raise TypeError(f"accumulated_dot: {name} must be a float32 (or narrower float) array, got dtype {dt}")
        if jnp.ndim(x) < n_batch + 1:
            raise ValueError(f"accumulated_dot: {name} has shape {jnp.shape(x)}, needs {n_batch} batch dims and K")
    sa, sb = jnp.shape(a), jnp.shape(b)
    if sa[:n_batch] != sb[:n_batch] or sa[-1] != sb[-1]:
        raise ValueError(
            f"accumulated_dot: a {sa} and b {sb} must share the {n_batch} leading batch dims and the last (K) dim"
        )
    return jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), n_batch


def _chunk_sums(a: jax.Array, b: jax.Array, n_batch: int, precision: Precision) -> jax.Array:
    """a [G, B.., Fa.., k] . b [G, B.., Fb.., k] -> float32 chunk sums [G, B.., Fa.., Fb..], behind a barrier so
    that no backend fuses the following add into the dot's accumulator."""
    batch = tuple(range(n_batch + 1))
    dims = (((a.ndim - 1,), (b.ndim - 1,)), (batch, batch))
    s = lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)
    return lax.optimization_barrier(s)


def _chunks(x: jax.Array, start: int, stop: int, length: int) -> jax.Array:
    """x[..., start:stop] cut into chunks of `length` along the last axis, stacked first: [n, .., length]."""
    part = x[..., start:stop]
    return jnp.moveaxis(part.reshape(x.shape[:-1] + ((stop - start) // length, length)), -2, 0)


def _add_group(acc, a_g, b_g, n_batch: int, spec: AccumSpec, precision: Precision):
    """acc with the chunk sums of one group [G, ..] added one after another."""
    sums = _chunk_sums(a_g, b_g, n_batch, precision)
    return lax.scan(lambda c, s: (spec.add(c, s), None), acc, sums)[0]


def accumulated_dot(
    a: ArrayLike, b: ArrayLike, n_batch: int, spec: AccumSpec, precision: Precision = lax.Precision.HIGHEST
) -> jax.Array:
    """a [B.., Fa.., K] . b [B.., Fb.., K] -> float32 [B.., Fa.., Fb..] (n_batch shared leading dims) through the
    accumulator `spec`: float32 dots of K-chunks of spec.block products (the last may be shorter), added left to
    right in spec.format, each add the exact sum rounded once (module docstring). jit-able (spec, n_batch and
    precision static) and vmap-able; a scan over groups of chunks keeps memory O(output) per step."""
    if not isinstance(spec, AccumSpec):
        raise TypeError(f"accumulated_dot: spec must be an AccumSpec, got {type(spec).__name__}")
    a, b, n_batch = _check_operands(a, b, n_batch)
    out_shape = a.shape[:-1] + b.shape[n_batch:-1]
    k_len = a.shape[-1]
    if k_len == 0:
        return jnp.zeros(out_shape, jnp.float32)
    n_full, tail = divmod(k_len, spec.block)
    group = max(1, min(n_full, _GROUP_ELEMENTS // max(1, math.prod(out_shape))))
    n_groups = n_full // group
    acc = jnp.full(out_shape, -0.0, jnp.float32)  # -0 + s == s for every s: the first add is round(s_0)
    add = lambda acc, a_g, b_g: _add_group(acc, a_g, b_g, n_batch, spec, precision)
    k, done = spec.block, n_groups * group  # chunks [0, done) in scan steps, [done, n_full) and the tail after
    if n_groups:
        split = lambda x: _chunks(x, 0, done * k, k).reshape((n_groups, group) + x.shape[:-1] + (k,))
        acc = lax.scan(lambda c, ab: (add(c, *ab), None), acc, (split(a), split(b)))[0]
    if done < n_full:
        acc = add(acc, _chunks(a, done * k, n_full * k, k), _chunks(b, done * k, n_full * k, k))
    if tail:
        acc = add(acc, _chunks(a, n_full * k, k_len, tail), _chunks(b, n_full * k, k_len, tail))
    return acc


__all__ = ["MAX_MAN_BITS", "NAMED_FORMATS", "AccumSpec", "accumulated_dot"]

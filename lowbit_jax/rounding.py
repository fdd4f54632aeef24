"""Exact float32 building blocks and rounding onto an element grid (RNE or stochastic, saturating).

XLA facts this module is written around (DESIGN.md section 4): exponents must come from bits, `jnp.exp2` is not
exact, float32 subnormals flush to zero, and `x / broadcast(d)` is rewritten into `x * broadcast(1 / d)`.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from lowbit_jax.formats import ElemType, FPElem, IntElem

_MANTISSA_MASK = (1 << 23) - 1


def f32_bits(x_f32: jnp.ndarray) -> jnp.ndarray:
    """The uint32 bit pattern of a float32 array."""
    return lax.bitcast_convert_type(x_f32.astype(jnp.float32), jnp.uint32)


def f32_exponent(x_f32: jnp.ndarray) -> jnp.ndarray:
    """Unbiased binary exponent floor(log2|x|) from the bits, int32; -127 for zero (and flushed subnormals)."""
    return ((f32_bits(x_f32) >> 23) & 0xFF).astype(jnp.int32) - 127


def f32_mantissa(x_f32: jnp.ndarray) -> jnp.ndarray:
    """The 23 stored mantissa bits of |x| as int32."""
    return (f32_bits(x_f32) & _MANTISSA_MASK).astype(jnp.int32)


def pow2(k: jnp.ndarray) -> jnp.ndarray:
    """Exact 2^k as float32 for integer k in [-126, 127], built from bits."""
    biased = (jnp.asarray(k, jnp.int32) + 127).astype(jnp.uint32) << 23
    return lax.bitcast_convert_type(biased, jnp.float32)


def mul_pow2(x: jnp.ndarray, k: jnp.ndarray) -> jnp.ndarray:
    """x * 2^k for integer k in [-252, 254], as two exact power-of-two factors (2^-127 alone is subnormal)."""
    k = jnp.asarray(k, jnp.int32)
    half = k // 2
    return x * pow2(half) * pow2(k - half)


def div_exact(num: jnp.ndarray, den: jnp.ndarray) -> jnp.ndarray:
    """Correctly rounded num / den for den >= 0 (or NaN).

    XLA rewrites a division by a broadcast into a multiplication by the broadcast reciprocal, which is off by
    one ulp for about a quarter of the elements. Folding a per-element term into the divisor (max with
    0 * |num|, which IEEE forbids simplifying away) keeps a true division at no measurable cost.
    """
    return num / jnp.maximum(den, jnp.abs(num) * 0.0)


def round_bf16(x_f32: jnp.ndarray) -> jnp.ndarray:
    """Round float32 to the nearest bfloat16 (ties to even), kept as float32.

    bf16 arithmetic is emulated as float32 arithmetic followed by this explicit rounding: under jit XLA may drop
    the rounding of bf16 intermediates (excess precision), e.g. `(a.astype(bf16) / b).astype(f32)` comes out as
    the unrounded float32 quotient. One float32 operation rounded once to bf16 is the correctly rounded bf16
    result (24 >= 2 * 8 + 2 bits, so the double rounding is innocuous).
    """
    return lax.reduce_precision(x_f32.astype(jnp.float32), exponent_bits=8, mantissa_bits=7)


def _round_integral(y: jnp.ndarray, uniform: jnp.ndarray | None) -> jnp.ndarray:
    """Round y >= 0 to an integer: half to even, or up with probability frac(y) when `uniform` is given."""
    if uniform is None:
        return jnp.round(y)
    lo = jnp.floor(y)
    return lo + (uniform < y - lo).astype(y.dtype)


def uniform_from_bits(rbits_u32: jnp.ndarray) -> jnp.ndarray:
    """Uniform float32 in [0, 1) on the 2^-24 grid from uint32 random bits (exactly representable)."""
    return (rbits_u32 >> 8).astype(jnp.float32) * (2.0**-24)


def round_fp(v: jnp.ndarray, elem: FPElem, uniform: jnp.ndarray | None = None) -> jnp.ndarray:
    """Round float32 `v` to FP(e, m): RNE (or stochastic) with subnormals, saturating to +-max, NaN kept."""
    a = jnp.minimum(jnp.abs(v), elem.max)
    binade = jnp.maximum(f32_exponent(a), elem.emin)  # subnormals share the smallest normal's step
    step_exp = binade - elem.man_bits
    q = _round_integral(a * pow2(-step_exp), uniform) * pow2(step_exp)
    return jnp.copysign(jnp.minimum(q, elem.max), v)


def round_int(v: jnp.ndarray, elem: IntElem, uniform: jnp.ndarray | None = None) -> jnp.ndarray:
    """Round float32 `v` to INT(b) codes (as float32): RNE (or stochastic), clipped to [min, max]."""
    c = jnp.clip(v, elem.min, elem.max)
    a = _round_integral(jnp.abs(c), uniform)
    return jnp.where(a == 0, 0.0, jnp.copysign(a, c))  # integer codes have no -0: keep fake_quant == dequantize


def round_elem(v: jnp.ndarray, elem: ElemType, uniform: jnp.ndarray | None = None) -> jnp.ndarray:
    """Round float32 `v` onto the element grid (float32 result); `uniform` in [0, 1) selects stochastic rounding."""
    if isinstance(elem, FPElem):
        return round_fp(v, elem, uniform)
    return round_int(v, elem, uniform)


# --- codes: element values <-> storage ------------------------------------------------------------------------


def encode(values: jnp.ndarray, elem: ElemType) -> jnp.ndarray:
    """Element values (float32, on the grid) -> codes in `elem.storage_dtype` (uint8 bit patterns for FP6 etc.)."""
    dtype = elem.storage_dtype
    if isinstance(elem, IntElem) or dtype != jnp.uint8:
        return values.astype(dtype)
    e, m = elem.exp_bits, elem.man_bits
    a = jnp.abs(values)
    normal = a >= elem.min_normal
    exp = jnp.maximum(f32_exponent(a), elem.emin)
    field = jnp.where(normal, exp + elem.bias, 0)
    man = jnp.round(a * pow2(elem.man_bits - exp)).astype(jnp.int32) - jnp.where(normal, 1 << m, 0)
    sign = jnp.signbit(values).astype(jnp.int32)
    return ((sign << (e + m)) | (field << m) | man).astype(jnp.uint8)


def decode(codes: jnp.ndarray, elem: ElemType) -> jnp.ndarray:
    """Codes -> element values as float32 (exact)."""
    if isinstance(elem, IntElem) or codes.dtype != jnp.uint8:
        return codes.astype(jnp.float32)
    e, m = elem.exp_bits, elem.man_bits
    c = codes.astype(jnp.int32)
    field = (c >> m) & ((1 << e) - 1)
    man = c & ((1 << m) - 1)
    normal = field > 0
    sig = (man + jnp.where(normal, 1 << m, 0)).astype(jnp.float32)
    mag = sig * pow2(jnp.where(normal, field, 1) - elem.bias - m)
    return jnp.where((c >> (e + m)) & 1 == 1, -mag, mag)

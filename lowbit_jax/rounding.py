"""Exact float32 building blocks and rounding onto an element grid (RNE or stochastic, saturating).

XLA facts this module is written around: exponents must come from bits, `jnp.exp2` is not
exact, float32 subnormals flush to zero, `x / broadcast(d)` is rewritten into `x * broadcast(1 / d)` (CPU), and
float32 division on NVIDIA GPUs is PTX `div.full.f32`, up to 2 ulp off (openxla/xla#37181; seen on an H100).

Stochastic rounding (every element grid: FP, INT, lookup tables) rounds a magnitude up, away from zero, iff
`uniform < frac`, frac being its position between the two neighbouring grid values (0 <= frac < 1; exact for FP
and INT grids, a correctly rounded quotient for lookup tables). The uniforms come from uint32 random bits
(`uniform_from_bits`): the top 24 bits k give u = k / 2^24, so P(up) = ceil(frac 2^24) / 2^24. On FP and INT
grids that is frac for every element at least half a step from zero (its fraction has no bits below 2^-24), and
at most 2^-24 above frac for the elements closer to zero.

Limited random bits (`sr_bits=n`, 1 <= n <= 24): hardware stochastic rounding adds n random bits to the bits
that the conversion discards and keeps the carry (NVIDIA's cvt.rs; its FP4 form takes 8 bits per element from
its rbits operand). Transformer Engine's software stand-in for GPUs without cvt.rs (common/util/ptx.cuh,
`stochastic_round_fp4_e2m1`) does the same on values: with r an 8-bit integer it rounds |x| + (r / 256) step
down to the grid, i.e. up iff frac + r / 256 >= 1 (up to the one rounding of its fma). Either way rounding up
happens for floor(frac 2^n) of the 2^n values of the random bits: P(up) = floor(frac 2^n) / 2^n, a bias toward
zero of less than 2^-n of a step.

`limit_sr_bits` gets this rule from the same comparison: it keeps the top n of the 24 uniform bits (k) and sets
the 24 - n below them to ones, u = (k + 1) / 2^n - 2^-24; then u < frac iff k < floor(frac24 2^n), with
frac24 = ceil(frac 2^24) / 2^24 the fraction as the 24-bit default resolves it. So P(up) = floor(frac24 2^n) / 2^n,
which is floor(frac 2^n) / 2^n wherever frac lies on the 2^-24 grid (elements at least half a step from zero),
and n = 24 leaves the bits, hence every result, as they are by default. Being a transformation of the random
bits, it reaches every path that rounds from them (adaptive formats, the Pallas kernels) unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax.numpy as jnp
import numpy as np
from jax import lax

_MANTISSA_MASK = (1 << 23) - 1
F32_MIN_NORMAL = 2.0**-126
F32_MAX = float(jnp.finfo(jnp.float32).max)
_MIN_NORMAL_BITS, _MAX_FINITE_BITS = 0x00800000, 0x7F7FFFFF


def f32_bits(x_f32: jnp.ndarray) -> jnp.ndarray:
    """The uint32 bit pattern of a float32 array."""
    return lax.bitcast_convert_type(x_f32.astype(jnp.float32), jnp.uint32)


def with_sign_of(mag_f32: jnp.ndarray, sign_f32: jnp.ndarray) -> jnp.ndarray:
    """`mag_f32` (sign bit clear) with the sign bit of `sign_f32`, set on bits: jnp.copysign goes through neg,
    which Pallas Triton lowers as 0 - x, losing the sign of zero."""
    sign = f32_bits(sign_f32) & jnp.uint32(0x80000000)
    return lax.bitcast_convert_type(f32_bits(mag_f32) | sign, jnp.float32)


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
    half = k >> 1  # floor(k / 2): an arithmetic shift, where // also emits the sign corrections of a division
    return x * pow2(half) * pow2(k - half)


_KERNEL_DIVISION = contextvars.ContextVar("lowbit_jax_kernel_division", default=False)


@contextlib.contextmanager
def kernel_division():
    """While tracing a Triton kernel body: `div_exact` emits a plain float32 division, which the Triton rule of
    `kernels.substitute` makes exact (PTX div.rn.f32). Not for interpret mode: XLA evaluates that body."""
    token = _KERNEL_DIVISION.set(True)
    try:
        yield
    finally:
        _KERNEL_DIVISION.reset(token)


def _significand_exponent(bits_u32):
    """(24-bit significand with the hidden bit, biased exponent) of positive normal float32 bit patterns."""
    return (bits_u32 & _MANTISSA_MASK) | (1 << 23), (bits_u32 >> 23).astype(jnp.int32)


def _mul_25x24(m, b):
    """The exact product m * b (m < 2^25, b < 2^24, uint32) as a (hi, lo) pair of uint32 words."""
    mh, ml, bh, bl = m >> 16, m & 0xFFFF, b >> 16, b & 0xFFFF
    low = ml * bl  # < 2^32
    cross = mh * bl + ml * bh  # < 2^26
    lo = low + ((cross & 0xFFFF) << 16)
    return mh * bh + (cross >> 16) + (lo < low).astype(jnp.uint32), lo


def _round_quotient(a, b, q0):
    """The correctly rounded float32 a / b for positive normal a, b, from q0 within 2 ulp of it.

    The answer is among the five floats q0 - 2 ulp ... q0 + 2 ulp; it is the lowest plus the number of the four
    midpoints between them that lie below a / b (a quotient of floats is never exactly a midpoint). A midpoint
    m = (2C + 1) 2^(e_c - 24) is below a / b iff m b < a, decided exactly on integers: (2C + 1) B against
    A 2^s, both under 2^50, as pairs of uint32 words. Integer arithmetic leaves no rounding for XLA to alter.
    """
    ua, ub, uq = f32_bits(a), f32_bits(b), f32_bits(q0)
    sig_a, exp_a = _significand_exponent(ua)
    sig_b, exp_b = _significand_exponent(ub)
    below = jnp.zeros(uq.shape, jnp.uint32)
    for k in (-2, -1, 0, 1):
        sig_c, exp_c = _significand_exponent(uq + jnp.uint32(k & 0xFFFFFFFF))
        mid_hi, mid_lo = _mul_25x24(2 * sig_c + 1, sig_b)
        shift = jnp.clip(exp_a - exp_c - exp_b + 151, 1, 31).astype(jnp.uint32)  # 23..26 near a / b
        a_hi, a_lo = sig_a >> (32 - shift), sig_a << shift
        below += ((mid_hi < a_hi) | ((mid_hi == a_hi) & (mid_lo < a_lo))).astype(jnp.uint32)
    return lax.bitcast_convert_type(uq - 2 + below, jnp.float32)


def _div_corrected(num, den):
    """Correctly rounded num / den (den > 0) from the backend's approximate quotient (within 2 ulp).

    Operands or results that are not normal floats (zero, subnormal, Inf, NaN, quotients within 2 ulp of the
    normal range's ends) keep the backend's quotient.
    """
    q0 = num / den
    a, q = jnp.abs(num), jnp.abs(q0)
    normal = lambda v: (v >= F32_MIN_NORMAL) & (v <= F32_MAX)
    room = (f32_bits(q) >= _MIN_NORMAL_BITS + 2) & (f32_bits(q) <= _MAX_FINITE_BITS - 2)  # q0 +- 2 ulp normal
    ok = normal(a) & normal(den) & room
    q_exact = _round_quotient(jnp.where(ok, a, 1.0), jnp.where(ok, den, 1.0), jnp.where(ok, q, 1.0))
    return jnp.where(ok, with_sign_of(q_exact, num), q0)


def div_exact(num: jnp.ndarray, den: jnp.ndarray) -> jnp.ndarray:
    """Correctly rounded float32 num / den for den >= 0 (or NaN), on every backend.

    XLA rewrites a division by a broadcast into a multiplication by the broadcast reciprocal, which is off by
    one ulp for about a quarter of the elements. Folding a per-element term into the divisor (max with
    0 * |num|, which IEEE forbids simplifying away) keeps a true division at no measurable cost. The CPU's
    float32 division is IEEE; elsewhere (NVIDIA GPUs: div.full.f32) the backend's quotient is corrected on
    integers (`_round_quotient`).
    """
    den = jnp.maximum(den, jnp.where(jnp.isinf(num), 0.0, jnp.abs(num) * 0.0))  # inf * 0 would be NaN
    if _KERNEL_DIVISION.get() or jnp.result_type(num, den) != jnp.float32:
        return num / den
    return lax.platform_dependent(num, den, cpu=jnp.divide, default=_div_corrected)


def round_bf16(x_f32: jnp.ndarray) -> jnp.ndarray:
    """Round float32 to the nearest bfloat16 (ties to even), kept as float32.

    bf16 arithmetic is emulated as float32 arithmetic followed by this explicit rounding: under jit XLA may drop
    the rounding of bf16 intermediates (excess precision), e.g. `(a.astype(bf16) / b).astype(f32)` comes out as
    the unrounded float32 quotient. One float32 operation rounded once to bf16 is the correctly rounded bf16
    result (24 >= 2 * 8 + 2 bits, so the double rounding is innocuous).
    """
    return lax.reduce_precision(x_f32.astype(jnp.float32), exponent_bits=8, mantissa_bits=7)


def round_bf16_satfinite(x_f32: jnp.ndarray) -> jnp.ndarray:
    """round_bf16, but a finite value beyond bfloat16's range saturates to its largest finite value (+-3.3895e38)
    instead of becoming Inf: emulated bf16 scale arithmetic keeps finite inputs finite."""
    y = round_bf16(x_f32)
    bf16_max = jnp.float32(float(jnp.finfo(jnp.bfloat16).max))
    return jnp.where(jnp.isinf(y) & jnp.isfinite(x_f32), jnp.copysign(bf16_max, x_f32), y)


def round_to_dtype(x_f32: jnp.ndarray, dtype) -> jnp.ndarray:
    """Round float32 to the nearest float32 / bfloat16 / float16 value (IEEE: ties to even, overflow to Inf,
    float16 subnormals kept), as float32, without a cast pair (XLA:GPU removes f32 -> f16/bf16 -> f32 pairs).

    lax.reduce_precision flushes float16 subnormals, so below 2^-14 the value is rounded to a multiple of 2^-24.
    """
    x = jnp.asarray(x_f32).astype(jnp.float32)
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float32:
        return x
    if dtype == jnp.bfloat16:
        return round_bf16(x)
    if dtype != jnp.float16:
        raise ValueError(f"round_to_dtype takes float32, bfloat16 or float16, got {dtype}")
    subnormal = jnp.round(x * 2.0**24) * 2.0**-24  # exact scalings by powers of two; RNE on the 2^-24 grid
    return jnp.where(jnp.abs(x) < 2.0**-14, subnormal, lax.reduce_precision(x, exponent_bits=5, mantissa_bits=10))


def _round_integral(y: jnp.ndarray, uniform: jnp.ndarray | None) -> jnp.ndarray:
    """Round y >= 0 to an integer: half to even, or up iff uniform < frac(y) when `uniform` is given (frac(y) =
    y - floor(y) is exact; P(up) for the uniforms of `uniform_from_bits`: the module docstring)."""
    if uniform is None:
        return jnp.round(y)
    lo = jnp.floor(y)
    return lo + (uniform < y - lo).astype(y.dtype)


SR_BITS_MAX = 24  # the resolution of the default uniforms (uniform_from_bits)


def check_sr_bits(sr_bits: int | None, has_key: bool = True) -> int | None:
    """None, or the number of stochastic-rounding random bits as an int in 1..24; ValueError otherwise, and for
    sr_bits given without a PRNG key (has_key False: there is no stochastic rounding to limit)."""
    if sr_bits is None:
        return None
    if not has_key:
        raise ValueError(f"sr_bits={sr_bits!r} limits the random bits of stochastic rounding, which needs a key=")
    if isinstance(sr_bits, bool) or not isinstance(sr_bits, int | np.integer) or not 1 <= sr_bits <= SR_BITS_MAX:
        raise ValueError(f"sr_bits must be an int in 1..{SR_BITS_MAX} (or None for 24-bit uniforms), got {sr_bits!r}")
    return int(sr_bits)


def limit_sr_bits(rbits_u32: jnp.ndarray, sr_bits: int | None) -> jnp.ndarray:
    """uint32 random bits whose uniform rounds with only the top `sr_bits` of its 24 bits (None or 24: unchanged):
    the 24 - sr_bits bits below them set to ones, so P(up) = floor(frac 2^n) / 2^n (module docstring)."""
    if sr_bits is None or sr_bits == SR_BITS_MAX:
        return rbits_u32
    return rbits_u32 | jnp.uint32((1 << (32 - sr_bits)) - 1)  # bits 0..7 never reach the uniform


def uniform_from_bits(rbits_u32: jnp.ndarray, sr_bits: int | None = None) -> jnp.ndarray:
    """Uniform float32 in [0, 1) on the 2^-24 grid from uint32 random bits (exactly representable): the top 24
    bits k give k / 2^24; with `sr_bits` = n, (top n bits + 1) / 2^n - 2^-24 (`limit_sr_bits`)."""
    return (limit_sr_bits(rbits_u32, sr_bits) >> 8).astype(jnp.float32) * (2.0**-24)


def round_fp(v: jnp.ndarray, elem, uniform: jnp.ndarray | None = None) -> jnp.ndarray:
    """Round float32 `v` to FP(e, m) (`elem`: exp_bits/man_bits/emin/max): RNE (or stochastic) with subnormals,
    saturating to +-max, NaN kept."""
    if uniform is None:  # half to even is symmetric and f32_exponent ignores the sign: no magnitude round trip
        c = jnp.clip(v, -elem.max, elem.max)
        step_exp = jnp.maximum(f32_exponent(c), elem.emin) - elem.man_bits
        return jnp.round(c * pow2(-step_exp)) * pow2(step_exp)  # |c| <= max, a grid value: no rounding beyond it
    a = jnp.minimum(jnp.abs(v), elem.max)
    binade = jnp.maximum(f32_exponent(a), elem.emin)  # subnormals share the smallest normal's step
    step_exp = binade - elem.man_bits
    q = _round_integral(a * pow2(-step_exp), uniform) * pow2(step_exp)
    return jnp.copysign(jnp.minimum(q, elem.max), v)


def round_int(v: jnp.ndarray, lo, hi, uniform: jnp.ndarray | None = None) -> jnp.ndarray:
    """Round float32 `v` to integers (as float32) in [lo, hi] (integer bounds, scalars or arrays): RNE (or
    stochastic) of the clipped value, so rounding and clipping commute."""
    c = jnp.clip(v, lo, hi)
    if uniform is None:  # half to even is symmetric, round(-c) = -round(c): no magnitude and sign round trip
        r = jnp.round(c)
        return jnp.where(r == 0, 0.0, r)  # integer codes have no -0: keep fake_quant == dequantize
    a = _round_integral(jnp.abs(c), uniform)
    return jnp.where(a == 0, 0.0, jnp.copysign(a, c))

"""Block scales (lowbit_jax.scaling) against exact references.

UE8M0 exponents: Python `fractions` (exact rational arithmetic) and math.frexp on float64. E8M0 codes: ml_dtypes'
float8_e8m0fnu decoding. NV and FP32 scales: numpy float32 arithmetic (IEEE division) and ml_dtypes casts.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import lowbit_jax as lb
from lowbit_jax import scaling
from lowbit_jax.formats import fp, int_
from tests.conftest import assert_same_bits, fq

ELEMS = [fp(4, 3), fp(5, 2), fp(2, 3), fp(3, 2), fp(2, 1), int_(8), int_(6), int_(4)]
RULES = ["ceil", "floor", "round"]


def floor_log2(r: Fraction) -> int:
    """Exact floor(log2 r) for a positive rational."""
    f = r.numerator.bit_length() - r.denominator.bit_length()
    return f - 1 if Fraction(2) ** f > r else f


def exponent_reference(amax: float, qmax: float, rule: str, shift: int = 0) -> int:
    """Exact UE8M0 exponent of the element scale, clamped so that OCP's X = 2^(e + shift) is in [2^-127, 2^127]
    (shift = b - 2 for MXINT's fixed-point elements, 0 for FP; the lowest for a zero block).

    ceil:  the smallest e with amax <= Qmax * 2^e (paper Eq. 9);
    floor: floor(log2 amax) - floor(log2 Qmax) (OCP MX v1.0; paper Eq. 8), via math.frexp;
    round: the integer nearest to log2(amax / Qmax) (never a tie: sqrt(2) is irrational).
    """
    if amax == 0:
        return -127 - shift
    r = Fraction(amax) / Fraction(qmax)
    if rule == "ceil":
        f = floor_log2(r)
        e = f if r == Fraction(2) ** f else f + 1
    elif rule == "floor":
        e = (math.frexp(amax)[1] - 1) - (math.frexp(qmax)[1] - 1)
    else:
        f = floor_log2(r)
        e = f + ((r / Fraction(2) ** f) ** 2 >= 2)
    return max(-127 - shift, min(127 - shift, e))


def amax_probes(qmax: float) -> np.ndarray:
    """Powers of two and their top ulps, Qmax * 2^k and sqrt(2) * Qmax * 2^k with float32 neighbours, random."""
    f32 = np.float32
    k = np.arange(-126, 128)
    p2 = (2.0**k).astype(f32)
    q = qmax * 2.0 ** np.arange(-126, 128)
    q = q[(q >= 2.0**-126) & (q < 2.0**128)].astype(f32)
    s = math.sqrt(2) * qmax * 2.0 ** np.arange(-126, 128)
    s = s[(s >= 2.0**-126) & (s < 2.0**128)].astype(f32)
    rng = np.random.default_rng(0)
    rand = np.exp(rng.uniform(-87, 88, 2000)).astype(f32)
    pts = [p2, q, s, rand, np.array([0.0, 511.99997, 2.0**-126, np.finfo(f32).max], f32)]
    for p in (p2, q, s):
        pts += [np.nextafter(p, f32(0)), np.nextafter(p, f32(np.inf))]
    v = np.concatenate(pts)
    return v[np.isfinite(v) & ((v == 0) | (v >= 2.0**-126))]


@functools.cache
def _exponents_jit(elem):
    return jax.jit(lambda a: [scaling.ue8m0_exponent(a, elem, r) for r in RULES])  # one compilation per element


def exponent_jit(elem, rule):
    return lambda a: _exponents_jit(elem)(a)[RULES.index(rule)]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("elem", ELEMS, ids=lambda e: e.name)
def test_ue8m0_exponent_exact(elem, rule):
    """Every probe, including the top ulps of each binade where float32 floor(log2) is off by one."""
    amax = amax_probes(elem.max)
    got = np.asarray(exponent_jit(elem, rule)(jnp.asarray(amax)))
    shift = elem.bits - 2 if elem.kind == "int" else 0
    expected = np.array([exponent_reference(float(a), elem.max, rule, shift) for a in amax])
    bad = np.nonzero(got != expected)[0]
    assert bad.size == 0, [(float(amax[i]), int(got[i]), int(expected[i])) for i in bad[:5]]


def test_float32_log2_trap_is_avoided():
    """511.99997 (top ulp below 2^9): float32 floor(log2) says 9, the exact floor is 8.

    docs/theory.md#xla-arithmetic-facts: exponents come from bits.
    """
    a = np.float32(511.99997)
    assert np.floor(np.log2(a)) == 9 and math.frexp(float(a))[1] - 1 == 8
    e = exponent_jit(fp(4, 3), "floor")(jnp.asarray([a]))
    assert int(e[0]) == 0  # exact: 8 - floor(log2 448) = 0, so the element 511.99997 saturates to 448
    out = fq(np.full((1, 32), a, np.float32), lb.get_format("mxfp8", scale_rounding="floor"))
    assert (out == 448).all()


# Goldens, derived by hand in docs/theory.md#ue8m0-scales and docs/theory.md#test-oracles. OCP floor: block max 960
# -> scale 2^1 -> 957 becomes 478.5 -> 448 * 2 = 896. torchao FLOOR / RCEIL (= ceil): E4M3 amax 500 -> 448 (saturated)
# / 512; E2M1 amax 7 -> 6 / 8.
SCALE_GOLDENS = [
    ("mxfp8", "floor", [960.0, 957.0], [896.0, 896.0]),  # 960 / 2 = 480 saturates as well
    ("mxfp8", "floor", [500.0], [448.0]),
    ("mxfp8", "ceil", [500.0], [512.0]),
    ("mxfp4", "floor", [7.0], [6.0]),
    ("mxfp4", "ceil", [7.0], [8.0]),
]


@pytest.mark.parametrize(("name", "rule", "x", "expected"), SCALE_GOLDENS)
def test_scale_rule_goldens(name, rule, x, expected):
    row = np.zeros((1, 32), np.float32)
    row[0, : len(x)] = x
    out = fq(row, lb.get_format(name, scale_rounding=rule))
    np.testing.assert_array_equal(out[0, : len(x)], expected)


def test_ceil_never_clips_floor_may():
    """Ceil: amax <= Qmax * 2^e always (Eq. 16); floor saturates exactly when amax's mantissa exceeds Qmax's."""
    elem = fp(4, 3)
    amax = amax_probes(elem.max)
    amax = amax[(amax > 2.0**-110) & (amax < 2.0**120)]  # away from the [-127, 127] clamp
    e_ceil = np.asarray(exponent_jit(elem, "ceil")(jnp.asarray(amax))).astype(np.int64)
    e_floor = np.asarray(exponent_jit(elem, "floor")(jnp.asarray(amax))).astype(np.int64)
    assert np.all(amax.astype(np.float64) <= elem.max * np.ldexp(1.0, e_ceil))
    mant = np.frexp(amax.astype(np.float64))[0] * 2
    # they differ iff m > m_max (1.75 for E4M3): docs/theory.md#ue8m0-scales
    np.testing.assert_array_equal(e_ceil != e_floor, mant > 1.75)


def test_e8m0_codes_built_from_bits():
    """e8m0_encode: code e + 127 (decoded by ml_dtypes as 2^e), 0xFF (NaN) for non-finite blocks; decode inverts."""
    e = np.arange(-127, 128, dtype=np.int32)
    finite = np.ones_like(e, bool)
    finite[::17] = False
    s = jax.jit(scaling.e8m0_encode)(jnp.asarray(e), jnp.asarray(finite))
    assert s.dtype == jnp.float8_e8m0fnu
    codes = np.asarray(s).view(np.uint8)
    np.testing.assert_array_equal(codes, np.where(finite, e + 127, 255))
    vals = codes.view(ml_dtypes.float8_e8m0fnu).astype(np.float64)
    np.testing.assert_array_equal(vals[finite], 2.0 ** e[finite])
    assert np.isnan(vals[~finite]).all()
    e_back, fin_back = jax.jit(scaling.e8m0_decode)(s)
    np.testing.assert_array_equal(np.asarray(e_back)[finite], e[finite])
    np.testing.assert_array_equal(np.asarray(fin_back), finite)


# --- NV two-level scale and FP32 scales ----------------------------------------------------------------------------


@pytest.mark.parametrize("elem", [fp(2, 1), int_(4)], ids=["fp4", "int4"])
def test_nv_scales_match_numpy_float32(elem):
    """g = amax_t / (Qmax * 448) (1 if zero, >= 2^-126); s = E4M3_RNE(clip(amax_b / Qmax / g, 0, 448))."""
    f32, qmax = np.float32, np.float32(elem.max)
    rng = np.random.default_rng(1)
    amax_t = np.concatenate([np.exp(rng.uniform(-80, 80, 300)), [0.0, 1e-37, 1.0, 2688.0]]).astype(f32)
    g = np.asarray(
        jax.jit(lambda a: scaling.tensor_scale_fp32(a, elem.max * scaling.E4M3_SCALE_MAX))(jnp.asarray(amax_t))
    )
    with np.errstate(under="ignore"):
        g_ref = np.where(amax_t > 0, np.maximum(amax_t / (qmax * f32(448)), f32(2.0**-126)), f32(1))
    assert_same_bits(g, g_ref, "tensor scale")
    assert g[-4] == 1.0 and g[-3] == np.float32(2.0**-126)

    gg = f32(0.01)
    amax_b = (gg * qmax * np.exp(rng.uniform(-12, 7, 2000))).astype(f32)  # s from ~6e-6 (underflow) to 1100 (clip)
    # near-ties: amax_b / Qmax / g within a few float32 ulps of an E4M3 midpoint (where the rounding order shows)
    grid = np.unique(np.abs(np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float64)))
    mids = (grid[:-1] + grid[1:])[np.isfinite(grid[1:])] / 2
    near = (mids * float(gg) * float(qmax)).astype(f32)
    near = np.concatenate([near, np.nextafter(near, f32(0)), np.nextafter(near, f32(np.inf))])
    amax_b = np.concatenate([amax_b, near, np.array([7.75], f32), np.array([0.0, np.inf, np.nan], f32)])
    s = np.asarray(
        jax.jit(lambda a: scaling.grid_block_scale(a, jnp.float32(gg), elem, scaling.E4M3))(jnp.asarray(amax_b))
    )
    with np.errstate(invalid="ignore"):
        s_ref = np.clip(amax_b / qmax / gg, 0, 448).astype(ml_dtypes.float8_e4m3fn).astype(f32)
    s_ref = np.where(np.isfinite(amax_b), s_ref, np.nan)
    assert_same_bits(s, s_ref, "block scale")
    assert (s[:-3] == 448).any() and (s[:-3] == 0).any() and s[-3] == 0 and np.isnan(s[-2:]).all()
    # 7.75 / 6 / 2.6666667 = 0.48437497 in IEEE float32: just below the E4M3 midpoint 0.484375, so 0.46875.
    # (A single division by 6 * g = 16.0 would land on the midpoint and round to 0.5.)
    s1 = jax.jit(lambda a: scaling.grid_block_scale(a, jnp.float32(2.6666667), fp(2, 1), scaling.E4M3))(
        jnp.asarray([7.75], f32)
    )
    assert float(s1[0]) == 0.46875


def test_fp32_scale_float32_and_bfloat16():
    """Unrounded amax / Qmax (paper Eq. 7): IEEE float32 division, or an ml_dtypes bfloat16 division."""
    rng = np.random.default_rng(2)
    amax = np.exp(rng.uniform(-60, 60, 3000)).astype(np.float32)
    for elem in (int_(8), fp(4, 3)):
        got = np.asarray(jax.jit(lambda a, el=elem: scaling.fp32_scale(a, el))(jnp.asarray(amax)))
        assert_same_bits(got, amax / np.float32(elem.max), "float32")
        got = np.asarray(jax.jit(lambda a, el=elem: scaling.fp32_scale(a, el, "bfloat16"))(jnp.asarray(amax)))
        bf = ml_dtypes.bfloat16
        expected = (amax.astype(bf) / bf(elem.max)).astype(np.float32)
        assert_same_bits(got, expected, "bfloat16")


@functools.cache
def _bf16_exponents_jit(elem):
    return jax.jit(lambda a: [scaling.ue8m0_exponent_bf16(a, elem, r) for r in RULES])


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("elem", [fp(4, 3), fp(2, 1), int_(8), int_(4)], ids=lambda e: e.name)
def test_ue8m0_exponent_bf16_matches_ml_dtypes(elem, rule):
    """The authors' BF16 arithmetic: s = bf16(amax) / bf16(Qmax), log2 in bf16, then the rule
    (docs/theory.md#bf16-scale-arithmetic-and-the-asymmetric-int-bias).

    Reference: ml_dtypes bfloat16 numpy arithmetic (each operation rounded to bf16), clamped to [-127, 127].
    """
    bf = ml_dtypes.bfloat16
    rng = np.random.default_rng(3)
    amax = np.concatenate([amax_probes(elem.max), np.abs(rng.normal(size=4000)) * 10.0 ** rng.uniform(-6, 1, 4000)])
    amax = amax.astype(np.float32)
    amax = amax[(amax > 2.0**-100) & (amax < 2.0**100)]
    s = amax.astype(bf) / bf(elem.max)
    op = {"ceil": np.ceil, "floor": np.floor, "round": np.round}[rule]
    expected = np.clip(op(np.log2(s).astype(np.float32)), -127, 127).astype(np.int32)
    got = np.asarray(_bf16_exponents_jit(elem)(jnp.asarray(amax))[RULES.index(rule)])
    bad = np.nonzero(got != expected)[0]
    assert bad.size == 0, [(float(amax[i]), int(got[i]), int(expected[i])) for i in bad[:5]]


def test_fp32_scale_of_tiny_normal_blocks_is_the_smallest_normal():
    """amax / Qmax below 2^-126 would be a float32 subnormal, which XLA flushes to 0 and so zeroes a block of
    normal values: the FP32 scale is held at 2^-126 instead (numpy float64 oracle of round(x / 2^-126))."""
    x = np.array([[4e-37, -2e-37, 1e-37, 3e-37]], np.float32)
    s = 2.0**-126
    v = x.astype(np.float64) / s  # exact: a power-of-two scale
    ints = np.round(v) * s
    e4m3 = v.astype(ml_dtypes.float8_e4m3fn).astype(np.float64) * s  # in range: |v| < 35
    assert_same_bits(fq(x, lb.get_format("int8_channel")), ints.astype(np.float32), "int8_channel")
    assert_same_bits(fq(x, lb.get_format("fp8_channel")), e4m3.astype(np.float32), "fp8_channel")
    assert (fq(x, lb.get_format("int8_channel")) != 0).all()

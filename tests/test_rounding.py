"""Element rounding (lowbit_jax.rounding) against independent oracles.

Oracles: ml_dtypes numpy casts of the clipped value (every FP element type with an ml_dtypes twin), gfloat 0.5.2
`round_ndarray` (TiesToEven, sat=True), and `rne_scalar` below, an exact Fraction transcription of
round-to-nearest-even with subnormals and saturation, itself checked against the enumerated code points.
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
from gfloat import RoundMode, round_ndarray

from lowbit_jax import rounding
from lowbit_jax.formats import FPElem, fp, int_
from tests.conftest import ML_DTYPES, assert_same_bits, gfloat_fp, ml_round

# Every FP(e, m) with "none" specials up to 8 bits (e1m6 included), plus the 8-bit fn / IEEE variants.
GENERAL_FP = [fp(e, m, "none") for e in range(1, 8) for m in range(0, 8 - e)]
GENERAL_FP += [fp(4, 3), fp(5, 2), fp(3, 4), fp(4, 3, "ieee"), fp(2, 5), fp(6, 1), fp(7, 0)]
NATIVE_FP = [FPElem(*k) for k in ML_DTYPES]  # e4m3fn, e5m2, e2m3, e3m2, e2m1, e3m4, e4m3 (IEEE)
OCP_FP = [fp(4, 3), fp(5, 2), fp(2, 3), fp(3, 2), fp(2, 1)]


def ids(elems):
    return [f"{e.name}_{e.special}" for e in elems]


@functools.cache
def round_jit(elem):
    return jax.jit(lambda v, u=None: elem.round(v, u))


# --- exact scalar reference -----------------------------------------------------------------------------------------


@functools.cache
def grid_scalar(e: int, m: int, special: str) -> tuple[Fraction, ...]:
    """Non-negative finite values of FP(e, m), in code order, read off the bit fields."""
    bias, out = 2 ** (e - 1) - 1, []
    for field in range(2**e):
        for man in range(2**m):
            if special == "ieee" and field == 2**e - 1:
                continue  # Inf / NaN
            if special == "fn" and field == 2**e - 1 and man == 2**m - 1:
                continue  # the single NaN
            if field == 0:
                out.append(Fraction(man, 2**m) * Fraction(2) ** (1 - bias))
            else:
                out.append((1 + Fraction(man, 2**m)) * Fraction(2) ** (field - bias))
    return tuple(out)


@functools.cache
def max_scalar(e: int, m: int, special: str) -> Fraction:
    return max(grid_scalar(e, m, special))


def rne_scalar(x: float, e: int, m: int, special: str) -> float:
    """Exact RNE onto FP(e, m), subnormals kept, saturating to +-max, sign of zero kept.

    |x| = k * 2^(E - m) with E = max(floor(log2|x|), emin); k rounds half to even (Python's `round` on a Fraction).
    For m = 0 IEEE's "even last digit" is undefined (every significand is 1); this definition sends normal ties up
    to the next power of two, as ml_dtypes' float8_e8m0fnu cast does (gfloat instead picks an even exponent code).
    """
    if math.isnan(x):
        return math.nan
    fmax = max_scalar(e, m, special)
    a = Fraction(abs(x)) if math.isfinite(x) else fmax
    emin = 2 - 2 ** (e - 1)
    big_e = max(math.frexp(abs(x))[1] - 1, emin) if 0 < a < fmax else emin
    step = Fraction(2) ** (big_e - m)
    q = min(round(a / step) * step, fmax)
    return math.copysign(float(q), x)


def sweep(elem, rng: np.random.Generator, n_random: int = 400) -> np.ndarray:
    """float32 probes: code points, midpoints (ties), their float32 neighbours, subnormals, overflow, random."""
    g64 = np.array([float(v) for v in grid_scalar(elem.exp_bits, elem.man_bits, elem.special)])
    g64 = np.unique(g64)
    f32 = np.float32
    mids = ((g64[:-1] + g64[1:]) / 2).astype(f32)  # exact: at most m + 2 significant bits
    assert np.array_equal(mids.astype(np.float64), (g64[:-1] + g64[1:]) / 2)
    top_step = 2.0 ** (math.frexp(elem.max)[1] - 1 - elem.man_bits)
    over = elem.max * np.array([1 + 2.0**-23, 1.0625, 1.5, 2.0, 4.0])
    over = np.concatenate([over, [elem.max + top_step / 2, 1e30, np.finfo(f32).max, np.inf]]).astype(f32)
    tiny = np.array([elem.min_subnormal / 2, elem.min_subnormal / 4, 1e-30, 2.0**-126, 1e-40], f32)
    rand = (2.0 ** rng.uniform(math.log2(elem.min_subnormal) - 2, math.log2(elem.max) + 1, n_random)).astype(f32)
    pts = [g64.astype(f32), mids, over, tiny, rand]
    for p in (mids, g64.astype(f32), tiny):
        pts += [np.nextafter(p, f32(np.inf)), np.nextafter(p, f32(0))]
    v = np.concatenate(pts)
    return np.concatenate([v, -v])


# --- the scalar reference is the nearest code point ---------------------------------------------------------------


@pytest.mark.parametrize("elem", GENERAL_FP, ids=ids(GENERAL_FP))
def test_scalar_reference_is_nearest_code_point(elem):
    """rne_scalar picks a nearest enumerated value; for m >= 1 ties go to the even code (IEEE roundTiesToEven)."""
    grid = grid_scalar(elem.exp_bits, elem.man_bits, elem.special)
    order = sorted(range(len(grid)), key=lambda i: grid[i])
    vals = [grid[i] for i in order]
    assert float(vals[-1]) == elem.max and float(min(v for v in vals if v > 0)) == elem.min_subnormal
    for lo, hi, code_lo in zip(vals, vals[1:], order, strict=False):
        for probe in (lo + (hi - lo) / 3, (lo + hi) / 2, hi - (hi - lo) / 3):
            got = Fraction(rne_scalar(float(probe), elem.exp_bits, elem.man_bits, elem.special))
            if probe - lo != hi - probe:
                assert got == (lo if probe - lo < hi - probe else hi)
            elif elem.man_bits >= 1:
                assert got == (lo if code_lo % 2 == 0 else hi), (float(lo), float(hi))
            else:
                assert got == (lo if lo == 0 else hi)  # m = 0: ties go up (except 0 vs the smallest value)


# --- every code point round-trips -----------------------------------------------------------------------------------


@pytest.mark.parametrize("elem", NATIVE_FP, ids=ids(NATIVE_FP))
def test_every_code_point_round_trips_native(elem):
    """All finite codes of the ml_dtypes twin: round(v) == v, encode(v) == code, decode(code) == v, bit for bit."""
    dtype = ML_DTYPES[(elem.exp_bits, elem.man_bits, elem.special)]
    codes = np.arange(2**elem.bits, dtype=np.uint8)
    vals = codes.view(dtype).astype(np.float32)
    keep = np.isfinite(vals)
    codes, vals = codes[keep], vals[keep]
    assert float(np.abs(vals).max()) == elem.max
    assert_same_bits(round_jit(elem)(jnp.asarray(vals)), vals, "round")
    enc = jax.jit(lambda v: elem.encode(v))(jnp.asarray(vals))
    assert enc.dtype == elem.storage_dtype
    enc_bits = np.asarray(enc).view(np.uint8) if enc.dtype != jnp.uint8 else np.asarray(enc)
    if elem.storage_dtype in (jnp.float8_e4m3fn, jnp.float8_e5m2, jnp.float4_e2m1fn, jnp.uint8):
        np.testing.assert_array_equal(enc_bits & (2**elem.bits - 1), codes)
    assert_same_bits(jax.jit(lambda c: elem.decode(c))(enc), vals, "decode")


def code_points(elem) -> np.ndarray:
    """Every finite value of FP(e, m) from the bit fields: the positive codes in code order, then their negatives."""
    pos = np.array([float(v) for v in grid_scalar(elem.exp_bits, elem.man_bits, elem.special)], np.float32)
    return np.concatenate([pos, -pos])


@functools.cache
def general_outputs() -> dict:
    """Library results for every GENERAL_FP element in one compilation (35 small compilations cost ~5 s):
    elem -> (code points, sweep, round(code points), encode(code points), decode(encode(...)), round(sweep))."""
    ins = [(code_points(e), sweep(e, np.random.default_rng(2), n_random=100)) for e in GENERAL_FP]

    @jax.jit
    def run(arrays):
        out = []
        for elem, (c, s) in zip(GENERAL_FP, arrays, strict=True):
            enc = elem.encode(c)
            out.append((elem.round(c), enc, elem.decode(enc), elem.round(s)))
        return out

    results = run(ins)
    return {e: (*i, *(np.asarray(t) for t in r)) for e, i, r in zip(GENERAL_FP, ins, results, strict=True)}


@pytest.mark.slow
@pytest.mark.parametrize("elem", GENERAL_FP, ids=ids(GENERAL_FP))
def test_every_code_point_round_trips_general(elem):
    """Every finite value of FP(e, m) (from the bit fields, both signs) is a fixed point of rounding and codes."""
    vals, _, rounded, enc, dec, _ = general_outputs()[elem]
    assert_same_bits(rounded, vals, "round")
    assert_same_bits(dec, vals, "decode(encode)")
    if enc.dtype == np.uint8:  # bit patterns: sign | exponent field | mantissa, in code order
        n = len(vals) // 2
        np.testing.assert_array_equal(enc[:n], np.arange(n))
        np.testing.assert_array_equal(enc[n:], np.arange(n) | (1 << (elem.bits - 1)))


# --- dense sweeps ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("elem", NATIVE_FP, ids=ids(NATIVE_FP))
def test_rne_matches_ml_dtypes_dense_sweep(elem):
    """Midpoints, just off midpoints, subnormals, overflow, random: bit-identical to ml_dtypes(clip(v))."""
    v = sweep(elem, np.random.default_rng(0))
    assert_same_bits(round_jit(elem)(jnp.asarray(v)), ml_round(v, elem), elem.name)


@pytest.mark.parametrize("elem", OCP_FP, ids=ids(OCP_FP))
def test_rne_matches_gfloat_dense_sweep(elem):
    """The same sweep against gfloat round_ndarray(TiesToEven, sat=True) on float64."""
    v = sweep(elem, np.random.default_rng(1))
    expected = round_ndarray(gfloat_fp(elem.exp_bits, elem.man_bits, elem.special), v.astype(np.float64), sat=True)
    assert_same_bits(round_jit(elem)(jnp.asarray(v)), expected.astype(np.float32), elem.name)


@pytest.mark.parametrize("elem", GENERAL_FP, ids=ids(GENERAL_FP))
def test_rne_matches_scalar_reference_dense_sweep(elem):
    """Any FP(e, m) (e3m4, e1m2, e5m0, e7m0, ...) against the exact Fraction reference."""
    _, v, _, _, _, rounded = general_outputs()[elem]
    expected = np.array([rne_scalar(float(t), elem.exp_bits, elem.man_bits, elem.special) for t in v], np.float32)
    assert_same_bits(rounded, expected, elem.name)


@pytest.mark.parametrize("elem", [e for e in GENERAL_FP if e.special == "none" and e.man_bits >= 1], ids=str)
def test_rne_matches_gfloat_general_formats(elem):
    """gfloat agrees on every FP(e, m >= 1) without specials (for m = 0 gfloat uses a different tie convention)."""
    _, v, _, _, _, rounded = general_outputs()[elem]
    expected = round_ndarray(gfloat_fp(elem.exp_bits, elem.man_bits, "none"), v.astype(np.float64), sat=True)
    assert_same_bits(rounded, expected.astype(np.float32), elem.name)


def test_e5m0_ties_go_up_like_ml_dtypes_e8m0():
    """m = 0: in the normal range rounding is to the nearest power of two, ties up, exactly as ml_dtypes E8M0 casts."""
    elem = fp(5, 0)
    k = np.arange(-14, 16, dtype=np.float64)
    p = 2.0**k
    v = np.concatenate([p, 1.5 * p, np.nextafter((1.5 * p).astype(np.float32), np.float32(0)), 1.25 * p, 1.75 * p])
    v = v.astype(np.float32)
    expected = v.astype(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    assert_same_bits(round_jit(elem)(jnp.asarray(v)), expected, "e5m0 vs e8m0fnu")


# --- goldens: ties to even, sign of zero, specials --------------------------------------------------------------------

# gfloat 0.5.2 round_ndarray(TiesToEven, sat=True) on E2M1 {0, 0.5, 1, 1.5, 2, 3, 4, 6}: ties to even, 7 saturates.
E2M1_GOLDEN = [(0.25, 0.0), (0.75, 1.0), (1.25, 1.0), (1.75, 2.0), (2.5, 2.0), (3.5, 4.0), (5.0, 4.0), (7.0, 6.0)]
# E4M3 ties (independent: [16, 32) has step 2, so 17 lies between 16 (mantissa 000) and 18 (001)); 464 is the
# midpoint between 448 and the non-existent 480 (the NaN code) and saturates (docs/theory.md#xla-arithmetic-facts).
E4M3_GOLDEN = [(17.0, 16.0), (19.0, 20.0), (0.5 * 2.0**-9, 0.0), (1.5 * 2.0**-9, 2.0**-8), (464.0, 448.0)]


@pytest.mark.parametrize(("elem", "golden"), [(fp(2, 1), E2M1_GOLDEN), (fp(4, 3), E4M3_GOLDEN)], ids=["e2m1", "e4m3"])
def test_ties_to_even_goldens(elem, golden):
    v = np.array([g[0] for g in golden], np.float32)
    expected = np.array([g[1] for g in golden], np.float32)
    assert_same_bits(round_jit(elem)(jnp.asarray(v)), expected, "positive")
    assert_same_bits(round_jit(elem)(jnp.asarray(-v)), -expected, "negative")


@pytest.mark.parametrize("elem", OCP_FP, ids=ids(OCP_FP))
def test_sign_of_zero_nan_and_inf(elem):
    """-0 and negative underflow give -0.0 (as ml_dtypes); NaN stays NaN; +-Inf saturate to +-max."""
    v = np.array([0.0, -0.0, -elem.min_subnormal / 2, elem.min_subnormal / 2, -1e-30, np.inf, -np.inf], np.float32)
    out = np.asarray(round_jit(elem)(jnp.asarray(v)))
    assert_same_bits(out, np.array([0.0, -0.0, -0.0, 0.0, -0.0, elem.max, -elem.max], np.float32), elem.name)
    assert_same_bits(out[:5], ml_round(v[:5], elem), "ml_dtypes")
    assert np.isnan(np.asarray(round_jit(elem)(jnp.asarray([np.nan], jnp.float32)))).all()


# --- INT ------------------------------------------------------------------------------------------------------------

INTS = [int_(b, r) for b in range(2, 9) for r in ("symmetric", "asymmetric")]


def int_sweep() -> np.ndarray:
    """Every integer and half-integer in [-131, 131], the half-integers' float32 neighbours, random, specials."""
    k = np.arange(-131, 132, dtype=np.float32)
    halves = k + np.float32(0.5)
    v = np.concatenate([k, halves, np.nextafter(halves, np.float32(np.inf)), np.nextafter(halves, np.float32(-np.inf))])
    v = np.concatenate([v, np.random.default_rng(4).uniform(-132, 132, 500).astype(np.float32)])
    return np.concatenate([v, np.array([-0.0, -0.3, 1e30, -1e30, np.inf, -np.inf, -1000.0, 1000.0], np.float32)])


@functools.cache
def int_outputs() -> dict:
    """round_int of int_sweep() for every INT element, in one compilation."""
    out = jax.jit(lambda v: [e.round(v) for e in INTS])(int_sweep())
    return dict(zip(INTS, (np.asarray(o) for o in out), strict=True))


@pytest.mark.parametrize("elem", INTS, ids=[f"int{e.bits}_{e.int_range}" for e in INTS])
def test_int_rounding_half_even_and_clipped(elem):
    """round_int == numpy round-half-even of the clipped value; +0 for zeros (integer codes have no -0)."""
    v, out = int_sweep(), int_outputs()[elem]
    expected = np.round(np.clip(v, elem.min, elem.max)) + np.float32(0)  # + 0 turns -0 into +0
    assert_same_bits(out, expected, elem.name)
    # closed form (paper §3.2, App. B.2 Eq. 18): [-(2^(b-1)-1), 2^(b-1)-1]; asymmetric adds -2^(b-1)
    lo = -(2 ** (elem.bits - 1)) if elem.int_range == "asymmetric" else -(2 ** (elem.bits - 1) - 1)
    assert out[-2:].tolist() == [lo, 2 ** (elem.bits - 1) - 1]


# --- stochastic element rounding: the exact rule ----------------------------------------------------------------------


@pytest.mark.parametrize("elem", [fp(2, 1), fp(4, 3), fp(3, 2), int_(4), int_(8, "asymmetric")], ids=str)
def test_stochastic_rule_is_round_up_iff_uniform_below_fraction(elem):
    """With uniform u: |v| goes to the upper neighbour iff u < (|v| - lo) / (hi - lo) (exact Fraction reference)."""
    rng = np.random.default_rng(5)
    fmax = elem.max
    v = rng.uniform(-fmax, fmax, 4000).astype(np.float32)
    u = (rng.integers(0, 2**24, 4000) * 2.0**-24).astype(np.float32)
    u[:10] = 0.0
    v[:10] = np.float32(fmax) * np.float32(0.3)
    out = np.asarray(round_jit(elem)(jnp.asarray(v), jnp.asarray(u)))
    a = np.abs(v).astype(np.float64)
    if elem.kind == "fp":
        gf = gfloat_fp(elem.exp_bits, elem.man_bits, elem.special)
        lo = round_ndarray(gf, a, RoundMode.TowardZero, sat=True)
        hi = round_ndarray(gf, a, RoundMode.TowardPositive, sat=True)
    else:
        lim = np.where(v < 0, -elem.min, elem.max)
        lo, hi = np.minimum(np.floor(a), lim), np.minimum(np.ceil(a), lim)
    for vi, ui, oi, lo_i, hi_i in zip(v, u, out, lo, hi, strict=True):
        frac = Fraction(0) if hi_i == lo_i else (Fraction(float(abs(vi))) - Fraction(lo_i)) / Fraction(hi_i - lo_i)
        expected = hi_i if Fraction(float(ui)) < frac else lo_i
        assert abs(float(oi)) == expected and (oi == 0 or np.sign(oi) == np.sign(vi)), (vi, ui, oi, lo_i, hi_i)


def test_uniform_from_bits_grid():
    """uniform_from_bits uses the top 24 bits: exactly k * 2^-24, in [0, 1)."""
    b = np.array([0, 255, 256, 2**32 - 1, 2**31], np.uint32)
    u = np.asarray(jax.jit(rounding.uniform_from_bits)(jnp.asarray(b)))
    np.testing.assert_array_equal(u, (b >> 8).astype(np.float64) * 2.0**-24)
    assert u.max() < 1.0


# --- exact float32 helpers (docs/theory.md, section "XLA arithmetic facts") -------------------------------------


def test_f32_exponent_and_mantissa_from_bits():
    """floor(log2|x|) from bits equals math.frexp on float64, including the top ulp of every binade."""
    k = np.arange(-125, 128)
    top = np.nextafter((2.0**k).astype(np.float32), np.float32(0))
    rng = np.random.default_rng(6)
    x = np.concatenate([top, (2.0**k).astype(np.float32), rng.lognormal(0, 20, 2000).astype(np.float32)])
    x = x[(x >= 2.0**-126) & np.isfinite(x)]
    got = np.asarray(jax.jit(rounding.f32_exponent)(jnp.asarray(x)))
    np.testing.assert_array_equal(got, [math.frexp(float(t))[1] - 1 for t in x])
    man = np.asarray(jax.jit(rounding.f32_mantissa)(jnp.asarray(x)))
    np.testing.assert_array_equal(man, [int((math.frexp(float(t))[0] * 2 - 1) * 2**23) for t in x])
    assert np.floor(np.log2(np.float32(511.99997))) == 9  # the float32 log2 trap the bit path avoids
    assert int(jax.jit(rounding.f32_exponent)(jnp.float32(511.99997))) == 8


def test_pow2_and_mul_pow2_exact():
    """2^k from bits for every k in [-126, 127]; x * 2^k via two factors down to 2^-252 (normal results)."""
    k = np.arange(-126, 128, dtype=np.int32)
    np.testing.assert_array_equal(np.asarray(jax.jit(rounding.pow2)(jnp.asarray(k))), (2.0**k).astype(np.float32))
    x = np.float32(1.5) * np.ones(507, np.float32)
    kk = np.arange(-252, 255, dtype=np.int32)
    got = np.asarray(jax.jit(rounding.mul_pow2)(jnp.asarray(x), jnp.asarray(kk)))
    expected = np.ldexp(1.5, kk.astype(np.int64))
    normal = (expected >= 2.0**-126) & (expected < 2.0**128)
    np.testing.assert_array_equal(got[normal], expected[normal].astype(np.float32))
    # subnormal results may flush on XLA:CPU (docs/theory.md#xla-arithmetic-facts)
    assert np.all(got[expected < 2.0**-126] <= 2.0**-126)


def test_div_exact_is_ieee_division():
    """div_exact agrees with numpy float32 division (IEEE) bit for bit, also when the divisor is broadcast."""
    rng = np.random.default_rng(7)
    num = rng.normal(size=(64, 32)).astype(np.float32)
    den = np.abs(rng.normal(size=(64, 1))).astype(np.float32) + np.float32(0.1)
    got = np.asarray(jax.jit(rounding.div_exact)(jnp.asarray(num), jnp.asarray(den)))
    assert_same_bits(got, num / den, "div_exact")
    got_scalar = np.asarray(jax.jit(lambda a: rounding.div_exact(a, jnp.float32(6.0)))(jnp.asarray(num)))
    assert_same_bits(got_scalar, num / np.float32(6.0), "div_exact by a constant")


def _quotients_near_midpoints(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) float32 with a / b within an ulp or so of a midpoint between floats: the hard cases for rounding."""
    b = (1 + rng.random(n)).astype(np.float32) * np.exp2(rng.integers(-60, 60, n)).astype(np.float32)
    q = (1 + rng.random(n)).astype(np.float32) * np.exp2(rng.integers(-60, 60, n)).astype(np.float32)
    mid = q.astype(np.float64) * (1 + 2.0**-24)  # q times (1 + half an ulp of 1): near q's upper midpoint
    return (mid * b.astype(np.float64)).astype(np.float32), b


@pytest.mark.parametrize("off_by", [-2, -1, 0, 1, 2])
def test_round_quotient_recovers_the_ieee_quotient(off_by):
    """The GPU division fix: from any quotient within 2 ulp, _round_quotient returns numpy's IEEE a / b."""
    rng = np.random.default_rng(11)
    a1, b1 = _quotients_near_midpoints(rng, 20000)
    a2 = (rng.standard_normal(20000) * np.exp(rng.uniform(-40, 40, 20000))).astype(np.float32)
    b2 = np.abs(rng.standard_normal(20000) * np.exp(rng.uniform(-40, 40, 20000))).astype(np.float32)
    a, b = np.abs(np.concatenate([a1, a2, b2[:500], 3 * b2[:500]])), np.concatenate([b1, b2, b2[:500], b2[:500]])
    want = a / b
    keep = (want >= 2.0**-125) & (want <= 2.0**127)
    a, b, want = a[keep], b[keep], want[keep]
    q0 = (want.view(np.uint32).astype(np.int64) + off_by).astype(np.uint32).view(np.float32)
    got = np.asarray(jax.jit(rounding._round_quotient)(jnp.asarray(a), jnp.asarray(b), jnp.asarray(q0)))
    assert_same_bits(got, want, f"quotient from {off_by:+d} ulp")


def test_div_corrected_keeps_specials_and_signs():
    """_div_corrected (div_exact off the CPU): IEEE for normal results, the backend's plain quotient otherwise."""
    num = np.array([-3.0, 3.0, -0.0, 0.0, np.inf, np.nan, 1e-38, -7.0, 1e38, 5.0], np.float32)
    den = np.array([7.0, 7.0, 2.0, 2.0, 3.0, 3.0, 3.0, np.inf, 1e-3, 0.0], np.float32)
    got = np.asarray(jax.jit(rounding._div_corrected)(jnp.asarray(num), jnp.asarray(den)))
    with np.errstate(divide="ignore", over="ignore"):
        want = num / den
    # XLA:CPU flushes these to zero, XLA:GPU keeps them (docs/theory.md#xla-arithmetic-facts)
    subnormal = np.abs(want) < 2.0**-126
    plain = np.asarray(jax.jit(jnp.divide)(jnp.asarray(num), jnp.asarray(den)))
    assert_same_bits(got[~subnormal], want[~subnormal], "specials")
    assert_same_bits(got[subnormal], plain[subnormal], "subnormal quotients: the backend's own")
    assert np.array_equal(np.signbit(got), np.signbit(want))


def test_div_exact_inside_kernels_is_a_plain_division():
    """Traced under kernel_division (Pallas bodies), div_exact emits `div` for the backend's rules to replace."""
    x = jnp.ones((4,), jnp.float32)
    outside = str(jax.make_jaxpr(lambda a, b: rounding.div_exact(a, b))(x, x))
    with rounding.kernel_division():  # a fresh function: make_jaxpr caches traces by function, not by context
        inside = str(jax.make_jaxpr(lambda a, b: rounding.div_exact(a, b))(x, x))
    assert "platform_index" in outside and "platform_index" not in inside and " div " in inside


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32], ids=["f16", "bf16", "f32"])
def test_round_to_dtype_matches_numpy_casts(dtype):
    """round_to_dtype (no cast pair) against numpy/ml_dtypes casts: every float16 code point, the midpoints
    between them and their float32 neighbours, float16 subnormals, overflow; both signs."""
    grid = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)
    mid = ((grid[:-1].astype(np.float64) + grid[1:]) / 2).astype(np.float32)
    big = np.float32([65519.99, 65520.0, 7e4, 3e38, 1.5e-40])
    v = np.concatenate([grid, mid, np.nextafter(mid, np.float32(0)), np.nextafter(mid, np.float32(np.inf)), big])
    v = np.concatenate([v, -v])
    with np.errstate(over="ignore"):
        want = v.astype(dtype).astype(np.float32)
    # float32 subnormals: kept or flushed, depending on the XLA op (docs/theory.md#xla-arithmetic-facts)
    tiny = np.abs(want) < 2.0**-126
    got = np.asarray(jax.jit(lambda a: rounding.round_to_dtype(a, dtype))(jnp.asarray(v)))
    assert_same_bits(got[~tiny], want[~tiny], str(dtype))
    assert np.all((got[tiny] == want[tiny]) | (got[tiny] == 0))

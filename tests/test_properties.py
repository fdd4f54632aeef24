"""Properties (hypothesis): idempotence, odd symmetry, monotonicity, 2^k equivariance, half-step error bound;
the straight-through gradient; stochastic rounding (unbiased, deterministic per key, two neighbours only).

Data: hypothesis draws a seed, per-block magnitudes, a distribution and a few explicit values; numpy builds the
array (drawing every element through hypothesis costs more than the quantizer).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gfloat import RoundMode, round_ndarray
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit_jax as lb
from tests.conftest import (
    GFLOAT_FI,
    MX_FORMATS,
    assert_same_bits,
    fq,
    mx_reference,
    mx_scale_exponent,
    nv_reference,
)
from tests.fuzz_oracle import DISTRIBUTIONS, sample_values

ROWS, COLS = 4, 64
NV_FORMATS = ["nvfp4", "nvint4"]
ALL_BLOCK = MX_FORMATS + NV_FORMATS + ["fp8_channel", "int8_channel"]


@st.composite
def arrays(draw, lo=-30, hi=20):
    """float32 (4, 64): every 16-block has its own magnitude 2^[lo, hi]; zeros, exact ties and explicit values."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = draw(st.integers(lo, hi))
    spread = draw(st.integers(0, 12))
    dist = draw(st.sampled_from(DISTRIBUTIONS))
    shape = (ROWS, COLS)
    x = sample_values(rng, dist, shape)
    mag = 2.0 ** (base + rng.integers(0, spread + 1, size=(ROWS, COLS // 16)))
    x = x * mag.repeat(16, axis=1)
    x[rng.random(shape) < draw(st.sampled_from([0.0, 0.1, 0.5]))] = 0.0
    mant = st.floats(-2.0, 2.0, allow_subnormal=False, width=32)
    for i, m, k in draw(st.lists(st.tuples(st.integers(0, x.size - 1), mant, st.integers(-30, 30)), max_size=6)):
        x.flat[i] = m * 2.0**k
    x = x.astype(np.float32)
    x[(np.abs(x) < 2.0**-60) & (x != 0)] = 0.0  # keep every product in the float32 normal range
    return x


def is_int(name: str) -> bool:
    return lb.get_format(name).elem.kind == "int"


# --- oracles on random arrays ----------------------------------------------------------------------------------------


@functools.cache
def _once_and_twice(name: str):
    fmts = [lb.get_format(name, scale_rounding=r) for r in ("ceil", "floor")]
    return jax.jit(lambda v: [(lb.fake_quant(v, f), lb.fake_quant(lb.fake_quant(v, f), f)) for f in fmts])


def once_and_twice(x, name: str) -> dict:
    """{rule: (q(x), q(q(x)))} for the ceil and floor rules of an MX format, in one compilation per format."""
    out = _once_and_twice(name)(x)
    return {r: (np.asarray(a), np.asarray(b)) for r, (a, b) in zip(("ceil", "floor"), out, strict=True)}


@pytest.mark.parametrize("name", MX_FORMATS)
@settings(max_examples=30)  # the dense deterministic tests in test_quantize.py carry most of this oracle's weight
@given(x=arrays())
def test_mx_matches_gfloat_on_random_arrays(name, x):
    """Ceil and floor rules bit-exact against the float64 gfloat oracle (conftest.mx_reference)."""
    for rule, (once, _) in once_and_twice(x, name).items():
        assert_same_bits(once, mx_reference(x, name, rule).astype(np.float32), f"{name}/{rule}")


@pytest.mark.parametrize("name", NV_FORMATS)
@settings(max_examples=30)
@given(x=arrays())
def test_nv_matches_numpy_reference_on_random_arrays(name, x):
    """Bit-exact against the NV two-level rule in numpy float32 (conftest.nv_reference; docs/formats.md, section
    "E4M3 with an FP32 tensor scale")."""
    assert_same_bits(fq(x, name), nv_reference(x, "fp" if name == "nvfp4" else "int")[0], name)


# --- algebraic properties -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MX_FORMATS)
@given(x=arrays())
def test_idempotent(name, x):
    """q(q(x)) == q(x) for UE8M0 formats, ceil and floor rules (the re-derived scale is never coarser)."""
    for rule, (once, twice) in once_and_twice(x, name).items():
        assert_same_bits(twice, once, f"{name}/{rule}")


@pytest.mark.parametrize("name", ALL_BLOCK)
@given(x=arrays())
def test_odd_symmetry(name, x):
    """q(-x) == -q(x) bit for bit (INT results carry no -0, so compare -q(x) + 0 there)."""
    pos, neg = fq(x, name), fq(-x, name)
    expected = -pos + np.float32(0) if is_int(name) else -pos
    assert_same_bits(neg, expected, name)


@pytest.mark.parametrize("name", ALL_BLOCK)
@given(x=arrays())
def test_monotone_within_a_block(name, x):
    """Inside a block (one shared scale) x_i <= x_j implies q_i <= q_j."""
    y = fq(x, name)
    bs = 16 if name.startswith("nv") else 32
    bs = COLS if name.endswith("channel") else bs
    xb, yb = x.reshape(-1, bs), y.reshape(-1, bs)
    order = np.argsort(xb, axis=1, kind="stable")
    assert np.all(np.diff(np.take_along_axis(yb, order, axis=1), axis=1) >= 0)


@pytest.mark.parametrize("name", MX_FORMATS)
@given(x=arrays(lo=-24, hi=16), k=st.integers(-24, 24))
def test_power_of_two_equivariance(name, x, k):
    """q(2^k x) == 2^k q(x) for UE8M0 formats (scale exponents shift by k; nothing clamps or flushes here)."""
    p = np.float32(2.0**k)
    y, yk = fq(x, name), fq(x * p, name)
    assert_same_bits(yk, y * p, f"{name}, k={k}")


def elem_step(v: np.ndarray, name: str) -> np.ndarray:
    """Grid spacing at |v| in the element domain (float64): 1 for INT, 2^(max(floor(log2|v|), emin) - m) for FP."""
    elem = lb.get_format(name).elem
    if elem.kind == "int":
        return np.ones_like(v)
    e = np.frexp(np.abs(v))[1] - 1
    return np.ldexp(1.0, np.maximum(e, elem.emin) - elem.man_bits)


@pytest.mark.parametrize("name", MX_FORMATS)
@given(x=arrays())
def test_error_at_most_half_a_step(name, x):
    """Ceil scale: nothing clips, so |q - x| <= step(x / 2^e) / 2 * 2^e exactly (closed form, float64)."""
    y = fq(x, name).astype(np.float64)
    qmax = lb.get_format(name).qmax
    amax = np.abs(x.astype(np.float64)).reshape(ROWS, 2, 32).max(-1, keepdims=True)
    e = np.where(amax > 0, np.ceil(np.log2(np.where(amax > 0, amax, 1) / qmax)), 0)
    scale = np.broadcast_to(2.0**e, (ROWS, 2, 32)).reshape(ROWS, COLS)
    v = x / scale
    assert np.all(np.abs(v) <= qmax)
    assert np.all(np.abs(y - x) <= elem_step(v, name) / 2 * scale)


@pytest.mark.parametrize("name", NV_FORMATS)
@given(x=arrays(lo=-10, hi=10))
def test_nv_error_at_most_half_a_step_inside_range(name, x):
    """NV: elements with |x| / (s g) <= Qmax are within half a step of s g, plus float32 rounding of x / (s g) and of
    the product (at most 2^-23 |x|, stated slack); elements beyond Qmax saturate to +-Qmax s g."""
    y = fq(x, name).astype(np.float64)
    _, s, g = nv_reference(x, "fp" if name == "nvfp4" else "int")
    d = np.repeat(s.astype(np.float64) * np.float64(g), 16, axis=1)
    qmax = lb.get_format(name).qmax
    inside = (d > 0) & (np.abs(x) <= qmax * d)
    v = np.where(d > 0, x / np.where(d > 0, d, 1), 0)
    bound = elem_step(v, name) / 2 * d + 2.0**-23 * np.abs(x)
    assert np.all(np.abs(y - x)[inside] <= bound[inside])
    out = (d > 0) & ~inside
    np.testing.assert_allclose(np.abs(y[out]), qmax * d[out], rtol=2.0**-23)


# --- straight-through gradient --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mxfp8", "mxint4", "nvfp4", "int8_channel", "bf16"])
def test_straight_through_gradient(name):
    """d/dx sum(c * fake_quant(x)) == c exactly: with and without a key (identity formats take none), under jit,
    NaN blocks included."""
    rng = np.random.default_rng(30)
    x = jnp.asarray(rng.normal(size=(3, 40)).astype(np.float32)).at[0, 0].set(jnp.nan)
    c = jnp.asarray(rng.normal(size=(3, 40)).astype(np.float32))
    key = jax.random.key(0, impl="rbg")
    keys = (None,) if lb.get_format(name).is_identity else (None, key)
    grads = jax.jit(
        lambda v, k: [
            jax.grad(lambda u, kk=kk: jnp.sum(c * lb.fake_quant(u, name, key=kk)))(v)
            for kk in keys[:1] + (k,) * (len(keys) - 1)
        ]
    )(x, key)
    for g in grads:
        assert_same_bits(g, c, name)


def test_straight_through_gradient_bf16_and_axis():
    x = jnp.linspace(-3, 3, 96, dtype=jnp.bfloat16).reshape(3, 32)
    g = jax.jit(jax.grad(lambda v: jnp.sum(lb.fake_quant(v, "mxfp4", axis=0).astype(jnp.float32) * 2.0)))(x)
    assert g.dtype == jnp.bfloat16 and bool(jnp.all(g == 2.0))


# --- stochastic rounding --------------------------------------------------------------------------------------------

SR_FORMATS = ["mxfp4", "mxfp8_e4m3", "mxfp6_e3m2", "mxint4", "mxint8"]
N_DRAWS = 4096


def sr_block(name: str) -> np.ndarray:
    """One 32-block: the max (fixes the ceil scale), exact grid points, midpoints, subnormal-range and random values."""
    rng = np.random.default_rng(31)
    qmax = lb.get_format(name).qmax
    b = rng.uniform(-qmax, qmax, 32) * 0.37
    b[:6] = [qmax * 0.7, -1.0, 0.5, 0.0, 1.25, -0.3]
    b[6:10] = [2.0**-8, -3 * 2.0**-10, 0.04, -0.1]
    return b.astype(np.float32)


def neighbours(v: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Grid neighbours toward zero and away from zero of element-domain values (gfloat directed rounding / floor)."""
    fi, a = GFLOAT_FI[name], np.abs(v).astype(np.float64)
    if name.startswith("mxint"):
        step = 2.0 ** -(int(name[-1]) - 2)  # gfloat's integer grid k / 2^(b-2)
        return np.floor(a / step) * step, np.ceil(a / step) * step
    return round_ndarray(fi, a, RoundMode.TowardZero, sat=True), round_ndarray(
        fi, a, RoundMode.TowardPositive, sat=True
    )


@pytest.mark.parametrize("name", SR_FORMATS)
def test_stochastic_rounding_unbiased_and_two_neighbours(name):
    """4096 independent draws of one block: every draw is one of the two neighbours; the mean is within 5 sd.

    For v between neighbours lo < hi with p = (v - lo) / (hi - lo), one draw has variance (hi - lo)^2 p (1 - p), so
    the mean of N draws has sd (hi - lo) sqrt(p (1 - p) / N). Bound per element: 5 sd, plus the bias of a uniform on
    the 2^-24 grid (at most 2^-24 (hi - lo)). 32 elements x 5 formats at 5 sd: false alarm < 1e-4.
    """
    b = sr_block(name)
    x = np.tile(b, (N_DRAWS, 1))
    key = jax.random.key(7) if name == "mxfp4" else jax.random.key(7, impl="rbg")
    y = fq(x, name, key=key).astype(np.float64)
    e = mx_scale_exponent(np.abs(b.astype(np.float64)).max(keepdims=True), name, "ceil")
    v = b / 2.0**e
    lo, hi = neighbours(v, name)
    lo, hi = np.copysign(lo, b) * 2.0**e, np.copysign(hi, b) * 2.0**e
    assert np.all((y == lo) | (y == hi)), name
    p = np.where(hi != lo, (b - lo) / np.where(hi != lo, hi - lo, 1), 0)
    sd = np.abs(hi - lo) * np.sqrt(p * (1 - p) / N_DRAWS)
    bound = 5 * sd + 2.0**-24 * np.abs(hi - lo)
    assert np.all(np.abs(y.mean(axis=0) - b) <= bound + 1e-30), name
    assert np.all(y[:, hi == lo] == b[hi == lo])  # grid points never move
    assert len(np.unique(y[:, 0])) == 2  # and the rest really are random


def test_stochastic_rounding_nv_unbiased_inside_range():
    """nvfp4: inside the range the mean of 4096 draws is within 5 sd of x (sd as above, in units of s g)."""
    b = sr_block("mxfp4") * np.float32(1e-3)
    x = np.tile(b, (N_DRAWS // 2, 1))
    y = fq(x, "nvfp4", key=jax.random.key(8, impl="rbg")).astype(np.float64)
    _, s, g = nv_reference(x[:1], "fp")
    d = np.repeat(s.astype(np.float64) * np.float64(g), 16, axis=1)[0]
    v = (b / d).astype(np.float64)
    lo, hi = neighbours(v, "mxfp4")
    inside = np.abs(v) < 6
    lo, hi = np.copysign(lo, b) * d, np.copysign(hi, b) * d
    assert np.all(np.isclose(y, lo, rtol=2.0**-23, atol=0) | np.isclose(y, hi, rtol=2.0**-23, atol=0))
    p = np.where(hi != lo, (b - lo) / np.where(hi != lo, hi - lo, 1), 0)
    sd = np.abs(hi - lo) * np.sqrt(p * (1 - p) / x.shape[0])
    bound = 5 * sd + 2.0**-22 * np.abs(b)
    assert np.all((np.abs(y.mean(axis=0) - b) <= bound)[inside])


def test_stochastic_rounding_deterministic_per_key():
    """Same key, same bits (new and legacy keys); different keys differ; a key differs from RNE somewhere."""
    x = jnp.asarray(np.random.default_rng(32).normal(size=(8, 64)).astype(np.float32))
    f = jax.jit(lambda v, k: lb.fake_quant(v, "mxint8", key=k))
    a, b = f(x, jax.random.key(1)), f(x, jax.random.key(1))
    assert_same_bits(a, b, "same key")
    assert not np.array_equal(np.asarray(a), np.asarray(f(x, jax.random.key(2))))
    assert not np.array_equal(np.asarray(a), fq(x, "mxint8"))
    legacy = jax.random.PRNGKey(1)
    assert_same_bits(f(x, legacy), f(x, legacy), "legacy key")
    assert math.isfinite(float(jnp.sum(a)))

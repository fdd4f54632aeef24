"""Lookup-table elements (nf4, sf4, custom tables) and zero-point INT blocks against independent oracles.

Oracles: scipy quantiles (the NF4 and SF4 table recipes), torch float32 (bitsandbytes' create_normal_map),
exact `fractions.Fraction` nearest-value rounding, numpy float32 / float64 transcriptions of the absmax LUT
quantizer and of the affine zero-point rule, and bitsandbytes' NF4 threshold tree (csrc/kernels.cu,
dQuantizeNF4).

bitsandbytes and lowbit_jax on NF4 codes: bitsandbytes normalises by multiplying with the float32 reciprocal
x * (1 / absmax) and walks a tree of strict `x > t_i` tests on float32 literals t_i (midpoints of the float64
NF4 values, rounded to float32); lowbit_jax divides x / absmax correctly rounded and takes the nearest table
value, ties to the even index. Their codes can differ only where the two normalised values differ, or where the
normalised value equals one of bitsandbytes' literals exactly: at an exact float32 midpoint bitsandbytes breaks
the tie toward the lower code and lowbit_jax to the even index, and where a midpoint is not a float32 and its
literal was rounded above it, bitsandbytes sends that one float32 (nearer to the upper value) down.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax import lax
from jax.extend import core as jcore
from scipy import stats

import lowbit_jax as lb
from lowbit_jax import kernels
from lowbit_jax.formats import NF4_VALUES, SF4_VALUES
from lowbit_jax.kernels import pallas_quantize as pq
from lowbit_jax.kernels import reference
from tests.conftest import assert_same_bits

F32 = np.float32
NF4_OFFSET = 0.9677083  # bitsandbytes create_normal_map's default outermost probability (also SF4's)
# bitsandbytes dQuantizeNF4 (csrc/kernels.cu): the float literals of its `x > t` tree, lowest first.
BNB_NF4_THRESHOLDS = F32(
    [
        -0.8480964004993439,
        -0.6106329262256622,
        -0.4599952697753906,
        -0.33967943489551544,
        -0.23460740596055984,
        -0.13791173323988914,
        -0.045525018125772476,
        0.03979014977812767,
        0.1202552504837513,
        0.2035212516784668,
        0.2920137718319893,
        0.3893125355243683,
        0.5016634166240692,
        0.6427869200706482,
        0.8614784181118011,
    ]
)


def _custom_table() -> tuple[float, ...]:
    """11 increasing float32 values in [-3, 2]: dyadic ones (exact float32 midpoints) and random ones."""
    rng = np.random.default_rng(7)
    dyadic = rng.choice(np.arange(-700, 500), 7, replace=False) / 256.0
    rand = rng.uniform(-2.9, 1.9, 2).astype(F32)
    return tuple(float(v) for v in np.sort(np.concatenate([[-3.0, 2.0], dyadic, rand]).astype(F32)))


CUSTOM = lb.Format("lut11", lb.lut(_custom_table(), "lut11"), block_size=32, scale="fp32")
LUT_FORMATS = {"nf4": lb.get_format("nf4"), "sf4": lb.get_format("sf4"), "lut11": CUSTOM}
ZP_SPECS = {  # spec -> (bits, block (None: the row), scale rule)
    "mxint8:int_range=zero_point": (8, 32, "ue8m0"),
    "int8_channel:int_range=zero_point": (8, None, "fp32"),
    "int(4):block_size=32:scale=fp32:int_range=zero_point": (4, 32, "fp32"),
}


# ------------------------------------------------------------------------------------------------ oracles
def table_recipe(ppf) -> np.ndarray:
    """The NF4 construction in float64: 8 positive and 7 negative quantiles of `ppf` from NF4_OFFSET to 1/2,
    zero, sorted and divided by the largest magnitude."""
    pos = ppf(np.linspace(NF4_OFFSET, 0.5, 9)[:-1])
    neg = -ppf(np.linspace(NF4_OFFSET, 0.5, 8)[:-1])
    v = np.sort(np.concatenate([pos, [0.0], neg]))
    return v / np.abs(v).max()


def nearest_index(v, table) -> np.ndarray:
    """Index of the table value nearest to each float32 v (exact Fraction distances; ties to the even index;
    beyond the ends the end index)."""
    exact = [Fraction(float(t)) for t in table]
    t64 = np.asarray(table, np.float64)
    v64 = np.asarray(v, np.float64)
    out = np.empty(v64.shape, np.int64)
    for i, x in np.ndenumerate(v64):
        hi = int(np.searchsorted(t64, x))  # first value >= x (float64 holds every float32 exactly)
        if hi in (0, len(t64)):
            out[i] = min(hi, len(t64) - 1)
            continue
        below, above = Fraction(float(x)) - exact[hi - 1], exact[hi] - Fraction(float(x))
        out[i] = hi - 1 if below < above else hi if above < below else (hi - 1 if (hi - 1) % 2 == 0 else hi)
    return out


def lut_reference(x, table, block: int):
    """(fake-quantized x, codes, scales) of float32 x (rows, n) in absmax blocks along the last axis, numpy
    float32: s = amax / max|table|, v = x / s (0 where s = 0), the nearest table value times s; blocks holding
    NaN or Inf are NaN, with scale NaN and every code that of the value 0."""
    x = np.asarray(x, F32)
    rows, n = x.shape
    xb = x.reshape(rows, n // block, block)
    finite = np.isfinite(xb).all(-1, keepdims=True)
    amax = np.abs(np.where(finite, xb, F32(0))).max(-1, keepdims=True)
    s = amax / F32(max(abs(table[0]), abs(table[-1])))
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(s > 0, xb / s, F32(0))
    codes = nearest_index(v, table)
    y = np.where(finite, np.asarray(table, F32)[codes] * s, F32(np.nan))
    codes = np.where(finite, codes, nearest_index(np.zeros(1), table)[0])
    return y.reshape(rows, n), codes.reshape(rows, n), np.where(finite, s, np.nan)[..., 0]


def ceil_pow2_exponent(span: np.ndarray, qmax: int) -> np.ndarray:
    """The smallest integer e with span <= qmax * 2^e (float64, exact for float32 spans); 0 for span 0."""
    safe = np.where(span > 0, span, 1.0).astype(np.float64)
    e = np.ceil(np.log2(safe / qmax))
    e = e + (safe > qmax * 2.0**e) - (safe <= qmax * 2.0 ** (e - 1))  # fix log2's rounding either way
    return np.where(span > 0, e, 0.0)


def zero_point_reference(x, bits: int, block: int | None, scale: str):
    """(fake-quantized x, codes, zero points, scales) of float32 x (rows, n), blocks along the last axis
    (None: the whole row), the affine rule: lo = min(x, 0), hi = max(x, 0), span = hi - lo (float32);
    s = the smallest 2^e with span <= (2^b - 1) 2^e (UE8M0 ceil, float64, exact) or span / (2^b - 1) (FP32,
    numpy float32 division); z = clip(round(-lo / s), 0, 2^b - 1); q = clip(round(x / s) + z, 0, 2^b - 1);
    value (q - z) s. Rounding is half to even (np.round)."""
    x = np.asarray(x, F32)
    rows, n = x.shape
    block = n if block is None else block
    xb = x.reshape(rows, n // block, block)
    qmax = 2**bits - 1
    lo = np.minimum(xb.min(-1, keepdims=True), F32(0))
    hi = np.maximum(xb.max(-1, keepdims=True), F32(0))
    span = hi - lo
    if scale == "ue8m0":
        s = np.where(span > 0, 2.0 ** ceil_pow2_exponent(span, qmax), 0.0)  # float64: x / s, (q - z) s exact
        xs, los = xb.astype(np.float64), lo.astype(np.float64)
    else:
        s, xs, los = span / F32(qmax), xb, lo
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.clip(np.round(np.where(s > 0, -los / s, 0)), 0, qmax)
        q = np.clip(np.round(np.where(s > 0, xs / s, 0)) + z, 0, qmax)
    y = ((q - z) * s).astype(F32)
    return y.reshape(rows, n), q.astype(np.int64).reshape(rows, n), z[..., 0].astype(np.int64), s[..., 0]


# ------------------------------------------------------------------------------------------------ helpers
@functools.cache
def _fq_qz(fmt, axis: int):
    """One jitted function for fake_quant and quantize (one compilation per format, shape and key use)."""
    return jax.jit(lambda x, key: (lb.fake_quant(x, fmt, axis, key=key), lb.quantize(x, fmt, axis, key=key)))


def fq(x, fmt, key=None, axis: int = -1) -> np.ndarray:
    """Jitted fake_quant as numpy (names and Format objects share one cache entry)."""
    return np.asarray(_fq_qz(lb.get_format(fmt), axis)(jnp.asarray(x), key)[0])


def qz(x, fmt, key=None, axis: int = -1):
    """Jitted quantize (a QArray)."""
    return _fq_qz(lb.get_format(fmt), axis)(jnp.asarray(x), key)[1]


def as_int(a) -> np.ndarray:
    return np.asarray(a).astype(np.int64)


def anchor_of(table) -> float:
    """The table value of largest magnitude: a block holding it has amax = max|table|, so scale 1."""
    return table[0] if abs(table[0]) >= abs(table[-1]) else table[-1]


def midpoint_probes(table) -> tuple[np.ndarray, np.ndarray]:
    """float32 points around every midpoint of neighbours i, i+1 and their codes by the rule: an exact float32
    midpoint -> the even index, one ulp above -> i+1, one below -> i; a midpoint that is no float32: the
    float32 below it -> i, the one above -> i+1."""
    up, down = F32(np.inf), F32(-np.inf)
    points, want = [], []
    for i, (a, b) in enumerate(zip(table, table[1:])):
        mid = (Fraction(a) + Fraction(b)) / 2
        m = F32(mid)
        if Fraction(float(m)) == mid:
            points += [m, np.nextafter(m, up), np.nextafter(m, down)]
            want += [i if i % 2 == 0 else i + 1, i + 1, i]
        else:
            lo = m if Fraction(float(m)) < mid else np.nextafter(m, down)
            points += [lo, np.nextafter(lo, up)]
            want += [i, i + 1]
    return np.asarray(points, F32), np.asarray(want)


def lut_input(fmt, seed: int = 0) -> np.ndarray:
    """float32 (4, 4 blocks): Student-t blocks over a wide magnitude range; block (0, 0): the anchor then the
    midpoint probes (scale 1); block (0, 1): the anchor, -anchor and values near the ends (scale 1: an
    asymmetric table saturates -anchor); block (1, 1) zero; NaN in block (2, 0); -Inf in block (3, 2)."""
    rng = np.random.default_rng(seed)
    block, table = fmt.block_size, fmt.elem.values
    x = rng.standard_t(4, (4, 4 * block)) * np.exp2(rng.integers(-20, 20, (4, 4))).repeat(block, 1)
    x = x.astype(F32)
    points, _ = midpoint_probes(table)
    a = anchor_of(table)
    x[0, :block] = 0.0
    x[0, : len(points) + 1] = [a, *points]
    x[0, block : 2 * block] = rng.uniform(table[0], table[-1], block).astype(F32)
    x[0, block : block + 5] = [a, -a, table[0], table[-1], F32(-0.999 * a)]
    x[1, block : 2 * block] = 0.0
    x[2, 5] = np.nan
    x[3, 2 * block + 1] = -np.inf
    return x


def jaxpr_facts(closed) -> tuple[set[str], int]:
    """(primitive names, highest rank of any value) of a closed jaxpr and the jaxprs nested in it."""
    names, rank = set(), 0
    todo = [closed.jaxpr]
    while todo:
        jaxpr = todo.pop()
        for eqn in jaxpr.eqns:
            names.add(eqn.primitive.name)
            rank = max([rank] + [len(v.aval.shape) for v in eqn.outvars])
            for p in eqn.params.values():
                for sub in p if isinstance(p, tuple | list) else (p,):
                    if isinstance(sub, jcore.ClosedJaxpr):
                        todo.append(sub.jaxpr)
                    elif isinstance(sub, jcore.Jaxpr):
                        todo.append(sub)
    return names, rank


# ------------------------------------------------------------------------------------------------ tables
def test_sf4_table_is_the_student_t5_recipe():
    """SF4_VALUES: the NF4 construction with t(nu=5) quantiles (scipy, float64), rounded to six decimals."""
    got = np.round(table_recipe(lambda p: stats.t.ppf(p, 5)), 6)
    np.testing.assert_array_equal(got, np.asarray(SF4_VALUES))
    assert lb.get_format("sf4").elem.values == tuple(float(F32(v)) for v in SF4_VALUES)


def test_nf4_table_is_the_normal_recipe():
    """NF4_VALUES: the construction with N(0, 1) quantiles. In float64 it agrees to within float32 rounding
    (at most 2^-23 absolute): bitsandbytes' create_normal_map takes the probabilities from torch.linspace in
    float32 and divides in float32, and that float32 recipe reproduces the table bit for bit."""
    nf4 = np.asarray(NF4_VALUES)
    np.testing.assert_allclose(table_recipe(stats.norm.ppf), nf4, rtol=0, atol=2.0**-23)
    pos = stats.norm.ppf(torch.linspace(NF4_OFFSET, 0.5, 9)[:-1]).tolist()
    neg = (-stats.norm.ppf(torch.linspace(NF4_OFFSET, 0.5, 8)[:-1])).tolist()
    v = torch.Tensor(pos + [0.0] + neg).sort().values
    v = (v / v.max()).numpy()
    assert_same_bits(v, nf4.astype(F32), "bitsandbytes create_normal_map")
    assert lb.get_format("nf4").elem.values == tuple(float(F32(t)) for t in NF4_VALUES)


# ------------------------------------------------------------------------------------------------ LUT rounding
@pytest.mark.parametrize("name", list(LUT_FORMATS))
def test_lut_midpoints_tie_to_even_and_neighbours_go_their_way(name):
    """Every midpoint between neighbours: ties to the even index, one float32 ulp either side to that side
    (`midpoint_probes`), on the element and through lb.quantize / fake_quant (a block with scale 1)."""
    fmt = LUT_FORMATS[name]
    table = fmt.elem.values
    points, want = midpoint_probes(table)
    mids = [(Fraction(a) + Fraction(b)) / 2 for a, b in zip(table, table[1:])]
    assert sum(Fraction(float(F32(m))) == m for m in mids) >= 2, "the tie branch needs exact float32 midpoints"
    assert len(points) < fmt.block_size
    np.testing.assert_array_equal(nearest_index(points, table), want)  # the Fraction oracle agrees with the rule
    np.testing.assert_array_equal(as_int(jax.jit(fmt.elem.index)(jnp.asarray(points))), want)
    x = lut_input(fmt)
    probes = np.s_[0, 1 : len(points) + 1]
    np.testing.assert_array_equal(as_int(qz(x, fmt).codes)[probes], want)
    assert_same_bits(fq(x, fmt)[probes], np.asarray(table, F32)[want], f"{name} midpoints")


@pytest.mark.parametrize("name", list(LUT_FORMATS))
def test_lut_saturates_and_nan_blocks_are_nan(name):
    """Values beyond the table's ends take the end codes; a block holding NaN or Inf is all NaN (scale NaN,
    codes those of the value 0) and leaves the other blocks alone."""
    fmt = LUT_FORMATS[name]
    table, block = fmt.elem.values, fmt.block_size
    big = jnp.asarray([np.inf, 1e30, 3.0 * fmt.elem.max, -np.inf, -1e30, -3.0 * fmt.elem.max], jnp.float32)
    np.testing.assert_array_equal(as_int(fmt.elem.index(big)), [len(table) - 1] * 3 + [0] * 3)
    np.testing.assert_array_equal(np.asarray(fmt.elem.round(big)), [table[-1]] * 3 + [table[0]] * 3)
    x = lut_input(fmt)
    y, q = fq(x, fmt), qz(x, fmt)
    a = anchor_of(table)
    want = F32([a, table[-1] if a < 0 else table[0], table[0], table[-1]])  # -anchor saturates if asymmetric
    assert_same_bits(y[0, block : block + 4], want, "saturation")
    bad = np.zeros(x.shape, bool)
    bad[2, :block], bad[3, 2 * block : 3 * block] = True, True
    assert np.isnan(y[bad]).all() and not np.isnan(y[~bad]).any()
    np.testing.assert_array_equal(as_int(q.codes)[bad], nearest_index(np.zeros(1), table)[0])
    scales = np.asarray(q.scales)
    assert np.isnan(scales[2, 0]) and np.isnan(scales[3, 2]) and np.isfinite(scales).sum() == scales.size - 2
    assert_same_bits(np.asarray(lb.dequantize(q)), y, "dequantize(quantize)")


@pytest.mark.parametrize("name", list(LUT_FORMATS))
def test_lut_random_inputs_match_the_fraction_oracle(name):
    """fake_quant values, QArray codes (uint4 indices) and FP32 absmax scales on `lut_input` equal the numpy
    float32 / Fraction nearest-value oracle bit for bit."""
    fmt = LUT_FORMATS[name]
    x = lut_input(fmt)
    y, codes, scales = lut_reference(x, fmt.elem.values, fmt.block_size)
    q = qz(x, fmt)
    assert q.codes.dtype == jnp.uint4 and q.scales.dtype == jnp.float32
    np.testing.assert_array_equal(as_int(q.codes), codes)
    assert_same_bits(np.asarray(q.scales), scales, f"{name} scales")
    assert_same_bits(fq(x, fmt), y, f"{name} values")


def nf4_data(seed: int) -> np.ndarray:
    """float32 (4, 256) normal rows of different power-of-two magnitudes (four NF4 blocks per row)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((4, 256)) * np.exp2(rng.integers(-8, 8, (4, 1)))).astype(F32)


def test_bitsandbytes_nf4_codes_agree_off_their_thresholds():
    """bitsandbytes' NF4 codes (x * (1/absmax), strict `>` tree) equal lowbit_jax's on random blocks wherever
    both normalise x to the same float32; fed exactly its own literals (block (0, 0), absmax 1), bitsandbytes
    differs at the four exact midpoints whose even neighbour is the upper one (ties) and at the six literals
    rounded above their midpoint, always by giving the lower code."""
    x = nf4_data(3)
    x[0, :64] = 0.0
    x[0, :16] = [1.0, *BNB_NF4_THRESHOLDS]
    xb = x.reshape(4, 4, 64)
    absmax = np.abs(xb).max(-1, keepdims=True)
    normed_bnb = xb * (F32(1) / absmax)
    bnb = (normed_bnb[..., None] > BNB_NF4_THRESHOLDS).sum(-1).reshape(x.shape)
    y_bnb = (F32(NF4_VALUES)[bnb.reshape(xb.shape)] * absmax).reshape(x.shape)  # bitsandbytes' dequantization
    same = (normed_bnb == xb / absmax).reshape(x.shape)
    same[0, :64] = False
    codes, y = as_int(qz(x, "nf4").codes), fq(x, "nf4")
    assert same.mean() > 0.5
    np.testing.assert_array_equal(codes[same], bnb[same])
    assert_same_bits(y[same], y_bnb[same], "bitsandbytes dequantized values")
    lb_t, bnb_t = codes[0, 1:16], bnb[0, 1:16]
    np.testing.assert_array_equal(lb_t, nearest_index(BNB_NF4_THRESHOLDS, NF4_VALUES))
    differ = np.flatnonzero(lb_t != bnb_t)
    np.testing.assert_array_equal(differ, [0, 1, 3, 4, 7, 9, 11, 12, 13, 14])
    np.testing.assert_array_equal(lb_t[differ] - bnb_t[differ], 1)


def sr_data() -> tuple[np.ndarray, np.ndarray]:
    """(x, lower neighbour indices): 2048 equal NF4 rows of 1.0 (amax 1: scale 1) and 63 values at fractions
    0 ... 0.97 of the way between random neighbours."""
    table = np.asarray(NF4_VALUES, F32)
    rng = np.random.default_rng(5)
    lo_idx = rng.integers(0, len(table) - 1, 63)
    frac = rng.choice([0.0, 0.03, 0.25, 0.5, 0.7, 0.97], 63)
    v = (table[lo_idx] + frac * (table[lo_idx + 1] - table[lo_idx])).astype(F32)
    return np.tile(np.concatenate([[F32(1)], v]).astype(F32), (2048, 1)), lo_idx


def test_lut_stochastic_rounding_is_unbiased():
    """NF4 with a key: each element goes to one of its two neighbours, up with probability (v - lo) / (hi - lo):
    over 2048 independent draws (rows of one array) the frequency is within 5 binomial standard deviations
    (plus the 2^-24 grid of the uniforms) and so is the mean; table values never move; the same key gives the
    same bits, and dequantize(quantize(x, key)) == fake_quant(x, key)."""
    table = np.asarray(NF4_VALUES, F32)
    x, lo_idx = sr_data()
    v = x[0, 1:]
    key = jax.random.key(42)
    y = fq(x, "nf4", key)[:, 1:]
    a, b = table[lo_idx], table[lo_idx + 1]
    assert ((y == a) | (y == b)).all()
    exact = lambda t: Fraction(float(t))  # noqa: E731
    p = np.array([float((exact(vi) - exact(ai)) / (exact(bi) - exact(ai))) for vi, ai, bi in zip(v, a, b)])
    sigma = np.sqrt(p * (1 - p) / len(x))
    freq = (y == b).mean(0)
    assert (np.abs(freq - p) <= 5 * sigma + 2.0**-24).all(), np.abs(freq - p) / np.maximum(sigma, 1e-12)
    np.testing.assert_array_less(np.abs(y.astype(np.float64).mean(0) - v), 5 * sigma * (b - a) + 1e-12)
    assert (y[:, p == 0] == v[p == 0]).all() and (p == 0).any()
    assert_same_bits(fq(x, "nf4", key)[:, 1:], y, "same key")
    assert not np.array_equal(fq(x, "nf4", jax.random.key(43))[:, 1:], y)
    assert_same_bits(np.asarray(lb.dequantize(qz(x, "nf4", key)))[:, 1:], y, "SR dequantize(quantize)")


# ------------------------------------------------------------------------------------------------ kernels
def test_small_tables_lower_to_compares_and_selects():
    """Tables of at most SELECT_MAX (64) values, IF6's stretched INT6 grid (63) among them, trace to elementwise
    compares and selects (no gather, sort or rank-raising broadcast, no captured constants), which Pallas kernels
    can lower; larger tables keep the gather."""
    v = jnp.ones((4, 8), jnp.float32)
    for name, fmt in {**LUT_FORMATS, "if6_int": lb.get_format("if6_int")}.items():
        e = fmt.elem
        for fn in (
            e.round,
            e.encode,
            e.code_bytes,
            lambda a, e=e: e.round(a, a * 0.5),
            lambda a, e=e: e.decode(e.encode(a)),
        ):
            closed = jax.make_jaxpr(fn)(v)
            names, rank = jaxpr_facts(closed)
            assert not names & {"gather", "sort", "scatter", "dynamic_slice", "while"}, (name, names)
            assert rank <= 2 and not closed.consts, (name, rank, closed.consts)
    big = lb.lut(np.linspace(-1.0, 1.0, 65))
    assert "gather" in jaxpr_facts(jax.make_jaxpr(big.round)(v))[0]


PALLAS_CASES = [("nf4", "fake", 42), ("nf4", "quantize", None), ("sf4", "fake", None), ("lut11", "quantize", None)]


@pytest.mark.parametrize("name,what,seed", PALLAS_CASES)
def test_lut_pallas_equals_xla(name, what, seed):
    """lb.fake_quant / lb.quantize with impl='pallas' (interpret mode) equal impl='xla' bit for bit: values,
    codes and scales, round to nearest and stochastic (seed: the key's; the quantize kernel's stochastic path
    is checked with explicit bits in the next test)."""
    fmt = LUT_FORMATS[name]
    key = None if seed is None else jax.random.key(seed)
    x = jnp.asarray(lut_input(fmt) if key is None else sr_data()[0])  # SR: the compiled XLA case of the SR test
    if what == "fake":
        assert_same_bits(lb.fake_quant(x, fmt, key=key, impl="pallas"), fq(x, fmt, key), f"{name} fake_quant")
        return
    qp, qx = lb.quantize(x, fmt, key=key, impl="pallas"), qz(x, fmt, key)
    assert qp.codes.dtype == qx.codes.dtype == jnp.uint4
    np.testing.assert_array_equal(as_int(qp.codes), as_int(qx.codes))
    assert_same_bits(qp.scales, qx.scales, f"{name} scales")


def test_lut_triton_rules_byte_outputs_and_qmatmul_on_cpu():
    """The GPU code path of the quantize kernel (Triton-portable primitive rules, byte outputs converted
    outside) on a LUT format with stochastic rounding (explicit random bits) equals the core; the quantized
    matmul kernel decodes
    NF4 codes in the tile and agrees with its reference to float32 rounding (different summation order)."""
    fmt = CUSTOM
    x = jnp.asarray(lut_input(fmt))
    bits = jnp.asarray(np.random.default_rng(4).integers(0, 2**32, x.shape, dtype=np.uint32))
    kw = dict(rbits=bits, tiles=pq.Tiles(blocks=4), backend="interpret_portable")
    got = pq.quantize_pallas(x, fmt, byte_outputs=True, **kw)
    want = jax.jit(reference.quantize_ref, static_argnames="fmt")(x, fmt=fmt, rbits=bits)
    assert got[0].dtype == want[0].dtype and got[2] is None and want[2] is None
    np.testing.assert_array_equal(as_int(got[0]), as_int(want[0]))
    assert_same_bits(got[1], want[1], "scales")
    qa, qb = qz(nf4_data(1), "nf4"), qz(nf4_data(2), "nf4")
    ref = kernels.qmatmul(qa, qb, impl="xla")
    np.testing.assert_allclose(kernels.qmatmul(qa, qb, impl="pallas"), ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


# ------------------------------------------------------------------------------------------------ nf4 end to end
class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(16, name="proj")(x)


def _gemm(a, b_t):
    """a . b_t^T at HIGHEST precision, as qdot_general runs the canonical GEMM (M, K) . (N, K)^T."""
    return lax.dot_general(jnp.asarray(a), jnp.asarray(b_t), (((1,), (1,)), ((), ())), precision="highest")


def _dense_params(kernel: np.ndarray, seed: int) -> dict:
    """Parameters of _Tiny: the given kernel (K, 16) and a numpy-drawn bias."""
    bias = np.random.default_rng(seed).standard_normal(kernel.shape[1]).astype(F32)
    return {"params": {"proj": {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}}}


def _dense_oracle(x, params, ref_fn):
    """A Dense layer's output from oracle-quantized operands: x along its features, the kernel along its
    input axis (its columns), plus the bias."""
    w = np.asarray(params["params"]["proj"]["kernel"])
    return _gemm(ref_fn(x), ref_fn(w.T)) + params["params"]["proj"]["bias"].reshape(1, -1)


def test_nf4_end_to_end():
    """nf4: FP32 block-64 scales equal amax / 1.0 exactly, codes are uint4 table indices (the oracle's),
    dequantize(quantize) == fake_quant bitwise, qdot_general direct_cast == the dot of the oracle's
    fake-quantized operands, and the Flax interceptor quantizes a Dense layer the same way."""
    x = nf4_data(1)
    q = qz(x, "nf4")
    assert q.codes.dtype == jnp.uint4 and q.codes.shape == x.shape and q.scales.shape == (4, 4)
    assert_same_bits(np.asarray(q.scales), np.abs(x.reshape(4, 4, 64)).max(-1), "scale = amax")
    y_ref, codes_ref, _ = lut_reference(x, NF4_VALUES, 64)
    np.testing.assert_array_equal(as_int(q.codes), codes_ref)
    assert_same_bits(fq(x, "nf4"), y_ref, "fake_quant vs oracle")
    assert_same_bits(np.asarray(lb.dequantize(q)), fq(x, "nf4"), "dequantize(quantize) vs fake_quant")
    ref_fn = lambda a: lut_reference(a, NF4_VALUES, 64)[0]  # noqa: E731
    w = np.random.default_rng(12).standard_normal((256, 16)).astype(F32)
    y = lb.qdot_general(x, w, (((1,), (0,)), ((), ())), lb.QDotConfig.direct_cast("nf4"))
    assert_same_bits(y, _gemm(ref_fn(x), ref_fn(w.T)), "qdot_general direct_cast(nf4)")
    model = _Tiny()
    params = _dense_params(w, 0)  # the kernel of the qdot_general call above: its compiled GEMM is reused
    with lb.quantized([(".*", "direct_cast:nf4")]) as report:
        yq = model.apply(params, jnp.asarray(x))
    assert report.quantized == {"proj": "direct_cast(nf4)"}
    assert_same_bits(yq, _dense_oracle(x, params, ref_fn), "interceptor nf4")


# ------------------------------------------------------------------------------------------------ zero point
def zero_point_input(bits: int, seed: int = 0) -> np.ndarray:
    """float32 (8, 64) rows of two 32-blocks: symmetric, ReLU, all-negative, offset-positive, half-zero,
    all-zero, uniform with zeros, and a row of exact half-integer ties with scale 1 (span 2^b - 1)."""
    rng = np.random.default_rng(seed)
    g = lambda: rng.standard_normal(64)  # noqa: E731
    qmax = 2**bits - 1
    lo, hi = -(qmax // 3), qmax - qmax // 3
    ties = np.resize(np.array([lo, hi, 0.5, 1.5, 2.5, -0.5, lo + 0.5, hi - 0.5, 3.0, 0.0]), 32)
    rows = [
        g(),
        np.maximum(g(), 0) * 7,
        -np.abs(g()) * 100,
        (g() + 3) * 1e-3,
        np.concatenate([np.zeros(32), np.abs(g()[:32]) * 2.0**10]),
        np.zeros(64),
        np.where(rng.random(64) < 0.3, 0.0, rng.uniform(-1, 5, 64)),
        np.tile(ties, 2),
    ]
    return np.stack(rows).astype(F32)


@pytest.mark.parametrize("spec", list(ZP_SPECS))
def test_zero_point_matches_the_affine_reference(spec):
    """fake_quant, codes, zero points and scales equal the numpy reference of the affine rule bit for bit;
    UE8M0 scales of zero-point blocks are stored as the scale of the unsigned integer codes (OCP defines no
    zero-point element, so there is no fixed-point factor to fold in)."""
    bits, block, scale = ZP_SPECS[spec]
    fmt = lb.get_format(spec)
    x = zero_point_input(bits)
    y, codes, zeros, s = zero_point_reference(x, bits, block, scale)
    q = qz(x, fmt)
    assert q.codes.dtype == (jnp.uint8 if bits == 8 else jnp.uint4)
    assert q.zero_points is not None and q.zero_points.dtype == q.codes.dtype
    assert q.zero_points.shape == q.scales.shape == zeros.shape
    np.testing.assert_array_equal(as_int(q.codes), codes)
    np.testing.assert_array_equal(as_int(q.zero_points), zeros)
    stored = np.asarray(q.scales.astype(jnp.float32))
    nonzero = s > 0
    if scale == "ue8m0":
        assert q.scales.dtype == jnp.float8_e8m0fnu
        np.testing.assert_array_equal(stored[nonzero], s[nonzero])
    else:
        assert_same_bits(stored, s.astype(F32), "FP32 scales")
    assert_same_bits(fq(x, fmt), y, f"{spec} values")
    assert_same_bits(np.asarray(lb.dequantize(q)), y, f"{spec} dequantize(quantize)")
    # the tie row really has scale 1 and exact half-integers (the reference rounds them half to even)
    assert (s[7] == 1.0).all() and (np.abs(x[7] % 1) == 0.5).sum() >= 8


@pytest.mark.parametrize("spec", list(ZP_SPECS))
def test_zero_point_zero_is_exact_codes_unsigned_and_roundtrip(spec):
    """Zero stays +0 (its code is the block's zero point), codes lie in [0, 2^b - 1], NaN blocks are all NaN
    with codes and zero point 0, and dequantize(quantize(x)) == fake_quant(x) bitwise."""
    bits, block, _ = ZP_SPECS[spec]
    fmt = lb.get_format(spec)
    x = zero_point_input(bits, seed=1)
    x[2, 40] = np.nan
    q, y = qz(x, fmt), fq(x, fmt)
    codes, zeros = as_int(q.codes), as_int(q.zero_points)
    width = x.shape[1] if block is None else block
    zero_of = np.repeat(zeros, width, axis=1)
    finite = np.repeat(np.isfinite(x.reshape(8, -1, width)).all(-1), width, axis=1)
    is_zero = (x == 0) & finite
    assert is_zero.sum() > 100
    assert_same_bits(y[is_zero], np.zeros(is_zero.sum(), F32), "zeros")
    np.testing.assert_array_equal(codes[is_zero], zero_of[is_zero])
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1 and codes.max() == 2**bits - 1
    assert np.isnan(y[~finite]).all() and not np.isnan(y[finite]).any()
    assert (codes[~finite] == 0).all() and (zero_of[~finite] == 0).all()
    assert_same_bits(np.asarray(lb.dequantize(q)), y, "dequantize(quantize)")


def relu_data() -> np.ndarray:
    """float32 (8, 64) ReLU outputs: half the entries exactly zero, the rest positive with per-row scales."""
    rng = np.random.default_rng(4)
    return (np.maximum(rng.standard_normal((8, 64)), 0) * np.exp2(rng.integers(-3, 3, (8, 1)))).astype(F32)


# The zero-point step is 7/15 (INT4, FP32 scales) or 127/255 (INT8, FP32) of the symmetric one, at most 1/2 with
# UE8M0 ceil scales; the squared error shrinks by about the square (measured here: 0.21, 0.24, 0.27).
SKEW_BOUND = 0.3


def test_zero_point_beats_symmetric_int_on_skewed_data():
    """On all-positive (ReLU) blocks the zero-point grid spends all 2^b codes on [0, max], so its mean squared
    error is below SKEW_BOUND times that of symmetric INT(b) with the same block and scale rule."""
    x = relu_data()
    for sym in ("int(4):block_size=32:scale=fp32", "int8_channel", "mxint8"):
        e_sym = np.mean((np.asarray(lb.fake_quant(x, sym)) - x) ** 2)
        e_zp = np.mean((fq(x, sym + ":int_range=zero_point") - x) ** 2)
        assert e_zp < SKEW_BOUND * e_sym, (sym, e_zp / e_sym)


def test_zero_point_qdot_general_and_interceptor():
    """qdot_general direct_cast with per-channel zero-point INT8 equals the dot of the reference's
    fake-quantized operands, and the Flax interceptor runs an MXINT8 zero-point Dense layer the same way."""
    x = relu_data()
    w = np.random.default_rng(6).standard_normal((64, 16)).astype(F32)
    ref_ch = lambda a: zero_point_reference(a, 8, None, "fp32")[0]  # noqa: E731
    config = lb.QDotConfig.direct_cast("int8_channel:int_range=zero_point")
    y = lb.qdot_general(x, w, (((1,), (0,)), ((), ())), config)
    assert_same_bits(y, _gemm(ref_ch(x), ref_ch(w.T)), "qdot_general zero point")
    model = _Tiny()
    params = _dense_params(w, 1)
    with lb.quantized([(".*", "direct_cast:mxint8:int_range=zero_point")]) as report:
        yq = model.apply(params, jnp.asarray(x))
    assert list(report.quantized) == ["proj"]
    ref_mx = lambda a: zero_point_reference(a, 8, 32, "ue8m0")[0]  # noqa: E731
    assert_same_bits(yq, _dense_oracle(x, params, ref_mx), "interceptor zero point")


def test_zero_point_has_no_pallas_kernel():
    x = jnp.ones((2, 64), jnp.float32)
    for spec in ZP_SPECS:
        with pytest.raises(NotImplementedError, match="zero-point"):
            lb.fake_quant(x, spec, impl="pallas")
        with pytest.raises(NotImplementedError, match="zero-point"):
            lb.quantize(x, spec, impl="pallas")


@pytest.mark.parametrize("spec", ["int8_channel:int_range=zero_point", "mxint8:int_range=zero_point"])
def test_zero_point_span_beyond_float32_stays_finite(spec):
    """A block spanning -3e38 .. 3e38 (max - min overflows float32) comes back finite, not NaN; its largest
    magnitude keeps its sign; a block holding Inf is still all NaN."""
    x = np.zeros((2, 32), F32)
    x[0, :3] = [3e38, -3e38, 1.0]
    x[1, :2] = [np.inf, 1.0]
    y = np.asarray(lb.fake_quant(x, spec, axis=-1))
    assert np.isfinite(y[0]).all() and y[0, 0] > 0 > y[0, 1]
    assert np.isnan(y[1]).all()

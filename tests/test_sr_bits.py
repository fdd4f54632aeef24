"""Stochastic rounding with a limited number of random bits (`sr_bits=n`) against independent oracles.

The rule under test (lowbit_jax.rounding): with n random bits an element rounds up (away from zero) with
probability floor(frac 2^n) / 2^n of a step, frac its exact position between its two grid neighbours, where frac
lies on the 2^-24 grid (every element at least half a step from zero); the default (24-bit uniforms u = k / 2^24,
up iff u < frac) is unchanged and sr_bits=24 is it bit for bit.

Oracles: an exact numpy / Fraction transcription of that rule, fed the raw random bits the library draws for a key
(kernels.sr_bits) or chosen bit patterns, with the element grid and the UE8M0 "ceil" block scale written out here
(2^e the smallest power of two with amax <= Qmax 2^e, docs/formats.md); and, for the statistics, P(up) counted
over many identical elements.

Why the statistical tests are not flaky: every key is fixed, so each test is one deterministic computation. The
bounds are 5 standard errors of a binomial proportion, sqrt(p (1 - p) / N); a correct implementation lies outside
them with probability below 6e-7 per check, so a fixed-key draw that passes is not a lucky one, and a rule off by
the predicted biases (up to 2^-n of a step) is outside them by many standard errors at these N. Where p is 0 or 1
the check is exact.
"""

from __future__ import annotations

import bisect
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lowbit_jax as lb
from lowbit_jax import codec, kernels, rounding

E2M1_MAGS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
INT8_MAGS = tuple(float(k) for k in range(128))
GRIDS = {"mxint8": (INT8_MAGS, 127.0), "mxfp4": (E2M1_MAGS, 6.0)}  # magnitudes of the grid, Qmax
BLOCK = 32


# --- the oracle -------------------------------------------------------------------------------------------------------


def ceil_scale_exp(amax: float, qmax: float) -> int:
    """The smallest integer e with amax <= qmax 2^e (UE8M0 "ceil", exact Fraction arithmetic)."""
    a, q = Fraction(amax), Fraction(qmax)
    e = math.floor(math.log2(amax / qmax)) - 2
    while a > q * Fraction(2) ** e:
        e += 1
    return e


def p_up(frac: Fraction, n: int | None) -> Fraction:
    """P(round up) of the rule: ceil(frac 2^24) / 2^24 for the default, floor(frac24 2^n) / 2^n for n bits."""
    c24 = math.ceil(frac * 2**24)
    if n is None:
        return Fraction(c24, 2**24)
    return Fraction(c24 // 2 ** (24 - n), 2**n)


def up_decision(frac: Fraction, bits: int, n: int | None) -> bool:
    """Whether the element with this fraction rounds up, given its uint32 random bits."""
    c24 = math.ceil(frac * 2**24)
    if n is None:
        return (bits >> 8) < c24
    return (bits >> (32 - n)) < c24 // 2 ** (24 - n)


def neighbours(mag: Fraction, grid: tuple[float, ...]) -> tuple[Fraction, Fraction]:
    """The grid magnitudes lo <= mag < hi (hi = lo at the top); grid sorted, mag <= grid[-1]."""
    i = bisect.bisect_right(grid, mag) - 1  # float / Fraction comparisons are exact
    return Fraction(grid[i]), Fraction(grid[min(i + 1, len(grid) - 1)])


def oracle_fake_quant(x: np.ndarray, fmt: str, bits: np.ndarray, n: int | None) -> np.ndarray:
    """fake_quant of float32 x (rows of whole 32-element blocks, UE8M0 ceil) with stochastic rounding from `bits`."""
    grid, qmax = GRIDS[fmt]
    out = np.zeros(x.shape, np.float32)
    for r in range(x.shape[0]):
        for b0 in range(0, x.shape[1], BLOCK):
            blk = x[r, b0 : b0 + BLOCK]
            amax = float(np.max(np.abs(blk)))
            e = ceil_scale_exp(amax, qmax) if amax > 0 else 0
            for i, v in enumerate(blk):
                mag = abs(Fraction(float(v))) / Fraction(2) ** e
                lo, hi = neighbours(mag, grid)
                frac = Fraction(0) if hi == lo else (mag - lo) / (hi - lo)
                q = hi if up_decision(frac, int(bits[r, b0 + i]), n) else lo
                out[r, b0 + i] = math.copysign(float(q * Fraction(2) ** e), float(v))
    return out


def assert_equal_values(got, want):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    bad = np.flatnonzero(got != want)  # -0 == +0: INT grids have no signed zero
    assert bad.size == 0, f"{bad.size} elements differ, first at {bad[0]}: {got.flat[bad[0]]} vs {want.flat[bad[0]]}"


# --- data -------------------------------------------------------------------------------------------------------------


def random_blocks(seed: int, rows: int = 8, blocks: int = 2) -> np.ndarray:
    """Normal data with a spread of magnitudes, including elements far below half a step (their fractions have
    bits below 2^-24, where the n-bit rule and the default part)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, blocks * BLOCK)).astype(np.float32)
    x *= np.float32(2.0) ** rng.integers(-3, 4, size=x.shape).astype(np.float32)
    x[:, 3::7] *= np.float32(1e-5)
    return x


# --- the exact rule ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["mxint8", "mxfp4"])
@pytest.mark.parametrize("n", [None, 1, 2, 3, 8, 16, 23, 24])
def test_matches_the_oracle_element_by_element(fmt, n):
    """lb.fake_quant(key, sr_bits=n) equals the exact rule applied to the bits the library draws for the key."""
    x = random_blocks(7 + (n or 0))
    key = jax.random.key(100 + (n or 0))
    bits = np.asarray(kernels.sr_bits(key, x.shape, lb.get_format(fmt), -1))  # the raw bits (no n applied)
    want = oracle_fake_quant(x, fmt, bits, n)
    assert_equal_values(lb.fake_quant(jnp.asarray(x), fmt, key=key, sr_bits=n), want)
    q = lb.quantize(jnp.asarray(x), fmt, key=key, sr_bits=n)
    assert_equal_values(lb.dequantize(q), want)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
def test_rounds_up_for_exactly_floor_frac_2n_bit_patterns(n):
    """Over all 2^n values of the top n random bits (low bits random), an element with fraction frac rounds up for
    exactly floor(frac 2^n) of them: MXINT8 blocks with amax 127 (step 1) hold elements at chosen fractions."""
    fracs = [0.3, 0.5, 0.7, 0.1, 0.9, 1 / 3, 0.0, 0.999, 0.0625, 0.2]
    row = np.zeros(BLOCK, np.float32)
    row[0] = 127.0
    vals = np.float32([10 + f for f in fracs] + [-(20 + f) for f in fracs])
    row[1 : 1 + vals.size] = vals
    x = np.tile(row, (2**n, 1))
    rng = np.random.default_rng(n)
    low = rng.integers(0, 2 ** (32 - n), size=x.shape, dtype=np.uint64)
    top = np.arange(2**n, dtype=np.uint64)[:, None] << np.uint64(32 - n)
    rbits = jnp.asarray((top | low).astype(np.uint32))
    y = np.asarray(codec.fake_quant_array(jnp.asarray(x), lb.get_format("mxint8"), (1,), rbits=rbits, sr_bits=n))
    for j, v in enumerate(vals, start=1):
        frac = abs(Fraction(float(v))) - math.floor(abs(float(v)))
        ups = int(np.sum(np.abs(y[:, j]) > math.floor(abs(float(v)))))
        assert ups == math.floor(frac * 2**n), (float(v), ups)


def test_n_bits_part_from_the_default_only_below_half_a_step():
    """An element of 2^-30 steps (fraction off the 2^-24 grid): the default rounds it up when all 24 uniform bits
    are 0 (u = 0 < frac), sr_bits=24 likewise, any n < 24 never (floor(frac24 2^n) = 0)."""
    x = np.zeros((2, BLOCK), np.float32)
    x[:, 0], x[:, 1] = 127.0, 2.0**-30
    rbits = np.full(x.shape, 0xFFFFFFFF, np.uint32)
    rbits[:, 1] = 0x000000FF  # top 24 bits zero
    fmt = lb.get_format("mxint8")
    run = lambda n: np.asarray(codec.fake_quant_array(jnp.asarray(x), fmt, (1,), rbits=jnp.asarray(rbits), sr_bits=n))
    assert run(None)[0, 1] == 1.0 and run(24)[0, 1] == 1.0
    for n in (1, 8, 16, 23):
        assert run(n)[0, 1] == 0.0


# --- sr_bits=24 and None are the default ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["mxint8", "mxfp4", "nvfp4", "mxfp8", "mxif4", "nf4", "mxint4:int_range=asymmetric"])
def test_sr_bits_24_is_the_default_bit_for_bit(fmt):
    x = jnp.asarray(random_blocks(3, rows=16, blocks=4))
    key = jax.random.key(5)
    a = lb.fake_quant(x, fmt, key=key)
    b = lb.fake_quant(x, fmt, key=key, sr_bits=24)
    np.testing.assert_array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))
    qa, qb = lb.quantize(x, fmt, key=key), lb.quantize(x, fmt, key=key, sr_bits=24)
    for fa, fb in zip(jax.tree.leaves(qa), jax.tree.leaves(qb), strict=True):
        np.testing.assert_array_equal(np.asarray(fa.astype(jnp.float32)), np.asarray(fb.astype(jnp.float32)))
    assert not np.array_equal(np.asarray(a), np.asarray(lb.fake_quant(x, fmt, key=key, sr_bits=1)))


# --- statistics over many identical elements --------------------------------------------------------------------------

N_ROWS = 8192  # identical blocks: N samples of each element's rounding


def identical_blocks(fmt: str) -> tuple[np.ndarray, list[Fraction], list[Fraction]]:
    """N_ROWS copies of one block with elements at known positions: (x, fraction of each element, its lower
    neighbour's magnitude), element 0 the block maximum (scale 1)."""
    if fmt == "mxint8":
        vals = [127.0, 10.3, -20.3, 5.5, 7.7, 3.125, -9.9, 0.3, 2.0]
    else:  # MXFP4, amax 6: 2.6 between 2 and 3, 4.6 between 4 and 6, 0.3 / 1.1 in the finer steps
        vals = [6.0, 2.6, -2.6, 4.6, 0.3, 1.1, -5.5, 3.0, 0.7]
    grid = GRIDS[fmt][0]
    row = np.zeros(BLOCK, np.float32)
    row[: len(vals)] = vals
    fracs, los = [], []
    for v in row[: len(vals)]:
        mag = abs(Fraction(float(v)))
        lo, hi = neighbours(mag, grid)
        fracs.append(Fraction(0) if hi == lo else (mag - lo) / (hi - lo))
        los.append(lo)
    return np.tile(row, (N_ROWS, 1)), fracs, los


@pytest.mark.parametrize("fmt", ["mxint8", "mxfp4"])
@pytest.mark.parametrize("n", [1, 2, 4, 8, None])
def test_empirical_p_up_within_5_standard_errors(fmt, n):
    """P(up) counted over N_ROWS = 8192 identical elements (one fixed key) matches the predicted floor(frac 2^n) /
    2^n within 5 binomial standard errors (exactly where it is 0 or 1); e.g. frac 0.3 with n = 1 never rounds up."""
    x, fracs, los = identical_blocks(fmt)
    y = np.abs(np.asarray(lb.fake_quant(jnp.asarray(x), fmt, key=jax.random.key(17), sr_bits=n)))
    for j, (frac, lo) in enumerate(zip(fracs, los, strict=True)):
        p = float(p_up(frac, n))
        p_hat = float(np.mean(y[:, j] > float(lo)))
        se = math.sqrt(p * (1 - p) / N_ROWS)
        assert abs(p_hat - p) <= 5 * se, (fmt, n, j, float(frac), p, p_hat)
    if fmt == "mxint8" and n == 1:  # 10.3 (frac 0.3) and 0.3 (0.3 of a step) never round up
        assert np.all(y[:, 1] == 10.0) and np.all(y[:, 7] == 0.0)


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_bias_toward_zero_as_predicted(n):
    """The mean of fake_quant(10.3) over 8192 draws is 10 + floor(0.3 2^n) / 2^n (0.3 for n = 24), a bias toward
    zero of 0.3, 0.05, 0.05, 0.003125 of a step for n = 1, 2, 4, 8, within 5 standard errors of the mean."""
    x, fracs, _ = identical_blocks("mxint8")
    y = np.asarray(lb.fake_quant(jnp.asarray(x), "mxint8", key=jax.random.key(23), sr_bits=n), np.float64)[:, 1]
    p = float(p_up(fracs[1], n))
    se = math.sqrt(p * (1 - p) / N_ROWS)
    assert abs((y.mean() - 10.0) - p) <= 5 * se
    bias = p - float(fracs[1])
    assert -(2.0**-n) < bias <= 0


# --- every path takes sr_bits the same way ----------------------------------------------------------------------------


def test_adaptive_formats_round_their_choice_with_n_bits():
    """mxif4 (MXFP4 or MXINT4 per block): each block equals its chosen candidate's fake_quant with the same key and
    sr_bits (both see the same uniforms: same block layout)."""
    x = jnp.asarray(random_blocks(11, rows=16, blocks=4))
    key, n = jax.random.key(3), 3
    fmt = lb.get_format("mxif4")
    y = np.asarray(lb.fake_quant(x, fmt, key=key, sr_bits=n)).reshape(16, 4, BLOCK)
    choice = np.asarray(lb.block_choices(x, fmt)).reshape(16, 4)
    cands = [np.asarray(lb.fake_quant(x, c, key=key, sr_bits=n)).reshape(16, 4, BLOCK) for c in fmt.candidates]
    want = np.where(choice[..., None] == 0, cands[0], cands[1])
    np.testing.assert_array_equal(y, want)
    assert len(set(choice.ravel().tolist())) == 2  # both candidates are exercised


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_pallas_kernels_round_with_n_bits_as_the_core(fmt):
    """kernels.fake_quant / quantize with impl='pallas' (interpreted on the CPU) equal the core bit for bit."""
    x = jnp.asarray(random_blocks(13, rows=8, blocks=2))
    key, n = jax.random.key(9), 2
    want = lb.fake_quant(x, fmt, key=key, sr_bits=n)
    got = kernels.fake_quant(x, fmt, -1, key=key, sr_bits=n, impl="pallas")
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(
        np.asarray(lb.fake_quant(x, fmt, key=key, sr_bits=n, impl="pallas")), np.asarray(want)
    )
    qk = kernels.quantize(x, fmt, -1, key=key, sr_bits=n, impl="pallas")
    np.testing.assert_array_equal(np.asarray(lb.dequantize(qk)), np.asarray(want))
    assert not np.array_equal(np.asarray(want), np.asarray(lb.fake_quant(x, fmt, key=key)))


def test_jit_and_straight_through_gradient():
    x = jnp.asarray(random_blocks(2))
    key = jax.random.key(1)
    f = jax.jit(lambda x, k: lb.fake_quant(x, "mxfp4", key=k, sr_bits=4))
    np.testing.assert_array_equal(np.asarray(f(x, key)), np.asarray(lb.fake_quant(x, "mxfp4", key=key, sr_bits=4)))
    g = jax.grad(lambda x: jnp.sum(lb.fake_quant(x, "mxfp4", key=key, sr_bits=4) * x))(x)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(lb.fake_quant(x, "mxfp4", key=key, sr_bits=4) + x))


def test_limit_sr_bits_sets_the_bits_below_the_top_n():
    bits = jnp.asarray(np.uint32([0x00000000, 0x80000000, 0xFFFFFFFF, 0x12345678]))
    np.testing.assert_array_equal(
        np.asarray(rounding.limit_sr_bits(bits, 4)), np.uint32([0x0FFFFFFF, 0x8FFFFFFF, 0xFFFFFFFF, 0x1FFFFFFF])
    )
    u = np.asarray(rounding.uniform_from_bits(bits, 1), np.float64)
    np.testing.assert_array_equal(u, [0.5 - 2.0**-24, 1 - 2.0**-24, 1 - 2.0**-24, 0.5 - 2.0**-24])
    np.testing.assert_array_equal(np.asarray(rounding.limit_sr_bits(bits, 24)), np.asarray(bits))


# --- errors -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, 25, -1, 2.0, "8", True])
def test_bad_sr_bits_raise(bad):
    x = jnp.ones((4, 32))
    for call in (lb.fake_quant, lb.quantize):
        with pytest.raises(ValueError, match="sr_bits must be an int in 1..24"):
            call(x, "mxfp4", key=jax.random.key(0), sr_bits=bad)
    with pytest.raises(ValueError, match="sr_bits must be an int in 1..24"):
        kernels.fake_quant(x, "mxfp4", key=jax.random.key(0), sr_bits=bad, impl="pallas")


def test_sr_bits_without_key_raises():
    x = jnp.ones((4, 32))
    for call in (lb.fake_quant, lb.quantize, kernels.fake_quant, kernels.quantize):
        with pytest.raises(ValueError, match="needs a key"):
            call(x, "mxint8", sr_bits=8)
    assert np.asarray(lb.fake_quant(x, "mxint8", sr_bits=None)).shape == (4, 32)

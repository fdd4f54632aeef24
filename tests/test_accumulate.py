"""Emulated accumulators (lowbit_jax.accumulate) against an exact Python loop.

Oracle: `loop_dot` forms every product as a Fraction, sums each chunk exactly, and adds the chunk sums left to right
with one rounding per add. Roundings are ml_dtypes / numpy casts (bfloat16, float16, float32; each a single RNE from
float64) where the exact value is a float64, else `rne`, a Fraction round-to-nearest-even with subnormals and IEEE
overflow written here; `test_rne_matches_numpy_casts` checks the two agree. Chunks of more than one product are
built so that any float32 summation order is exact (`exact_chunk` asserts it): integers times one power of two per
chunk. Values are compared as numbers (-0 equals +0; the Fraction loop has no signed zero).
"""

from __future__ import annotations

import functools
import math
import re
from fractions import Fraction

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from lowbit_jax import accumulate
from lowbit_jax.accumulate import AccumSpec, accumulated_dot

BITS = {"float32": (8, 23), "bfloat16": (8, 7), "float16": (5, 10)}
CASTS = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def format_bits(fmt: str) -> tuple[int, int]:
    if fmt in BITS:
        return BITS[fmt]
    e, m = re.fullmatch(r"fp\((\d+),(\d+)\)", fmt).groups()
    return int(e), int(m)


# --- exact oracle ---------------------------------------------------------------------------------------------------


def floor_log2(a: Fraction) -> int:
    """floor(log2 a) of a positive Fraction, exactly."""
    k = a.numerator.bit_length() - a.denominator.bit_length()
    return k if Fraction(2) ** k <= a else k - 1


def rne(x: Fraction, e: int, m: int) -> Fraction | float:
    """x rounded to nearest-even on fp(e, m) (bias 2^(e-1) - 1, subnormals); +-inf (a float) past the top tie."""
    bias = 2 ** (e - 1) - 1
    if x == 0:
        return Fraction(0)
    a = abs(x)
    step = Fraction(2) ** (max(floor_log2(a), 1 - bias) - m)
    r = round(a / step) * step  # Fraction.__round__ rounds half to even
    if r > (2 - Fraction(1, 2**m)) * Fraction(2) ** bias:
        return math.copysign(math.inf, x)
    return r if x > 0 else -r


def oracle_round(x: Fraction, fmt: str) -> Fraction | float:
    """x rounded to the accumulator format: a numpy / ml_dtypes cast where x is a float64, else `rne`."""
    if fmt in CASTS and Fraction(float(x)) == x:
        with np.errstate(over="ignore"):
            y = float(np.array(float(x)).astype(CASTS[fmt]).astype(np.float64))
        return y if math.isinf(y) else Fraction(y)
    return rne(x, *format_bits(fmt))


def exact_chunk(products: list[Fraction]) -> bool:
    """Whether every float32 summation order of `products` is exact: all are multiples of one 2^q >= 2^-126 and
    sum |p| <= 2^(24 + q)."""
    nonzero = [p for p in products if p != 0]
    if not nonzero:
        return True
    q = min(floor_log2(Fraction(p.numerator & -p.numerator, p.denominator)) for p in map(abs, nonzero))
    return q >= -126 and sum(map(abs, nonzero)) <= Fraction(2) ** (24 + q)


def loop_one(x: np.ndarray, y: np.ndarray, block: int, fmt: str) -> float:
    """One output: chunk sums (exact; a single product rounded to float32) added in `fmt`, one rounding per add."""
    products = [Fraction(float(u)) * Fraction(float(v)) for u, v in zip(x, y, strict=True)]
    acc: Fraction | float | None = None
    for start in range(0, len(products), block):
        chunk = products[start : start + block]
        if len(chunk) == 1:
            s = rne(chunk[0], 8, 23)
        else:
            assert exact_chunk(chunk), "test data: this chunk's float32 sum depends on the summation order"
            s = sum(chunk, Fraction(0))
        if acc is None:
            acc = oracle_round(s, fmt)
        elif not (isinstance(acc, float) and math.isinf(acc)):
            acc = oracle_round(acc + s, fmt)
    return float(acc)


def loop_dot(a, b, n_batch: int, block: int, fmt: str) -> np.ndarray:
    """a [B.., Fa.., K] . b [B.., Fb.., K] through the accumulator, one output at a time."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    lead, fa, fb = a.shape[:n_batch], a.shape[n_batch:-1], b.shape[n_batch:-1]
    out = np.empty(lead + fa + fb)
    for i in np.ndindex(lead):
        for j in np.ndindex(fa):
            for k in np.ndindex(fb):
                out[i + j + k] = loop_one(a[i + j], b[i + k], block, fmt)
    return out


def grid_operands(rng, shape_a, shape_b, block: int, lo: int, hi: int, ints: int = 15):
    """Integers in [-ints, ints] times a power of two 2^[lo, hi] per K-chunk of `block` (per operand), float32:
    each chunk's products share one power of two, so its float32 sum is exact in any order."""
    k = shape_a[-1]
    n_chunks = -(-k // block)
    out = []
    for shape in (shape_a, shape_b):
        scale = 2.0 ** rng.integers(lo, hi + 1, size=n_chunks).repeat(block)[:k]
        out.append((rng.integers(-ints, ints + 1, size=shape) * scale).astype(np.float32))
    return out


@functools.cache
def jitted(n_batch: int, spec: AccumSpec):
    return jax.jit(lambda a, b: accumulated_dot(a, b, n_batch, spec))


def run(a, b, n_batch: int, block: int, fmt: str) -> np.ndarray:
    return np.asarray(jitted(n_batch, AccumSpec(block, fmt))(a, b))


# --- the oracle's own rounding ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["float32", "bfloat16", "float16"])
def test_rne_matches_numpy_casts(fmt):
    """The Fraction rounding `rne` equals the ml_dtypes / numpy cast on float64 values, ties and overflow included."""
    e, m = BITS[fmt]
    rng = np.random.default_rng(0)
    grid = np.abs(rng.normal(size=400) * 2.0 ** rng.integers(-20, 12, size=400)).astype(CASTS[fmt])
    grid = grid.astype(np.float64)
    with np.errstate(divide="ignore"):  # log2(0) for values that cast to zero
        step = 2.0 ** (np.maximum(np.floor(np.log2(grid)), 2 - 2 ** (e - 1)) - m)
    emax = 2 ** (e - 1) - 1
    top = (2 - 2.0**-m) * 2.0**emax
    ties = np.concatenate([grid + step / 2, [top + 2.0 ** (emax - m - 1)]])
    x = np.concatenate([grid, ties, np.nextafter(ties, 0), np.nextafter(ties, np.inf), rng.normal(size=200) * 50])
    x = np.concatenate([x, -x])
    with np.errstate(over="ignore"):
        cast = x.astype(CASTS[fmt]).astype(np.float64)
    ours = np.array([float(rne(Fraction(float(v)), e, m)) for v in x])
    np.testing.assert_array_equal(ours, cast)


# --- accumulated_dot against the loop ---------------------------------------------------------------------------------

# (format, exponent range of the per-chunk powers of two): wide for the wide formats, narrow where the range is small
FORMAT_CASES = [
    ("float32", -24, 24),
    ("bfloat16", -20, 20),
    ("float16", -9, 0),
    ("fp(8,7)", -20, 20),
    ("fp(5,10)", -9, 0),
    ("fp(4,3)", -7, -2),
    ("fp(6,12)", -8, 4),
    ("fp(8,21)", -24, 24),
    ("fp(3,2)", -6, -3),
]
BLOCKS = [(1, 24), (4, 24), (16, 32), (24, 24), (5, 23), (40, 23)]  # (block, K): K, K % block != 0, block > K


@pytest.mark.parametrize("fmt,lo,hi", FORMAT_CASES)
@pytest.mark.parametrize("block,k", BLOCKS)
def test_matches_loop(fmt, lo, hi, block, k):
    rng = np.random.default_rng(block * 100 + k)
    a, b = grid_operands(rng, (2, 3, k), (2, 4, k), block, lo, hi)
    np.testing.assert_array_equal(run(a, b, 1, block, fmt), loop_dot(a, b, 1, block, fmt))


@pytest.mark.parametrize(
    "shape_a,shape_b,n_batch", [((3, 20), (2, 2, 20), 0), ((2, 2, 3, 20), (2, 2, 1, 20), 2), ((2, 20), (2, 20), 1)]
)
@pytest.mark.parametrize("fmt", ["bfloat16", "fp(5,6)"])
def test_batch_and_free_dims(shape_a, shape_b, n_batch, fmt):
    rng = np.random.default_rng(len(shape_a) + n_batch)
    a, b = grid_operands(rng, shape_a, shape_b, 3, -6, 0)
    got = run(a, b, n_batch, 3, fmt)
    assert got.shape == shape_a[:-1] + shape_b[n_batch:-1]
    np.testing.assert_array_equal(got, loop_dot(a, b, n_batch, 3, fmt))


@pytest.mark.parametrize("fmt", ["float32", "bfloat16", "float16", "fp(6,4)"])
def test_block_one_on_general_data(fmt):
    """block=1 holds for any float32 data: each chunk is one product, rounded to float32 once."""
    rng = np.random.default_rng(1)
    scale = 0.2 if fmt in ("float16", "fp(6,4)") else 1.0
    a = (rng.standard_t(3, size=(3, 50)) * scale).astype(np.float32)
    b = (rng.normal(size=(4, 50)) * scale).astype(np.float32)
    np.testing.assert_array_equal(run(a, b, 0, 1, fmt), loop_dot(a, b, 0, 1, fmt))


def test_many_chunks_per_scan_step_and_remainder(monkeypatch):
    """Groups of chunks per scan step (here 3 groups of 2 and a remainder of 1, then a partial chunk) change nothing."""
    monkeypatch.setattr(accumulate, "_GROUP_ELEMENTS", 2 * 6)  # 2 chunks of a 2 x 3 output per step
    rng = np.random.default_rng(2)
    a, b = grid_operands(rng, (2, 30), (3, 30), 4, -10, 10)
    got = np.asarray(accumulated_dot(a, b, 0, AccumSpec(4, "bfloat16")))
    np.testing.assert_array_equal(got, loop_dot(a, b, 0, 4, "bfloat16"))


def test_float32_accumulation_error_bound_on_general_data():
    """Any block on arbitrary float32 data: within K ulps of sum |products| of the exact dot (a lost or repeated
    chunk would be off by about a chunk's sum, far more)."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(4, 300)).astype(np.float32), rng.normal(size=(3, 300)).astype(np.float32)
    exact = a.astype(np.float64) @ b.astype(np.float64).T  # float64: exact to 2^-53 relative per term
    bound = 301 * 2.0**-24 * (np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)).T)
    for block in (1, 7, 64, 300):
        err = np.abs(run(a, b, 0, block, "float32") - exact)
        assert (err <= bound).all(), (block, (err / bound).max())


# --- what the emulation shows -------------------------------------------------------------------------------------


def test_bfloat16_swamping():
    """K = 4096 positive products in [1, 2): a bfloat16 accumulator adding them one by one stalls at 512 (half an
    ulp there is 2), while float32 is exact and bfloat16 fed by exact 32-long chunks is ten times closer."""
    rng = np.random.default_rng(4)
    a = (rng.integers(16, 32, size=(2, 4096)) / 16).astype(np.float32)
    b = np.ones((1, 4096), np.float32)
    exact = a.astype(np.float64).sum(axis=1, keepdims=True)
    f32 = run(a, b, 0, 1, "float32")
    bf16 = run(a, b, 0, 1, "bfloat16")
    np.testing.assert_array_equal(f32, exact)  # integers / 16 below 2^20: float32 is exact here
    np.testing.assert_array_equal(bf16, loop_dot(a, b, 0, 1, "bfloat16"))
    assert (bf16 <= 1024).all() and (exact > 5000).all()
    bf16_32 = run(a, b, 0, 32, "bfloat16")
    np.testing.assert_array_equal(bf16_32, loop_dot(a, b, 0, 32, "bfloat16"))
    assert (np.abs(bf16_32 - exact) < np.abs(bf16 - exact) / 10).all()  # here 4-5 % against 91 %


def test_one_rounding_per_add():
    """acc + s with a float32 s: the exact sum is rounded once, not the float32 sum again (which would tie to 1)."""
    cases = [  # (a, format, expected): b is all ones, block 1
        ([1.0, 2.0**-8 + 2.0**-30], "bfloat16", 1 + 2.0**-7),
        ([2.0**-60, 1 + 2.0**-8], "bfloat16", 1 + 2.0**-7),
        ([-1.0, -(2.0**-8) - 2.0**-30], "bfloat16", -1 - 2.0**-7),
        ([1.0, 2.0**-11 + 2.0**-30], "float16", 1 + 2.0**-10),
        ([1.0, 2.0**-11 + 2.0**-30], "fp(5,10)", 1 + 2.0**-10),
        ([1.0, 2.0**-4 + 2.0**-27], "fp(4,3)", 1 + 2.0**-3),
        ([1.0, 2.0**-8], "bfloat16", 1.0),  # an exact tie goes to even
        ([1.0, -(2.0**-9) - 2.0**-32], "bfloat16", 1 - 2.0**-8),
    ]
    for a, fmt, expected in cases:
        x = np.array([a], np.float32)
        y = np.ones_like(x)
        got = run(x, y, 0, 1, fmt)
        assert got[0, 0] == expected, (a, fmt, got[0, 0])
        assert loop_dot(x, y, 0, 1, fmt)[0, 0] == expected


@pytest.mark.parametrize("fmt", ["float32", "bfloat16", "float16", "fp(5,10)", "fp(4,3)", "fp(7,9)"])
def test_add_rounds_exact_sum_once(fmt):
    """AccumSpec.add on pairs whose exact sum lies on, or within a few float32 ulps of, a format midpoint."""
    e, m = format_bits(fmt)
    emin, top = 2 - 2 ** (e - 1), 2.0 ** (2 ** (e - 1) - 1)
    rng = np.random.default_rng(5)
    n = 300
    mag = lambda lo, hi: rng.normal(size=n) * 2.0 ** rng.integers(lo, hi, size=n)
    lim = min(20, 2 ** (e - 1) - 3)
    to_fmt = lambda v: np.array([float(rne(Fraction(float(np.float32(u))), e, m)) for u in v])
    accs = np.concatenate([to_fmt(mag(-lim, lim)), to_fmt(mag(-lim, -lim + 3))])
    targets = to_fmt(np.concatenate([accs[:n] * rng.uniform(0.5, 2, size=n), mag(-3, 3)]))
    finite = np.isfinite(accs) & np.isfinite(targets) & (np.abs(targets) < top)
    accs, targets = accs[finite], targets[finite]
    steps = np.array([2.0 ** (max(floor_log2(Fraction(abs(v))), emin) - m) if v else 2.0**emin for v in targets])
    mids = targets + np.sign(targets) * steps / 2
    s0 = (mids - accs).astype(np.float32)
    acc_all, s_all = [], []
    for k in range(-2, 3):
        s = s0.copy()
        for _ in range(abs(k)):
            s = np.nextafter(s, np.float32(np.inf * np.sign(k)))
        acc_all.append(accs)
        s_all.append(s)
    acc, s = np.concatenate(acc_all).astype(np.float32), np.concatenate(s_all).astype(np.float32)
    keep = np.isfinite(s)
    acc, s = acc[keep], s[keep]
    spec = AccumSpec(1, fmt)
    got = np.asarray(jax.jit(spec.add)(acc, s))
    expected = np.array([float(oracle_round(Fraction(float(u)) + Fraction(float(v)), fmt)) for u, v in zip(acc, s)])
    np.testing.assert_array_equal(got, expected)
    if fmt != "float32":  # the cases bite: rounding the float32 sum again gets some of them wrong
        with np.errstate(over="ignore"):
            twice = np.array([float(oracle_round(Fraction(float(v)), fmt)) for v in acc + s])
        assert (twice != expected).sum() > 300  # 457-572 of the 3000 pairs


@pytest.mark.parametrize("fmt", ["fp(5,10)", "fp(4,3)", "fp(8,7)", "fp(2,5)", "fp(6,0)"])
def test_round_custom_format(fmt):
    """AccumSpec.round on fp(e,m): random values, exact midpoints, the largest finite value, the overflow tie."""
    e, m = format_bits(fmt)
    spec = AccumSpec(1, fmt)
    rng = np.random.default_rng(6)
    lim = min(40, 2 ** (e - 1) + 1)
    x = rng.normal(size=500) * 2.0 ** rng.integers(-lim - m, lim, size=500)
    grid = np.array([float(rne(Fraction(float(np.float32(v))), e, m)) for v in x])
    grid = grid[np.isfinite(grid) & (grid != 0)]
    steps = np.array([2.0 ** (max(floor_log2(Fraction(abs(v))), 2 - 2 ** (e - 1)) - m) for v in grid])
    top_tie = spec.max + 2.0 ** (2 ** (e - 1) - 2 - m)
    vals = np.concatenate([x, grid + steps / 2, grid - steps / 2, [spec.max, top_tie, 3e38, 0.0]])
    vals = vals.astype(np.float32)
    vals = np.concatenate([vals, np.nextafter(vals, np.float32(0)), -vals])
    vals = vals[(np.abs(vals) >= 2.0**-126) | (vals == 0)]  # XLA flushes float32 subnormals
    got = np.asarray(jax.jit(spec.round)(vals))
    expected = np.array([float(rne(Fraction(float(v)), e, m)) for v in vals])
    np.testing.assert_array_equal(got, expected)
    assert np.asarray(spec.round(np.float32([np.nan, np.inf, -np.inf]))).tolist()[1:] == [np.inf, -np.inf]
    assert np.isnan(np.asarray(spec.round(np.float32(np.nan))))


def test_named_formats_equal_their_fp_spelling():
    rng = np.random.default_rng(7)
    a, b = (rng.normal(size=(3, 64)) * 30).astype(np.float32), rng.normal(size=(2, 64)).astype(np.float32)
    for named, custom in (("bfloat16", "fp(8,7)"), ("float16", "fp(5,10)")):
        for block in (1, 8):
            np.testing.assert_array_equal(run(a, b, 0, block, named), run(a, b, 0, block, custom))
    assert AccumSpec(4, "fp(5,10)").max == 65504.0 and AccumSpec(4, "bfloat16").max == float(
        ml_dtypes.finfo(ml_dtypes.bfloat16).max
    )


@pytest.mark.parametrize("block", [1, 2, 4])
def test_float16_overflows_to_inf(block):
    """float16 accumulators overflow to +-Inf (IEEE) and stay there; float32 is finite. Row 0 reaches 90000 only
    when the accumulator adds single products: float32 chunks of 2 or 4 hold the excursion (60000 = 30000 + 30000)."""
    a = np.array([[30000.0, 30000.0, 30000.0, -30000.0], [-30000.0, -30000.0, -16.0, -30000.0]], np.float32)
    b = np.ones((1, 4), np.float32)
    got = run(a, b, 0, block, "float16")
    np.testing.assert_array_equal(got, loop_dot(a, b, 0, block, "float16"))
    assert got[0, 0] == (np.inf if block == 1 else 60000.0) and got[1, 0] == -np.inf
    np.testing.assert_array_equal(run(a, b, 0, block, "float32")[:, 0], a.sum(axis=1))
    tie = np.array([[65504.0, 16.0]], np.float32)  # 65520 is the tie between 65504 and 2^16: to even, i.e. Inf
    assert run(tie, np.ones_like(tie), 0, 1, "float16")[0, 0] == np.inf
    below = np.array([[65504.0, 15.0]], np.float32)
    assert run(below, np.ones_like(below), 0, 1, "float16")[0, 0] == 65504.0


def test_jit_and_vmap():
    rng = np.random.default_rng(8)
    a, b = grid_operands(rng, (3, 2, 10), (3, 4, 10), 3, -5, 5)
    spec = AccumSpec(3, "bfloat16")
    per_slice = jax.vmap(lambda x, y: accumulated_dot(x, y, 0, spec))(a, b)
    expected = loop_dot(a, b, 1, 3, "bfloat16")
    np.testing.assert_array_equal(np.asarray(per_slice), expected)
    jit = jax.jit(accumulated_dot, static_argnums=(2, 3))
    np.testing.assert_array_equal(np.asarray(jit(a, b, 1, spec)), expected)


def test_empty_contraction_is_zero():
    got = accumulated_dot(jnp.zeros((2, 0)), jnp.zeros((3, 0)), 0, AccumSpec(4, "bfloat16"))
    assert got.shape == (2, 3) and not np.asarray(got).any()


# --- validation -------------------------------------------------------------------------------------------------------


def test_spec_normalizes_and_is_hashable():
    spec = AccumSpec(8, "fp( 5 , 10 )")
    assert spec == AccumSpec(8, "fp(5,10)") and hash(spec) == hash(AccumSpec(8, "fp(5,10)"))
    assert (spec.format, spec.exp_bits, spec.man_bits) == ("fp(5,10)", 5, 10)


@pytest.mark.parametrize("block", [0, -3])
def test_bad_block_value(block):
    with pytest.raises(ValueError, match="block must be >= 1"):
        AccumSpec(block, "float32")


@pytest.mark.parametrize("block", [2.0, True, "4", None])
def test_bad_block_type(block):
    with pytest.raises(TypeError, match="block must be an int"):
        AccumSpec(block, "float32")


@pytest.mark.parametrize(
    "fmt,match",
    [
        ("float64", "must be one of"),
        ("e5m2", "must be one of"),
        ("fp(5)", "must be one of"),
        ("fp(1,3)", "2 <= e <= 8"),
        ("fp(9,3)", "2 <= e <= 8"),
        ("fp(5,22)", "m <= 21"),
        ("fp(8,23)", "m <= 21"),
    ],
)
def test_bad_format(fmt, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        AccumSpec(4, fmt)


@pytest.mark.parametrize("fmt", [16, None, jnp.bfloat16])
def test_format_must_be_a_string(fmt):
    with pytest.raises(TypeError, match="must be a string"):
        AccumSpec(4, fmt)


def test_bad_operands():
    spec = AccumSpec(4)
    a, b = jnp.ones((2, 8)), jnp.ones((3, 8))
    with pytest.raises(TypeError, match="must be an AccumSpec"):
        accumulated_dot(a, b, 0, "bfloat16")
    with pytest.raises(TypeError, match="float32"):
        accumulated_dot(jnp.ones((2, 8), jnp.int32), b, 0, spec)
    with pytest.raises(TypeError, match="float32"):
        accumulated_dot(np.ones((2, 8)), b, 0, spec)  # float64 would be rounded silently
    with pytest.raises(ValueError, match="last"):
        accumulated_dot(a, jnp.ones((3, 7)), 0, spec)
    with pytest.raises(ValueError, match="batch"):
        accumulated_dot(jnp.ones((2, 3, 8)), jnp.ones((4, 3, 8)), 1, spec)
    with pytest.raises(ValueError, match="needs 2 batch dims"):
        accumulated_dot(a, b, 2, spec)
    for n_batch in (-1, 1.0, True):
        with pytest.raises(ValueError, match="n_batch"):
            accumulated_dot(a, b, n_batch, spec)

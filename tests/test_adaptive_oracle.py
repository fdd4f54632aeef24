"""The adaptive formats (if4, if6, mxif4/6/8, nvfp4_4over6) against an independent numpy transcription.

The oracle (tests/adaptive_oracle.py) is built from the definitions (IF4: arXiv 2603.28765; Four Over Six: arXiv
2512.02010): per block every candidate is quantized, d = fl(x - y), the metric (mse: float32 tree sum of d^2,
mae: tree sum of |d|, absmax: max |d|) picks the candidate of strictly least error, ties keep the earliest.
The NV-style candidates (tensor scale, E4M3 block scale, elements, dequantization) are transcribed end to end in
numpy float32; the MX ones come from the gfloat oracle of tests/conftest.py.

Compilation dominates the run time, so each format is compiled once per shape: `bundle` evaluates fake_quant,
block_choices and quantize/dequantize for every select, plus the plain candidates, in one jit; every test on
(6, 200) data shares it.
"""

from __future__ import annotations

import dataclasses
import functools
from fractions import Fraction

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lowbit_jax as lb
from tests.adaptive_oracle import (
    ADAPTIVE,
    BLOCK,
    CANDIDATE_NAMES,
    IF4_GRID,
    IF6_GRID,
    MX_CANDIDATES,
    NV_CANDIDATES,
    SELECTS,
    adaptive_reference,
    block_error,
    fraction_to_f32,
    from_blocks,
    nv_candidate,
    round_to_grid,
    to_blocks,
)
from tests.conftest import assert_same_bits, bits32

SHAPE = (6, 200)  # 200 is not a multiple of 16 or 32: the last block of every row is partial
DISTS = ("gaussian", "laplace", "student_t", "outlier", "sparse")


def sample(dist: str, seed: int, shape=SHAPE) -> np.ndarray:
    """float32 data of one distribution, each row with its own power-of-two magnitude 2^[-6, 6]."""
    assert dist in DISTS
    rng = np.random.default_rng([seed, DISTS.index(dist)])
    if dist == "gaussian":
        x = rng.normal(size=shape)
    elif dist == "laplace":
        x = rng.laplace(size=shape)
    elif dist == "student_t":
        x = rng.standard_t(3, size=shape)
    elif dist == "outlier":  # Gaussian with 1% outliers of 20x-1000x
        x = rng.normal(size=shape)
        hit = rng.random(shape) < 0.01
        x = np.where(hit, x * rng.uniform(20, 1000, size=shape), x)
    else:  # sparse: 75% zeros, the rest Gaussian times 10^[-3, 0] (blocks where MXFP8 beats MXINT8)
        x = rng.normal(size=shape) * 10.0 ** rng.uniform(-3, 0, size=shape) * (rng.random(shape) < 0.25)
    x = x * 2.0 ** rng.integers(-6, 7, size=(shape[0], 1))
    return x.astype(np.float32)


def spec(fmt: str, select: str) -> str:
    """The spec string of an adaptive format with a selection metric ("if4:select=mae")."""
    return fmt if select == "mse" else f"{fmt}:select={select}"


@functools.cache
def _bundle(fmt: str, axis: int, selects: tuple[str, ...]):
    fs = {s: lb.get_format(spec(fmt, s)) for s in selects}
    cands = lb.get_format(fmt).candidates

    def run(x):
        q = lb.quantize(x, fs["mse"], axis=axis)
        return {
            "y": {s: lb.fake_quant(x, f, axis=axis) for s, f in fs.items()},
            "choices": {s: lb.block_choices(x, f, axis=axis) for s, f in fs.items()},
            "q": q,
            "dq": lb.dequantize(q),
            "cand_y": [lb.fake_quant(x, c, axis=axis) for c in cands],
            "cand_q": [lb.quantize(x, c, axis=axis) for c in cands],
        }

    return jax.jit(run)


def bundle(x: np.ndarray, fmt: str, axis: int = -1, selects: tuple[str, ...] = SELECTS) -> dict:
    """fake_quant and block_choices of fmt for each select, quantize / dequantize for mse, and the plain
    candidates' fake_quant and quantize, as numpy arrays (one compilation per format, shape and axis)."""
    return jax.tree.map(np.asarray, _bundle(fmt, axis, selects)(x))


@functools.cache
def _sr_bundle(fmt: str):
    f = lb.get_format(fmt)
    return jax.jit(lambda x, key: [lb.fake_quant(x, g, key=key) for g in (f, *f.candidates)])


def sr_bundle(x: np.ndarray, fmt: str, key) -> list[np.ndarray]:
    """fake_quant with a key under fmt and then under each of its candidates (one compilation)."""
    return [np.asarray(y) for y in _sr_bundle(fmt)(x, key)]


def block_view(y: np.ndarray, fmt: str) -> np.ndarray:
    """(rows, n) -> (rows, nb, block) with zero padding (the oracle's block layout)."""
    return to_blocks(np.asarray(y, np.float32), BLOCK[fmt])


# --- the oracle's own building blocks -------------------------------------------------------------------------------


@pytest.mark.parametrize("qmax,n,grid", [(Fraction(6), 7, IF4_GRID), (Fraction(15, 2), 31, IF6_GRID)])
def test_int_grid_is_correctly_rounded_from_the_rational(qmax, n, grid):
    """w_k is the float32 nearest to qmax k / n: neither float32 neighbour is closer (Fraction arithmetic)."""
    assert grid.dtype == np.float32 and grid.size == 2 * n + 1
    for i, k in enumerate(range(-n, n + 1)):
        exact, w = qmax * k / n, grid[i]
        err = abs(Fraction(float(w)) - exact)
        for nb in (np.nextafter(w, np.float32(np.inf)), np.nextafter(w, np.float32(-np.inf))):
            assert err <= abs(Fraction(float(nb)) - exact), (k, w)
    assert grid[-1] == np.float32(qmax) and grid[n] == 0 and (grid[::-1] == -grid).all()
    if n == 7:  # 6/7 = 1.1011011...b x 2^-1 rounds up at the 24th bit (worked by hand): 0x3F5B6DB7
        assert bits32(grid[n + 1]) == 0x3F5B6DB7


def test_fraction_to_f32_ties_to_even():
    """Exact halfway rationals round to the even significand."""
    one_ulp = Fraction(2) ** -23
    assert fraction_to_f32(1 + one_ulp / 2) == np.float32(1.0)
    assert fraction_to_f32(1 + 3 * one_ulp / 2) == np.float32(1.0) + np.float32(2.0**-22)
    assert fraction_to_f32(-(1 + 3 * one_ulp / 2)) == -(np.float32(1.0) + np.float32(2.0**-22))


@pytest.mark.parametrize("grid", [IF4_GRID, IF6_GRID], ids=["int4", "int6"])
def test_round_to_grid_is_nearest_with_even_ties(grid):
    """Against a brute-force Fraction search: nearest w_k, exact ties to the even k, saturating beyond +-max."""
    n = (grid.size - 1) // 2
    rng = np.random.default_rng(5)
    mids = [(Fraction(float(a)) + Fraction(float(b))) / 2 for a, b in zip(grid[:-1], grid[1:])]
    exact_mids = [np.float32(float(m)) for m in mids if Fraction(float(np.float32(float(m)))) == m]
    v = np.concatenate(
        [rng.uniform(-1.2 * grid[-1], 1.2 * grid[-1], 3000), grid, exact_mids, np.nextafter(exact_mids, 0)]
    ).astype(np.float32)
    got_w, got_k = round_to_grid(v, grid)
    for vi, w, k in zip(v, got_w, got_k):
        dist = [abs(Fraction(float(g)) - Fraction(float(vi))) for g in grid]
        best = min(dist)
        ks = [i - n for i, dd in enumerate(dist) if dd == best]
        want = ks[0] if len(ks) == 1 else next(kk for kk in ks if kk % 2 == 0)
        assert k == want and w == grid[want + n], (vi, k, want)
    assert len(exact_mids) > 3  # the tie branch was exercised


# --- candidates, transcribed end to end, against lowbit_jax's plain candidate formats -------------------------------


@pytest.mark.parametrize("fmt", list(NV_CANDIDATES))
def test_nv_candidates_match_transcription(fmt):
    """nvfp4, if4_int, nvfp6, if6_int, nvfp4_to6, nvfp4_to4: values, E4M3 scales and the FP32 tensor scale."""
    for dist in DISTS:
        x = sample(dist, 1)
        out = bundle(x, fmt)
        for c, (name, cand) in enumerate(zip(CANDIDATE_NAMES[fmt], NV_CANDIDATES[fmt])):
            ref, q = nv_candidate(x, cand), out["cand_q"][c]
            assert_same_bits(out["cand_y"][c], from_blocks(ref.y, x.shape[-1]), f"{name}/{dist} values")
            assert q.scales.dtype == jnp.float8_e4m3fn
            assert_same_bits(q.scales.astype(np.float32), ref.scales, f"{name}/{dist} scales")
            assert_same_bits(q.tensor_scale, ref.g, f"{name}/{dist} tensor scale")


def midpoint_data(fmt: str) -> np.ndarray:
    """(6, 200) data with s * g = 1 in every block but the first: the INT grid's midpoints (where float32 holds them
    exactly) and the float32 values either side of every midpoint, both signs, then uniform filler.

    g = 1 from the tensor amax 6 * 448 (7.5 * 448 for IF6) in row 0 block 0; every other block starts with the
    grid maximum, so s = E4M3(1) = 1 and v = x exactly."""
    grid = IF4_GRID if fmt == "if4" else IF6_GRID
    top = float(grid[-1])
    mids = (grid[:-1].astype(np.float64) + grid[1:].astype(np.float64)) / 2
    m32 = mids.astype(np.float32)
    vals = [m32[m32 == mids], np.nextafter(m32, np.float32(np.inf)), np.nextafter(m32, np.float32(-np.inf))]
    vals = np.concatenate(vals)
    vals = vals[np.abs(vals) <= top]
    rng = np.random.default_rng(13)
    slots = np.full((6, 12, 15), np.nan, np.float32)
    flat = slots.reshape(-1)[15:]  # row 0 block 0 holds the tensor amax
    flat[: vals.size] = rng.permutation(vals)
    flat[vals.size :] = rng.uniform(-top, top, flat.size - vals.size)
    x = np.zeros(SHAPE, np.float32)
    xb = x[:, :192].reshape(6, 12, 16)
    xb[:, :, 0] = top
    xb[:, :, 1:] = slots
    x[0, :16] = 0.0
    x[0, 0] = top * 448.0
    return x


@pytest.mark.parametrize("fmt", ["if4", "if6"])
def test_int_grid_midpoints_round_to_nearest_even(fmt):
    """The stretched INT candidate on exact midpoints of its grid (ties to the even k) and their float32
    neighbours (the nearer w_k), against the transcription; the adaptive format agrees with the oracle there."""
    x = midpoint_data(fmt)
    int_ref = nv_candidate(x, NV_CANDIDATES[fmt][1])
    assert int_ref.g == 1 and (int_ref.scales.reshape(-1)[1:12] == 1).all()
    out = bundle(x, fmt)
    assert_same_bits(out["cand_y"][1], from_blocks(int_ref.y, SHAPE[1]), f"{fmt} INT candidate")
    for select in SELECTS:
        assert_same_bits(out["y"][select], adaptive_reference(x, fmt, select).y, f"{fmt}/{select}")
    grid = IF4_GRID if fmt == "if4" else IF6_GRID
    mids = (grid[:-1].astype(np.float64) + grid[1:].astype(np.float64)) / 2
    on_mid = np.isin(x.astype(np.float64), mids)
    assert on_mid.sum() >= 4  # exact ties are in the data (+-w_1 / 2 at least)


def grid_midpoints(elem: str) -> np.ndarray:
    """Positive midpoints between adjacent element values (float64, exact) of an FP or stretched INT grid."""
    if elem in ("e2m1", "e2m3"):
        dtype = ml_dtypes.float4_e2m1fn if elem == "e2m1" else ml_dtypes.float6_e2m3fn
        n_codes = 8 if elem == "e2m1" else 32
        grid = np.arange(n_codes, dtype=np.uint8).view(dtype).astype(np.float64)
    else:
        grid = (IF4_GRID if elem == "int4" else IF6_GRID).astype(np.float64)
        grid = grid[grid >= 0]
    return (grid[:-1] + grid[1:]) / 2


def near_tie_data(fmt: str, seed: int = 14) -> np.ndarray:
    """(6, 200) data on the rounding boundaries of an NV-style adaptive format (generated with the oracle's steps).

    Row 0 element 0 is the tensor amax. Every other block's amax is a few ulps from fl32(M * g * Q), M an E4M3
    midpoint (so the scale's rounding hinges on fl(fl(amax / Q) / g)); the block's other elements are a few ulps
    from fl32(m * fl(s g)), m a midpoint of a candidate's element grid (so v = fl(x / fl(s g)) decides)."""
    rng = np.random.default_rng(seed)
    cands = NV_CANDIDATES[fmt]
    e4m3 = np.arange(0x08, 0x7E, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float64)  # normals
    e4m3_mids = ((e4m3[:-1] + e4m3[1:]) / 2)[(e4m3[1:] > 1) & (e4m3[1:] < 380)]
    top = np.float32(rng.uniform(1.0, 100.0))
    g = np.float32(top / (np.float32(cands[0].tensor_q) * np.float32(cands[0].bound)))
    x = np.zeros(SHAPE, np.float32)
    x[0, 0] = top
    b = cands[0].block
    for r, blk in np.ndindex(SHAPE[0], SHAPE[1] // b):
        if r == 0 and blk == 0:
            continue
        c = cands[(r + blk) % len(cands)]  # 4over6: alternate which scale sits on a boundary
        q = np.float32(c.scale_q)
        amax = np.float32(rng.choice(e4m3_mids) * g * q)
        amax = np.float32(amax + rng.integers(-3, 4) * np.spacing(amax))
        amax = min(amax, top)
        t = np.float32(np.float32(amax / q) / g)
        s = np.float32(np.clip(t, 0, 448)).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
        d = np.float32(s * g)
        mids = np.concatenate([grid_midpoints(cc.elem) for cc in cands])
        vals = (rng.choice(mids, size=b - 1) * d).astype(np.float32)
        vals = vals + rng.integers(-2, 3, size=b - 1) * np.spacing(vals)
        vals = np.where(np.abs(vals) <= amax, vals, amax / 2) * rng.choice([-1.0, 1.0], size=b - 1)
        x[r, blk * b] = amax
        x[r, blk * b + 1 : (blk + 1) * b] = vals
    return x


@pytest.mark.parametrize("fmt", list(NV_CANDIDATES))
def test_nv_rounding_boundaries_match_transcription(fmt):
    """On the scale's and the elements' rounding boundaries: both candidates and the adaptive format (every
    select) equal the transcription bit for bit (fl(fl(amax / Q) / g) and fl(x / fl(s g)) are what decide)."""
    for seed in (14, 15):
        x = near_tie_data(fmt, seed)
        out = bundle(x, fmt)
        for c, cand in enumerate(NV_CANDIDATES[fmt]):
            ref = nv_candidate(x, cand)
            assert_same_bits(out["cand_y"][c], from_blocks(ref.y, SHAPE[1]), f"{CANDIDATE_NAMES[fmt][c]}/{seed}")
            assert_same_bits(out["cand_q"][c].scales.astype(np.float32), ref.scales, f"{fmt}/{c}/{seed} scales")
        for select in SELECTS:
            assert_same_bits(out["y"][select], adaptive_reference(x, fmt, select).y, f"{fmt}/{select}/{seed}")


def test_candidates_are_the_named_formats():
    """fmt.candidates are the plain named formats; the adaptive formats and only they report is_adaptive."""
    for fmt, names in CANDIDATE_NAMES.items():
        f = lb.get_format(fmt)
        assert isinstance(f, lb.AdaptiveFormat) and f.is_adaptive and f.select == "mse", fmt
        assert tuple(c.name for c in f.candidates) == names, fmt
        assert all(not c.is_adaptive for c in f.candidates), fmt
        assert f.selector == {"if4": "scale_sign", "if6": "scale_sign", "nvfp4_4over6": "scale"}.get(fmt, "separate")
        assert lb.get_format(f"{fmt}:select=absmax").select == "absmax"
    assert not lb.get_format("nvfp4").is_adaptive


# --- 1. fake_quant and block_choices equal the oracle bit for bit ---------------------------------------------------


@pytest.mark.parametrize("fmt", ADAPTIVE)
def test_fake_quant_and_choices_match_oracle(fmt):
    """Gaussian, Laplace, Student-t, outlier and sparse data, (6, 200) along axis -1, every select: values and
    choices bit for bit."""
    for select in SELECTS:
        seen = set()
        for dist in DISTS:
            x = sample(dist, 2)
            ref, out = adaptive_reference(x, fmt, select), bundle(x, fmt)
            assert_same_bits(out["y"][select], ref.y, f"{fmt}/{select}/{dist}")
            got = out["choices"][select]
            assert got.dtype == np.int32 and got.shape == ref.choices.shape, (got.dtype, got.shape)
            np.testing.assert_array_equal(got, ref.choices, err_msg=f"{fmt}/{select}/{dist} choices")
            seen |= set(np.unique(ref.choices).tolist())
        assert seen == {0, 1}, (fmt, select, seen)  # both candidates win somewhere: the comparison discriminates


@pytest.mark.parametrize(
    "fmt",
    ["if4", "mxif6"],  # one NV and one MX layout: the axis handling is shared by every adaptive format
)
def test_axis_0_matches_oracle(fmt):
    """Blocks along axis 0 of a (200, 6) input: the oracle of the transpose, choices in the scales' layout."""
    x = sample("student_t", 3).T.copy()
    ref = adaptive_reference(x.T, fmt, "mse")
    out = bundle(x, fmt, axis=0, selects=("mse",))
    assert_same_bits(out["y"]["mse"], ref.y.T, f"{fmt} axis 0")
    assert out["choices"]["mse"].shape == out["q"].scales.shape
    np.testing.assert_array_equal(out["choices"]["mse"], ref.choices.T)
    assert_same_bits(out["dq"], ref.y.T, f"{fmt} axis 0 dequantize")


@given(seed=st.integers(0, 2**32 - 1), lo=st.integers(-20, 10), zero_frac=st.sampled_from([0.0, 0.3]))
@pytest.mark.parametrize("fmt", ["if4", "nvfp4_4over6", "mxif4"])
def test_hypothesis_random_blocks_match_oracle(fmt, seed, lo, zero_frac):
    """Random (6, 200) data with per-block magnitudes 2^[lo, lo + 10] and zeros: values and choices, every select."""
    rng = np.random.default_rng(seed)
    nb = -(-SHAPE[1] // BLOCK[fmt])
    mag = 2.0 ** rng.integers(lo, lo + 11, size=(SHAPE[0], nb)).repeat(BLOCK[fmt], axis=1)[:, : SHAPE[1]]
    x = rng.standard_t(4, size=SHAPE) * mag
    x[rng.random(SHAPE) < zero_frac] = 0.0
    x = x.astype(np.float32)
    out = bundle(x, fmt)
    for select in SELECTS:
        ref = adaptive_reference(x, fmt, select)
        assert_same_bits(out["y"][select], ref.y, f"{fmt}/{select}")
        np.testing.assert_array_equal(out["choices"][select], ref.choices)


# --- 2. the guarantee: never worse than any candidate, and equal to the chosen one ----------------------------------


@pytest.mark.parametrize("fmt", ADAPTIVE)
def test_guarantee_against_lowbit_candidates(fmt):
    """Per block, every select (metric computed by the oracle): err(adaptive) <= err(candidate) for each candidate,
    and the adaptive block equals the chosen candidate's fake_quant block bit for bit."""
    for dist in DISTS:
        x = sample(dist, 4)
        out = bundle(x, fmt)
        xb = block_view(x, fmt)
        for select in SELECTS:
            ya = block_view(out["y"][select], fmt)
            err_a = block_error(xb, ya, select)
            for c, name in enumerate(CANDIDATE_NAMES[fmt]):
                yc = block_view(out["cand_y"][c], fmt)
                assert (err_a <= block_error(xb, yc, select)).all(), (fmt, select, dist, name)
                pick = out["choices"][select] == c
                assert_same_bits(ya[pick], yc[pick], f"{fmt}/{select}/{dist}: chosen {name} blocks")


# --- 3. ties keep the earliest candidate -----------------------------------------------------------------------------


def tie_data(fmt: str) -> np.ndarray:
    """(6, 200) data whose every block lies on both candidates' grids, so both give the same values.

    IF4 / IF6: {0, +-a} with a = 64 * (6 or 7.5), the tensor amax (a maps to the shared maximum 6 or 7.5 of both
    grids). 4over6: {0, +-6, +-12, +-24} with block amax 24 and tensor amax 1536 (g = 1536 / (6 * 256) = 1,
    s6 = 4 and s4 = 6 map them to E2M1 {0, 1.5, 3, 6} and {0, 1, 2, 4}). MX: {0, +-2^m} per block (MXFP4 4 *
    2^(m-2), MXINT 1 * 2^m, both exact). Every row ends in all-zero blocks; row 1 block 1 is all zero too."""
    b, (rows, n) = BLOCK[fmt], SHAPE
    rng = np.random.default_rng(9)
    sign = rng.choice([-1.0, 1.0], size=SHAPE)
    if fmt in ("if4", "if6"):
        x = (6.0 if fmt == "if4" else 7.5) * 64.0 * rng.choice([0.0, 1.0], size=SHAPE)
        x[0, 0] = (6.0 if fmt == "if4" else 7.5) * 64.0
    elif fmt == "nvfp4_4over6":
        x = rng.choice([0.0, 6.0, 12.0, 24.0], size=SHAPE)
        x[:, ::b] = 24.0
        x[0, 0] = 1536.0
    else:
        m = rng.integers(-8, 8, size=(rows, -(-n // b))).repeat(b, axis=1)[:, :n]
        x = rng.choice([0.0, 1.0], size=SHAPE) * 2.0**m
    x[:, n - n % b - b :] = 0.0  # the last full block and the partial block
    x[1, b : 2 * b] = 0.0
    return (x * sign).astype(np.float32)


@pytest.mark.parametrize("fmt", ADAPTIVE)
def test_ties_pick_the_first_candidate(fmt):
    """Where every candidate gives the same block (checked first), the choice is 0 for every select."""
    x = tie_data(fmt)
    xb = block_view(x, fmt)
    out = bundle(x, fmt)
    cands = [block_view(y, fmt) for y in out["cand_y"]]
    tie = (cands[0] == cands[1]).all(axis=-1)  # equal values (a zero-scale FP block keeps x's zero sign)
    assert tie.all(), (fmt, np.argwhere(~tie))  # the construction: every block gives the same output
    for select in SELECTS:
        errs = [block_error(xb, yc, select) for yc in cands]
        assert (errs[0] == errs[1]).all(), (fmt, select)
        np.testing.assert_array_equal(out["choices"][select], 0, err_msg=f"{fmt}/{select}")
        assert_same_bits(out["y"][select], out["cand_y"][0], f"{fmt}/{select} ties")


def order_data(seed: int = 11) -> np.ndarray:
    """(6, 200) IF4 data whose FP and INT squared (and absolute) errors per block are the same multiset.

    g = 1 (2688 = 6 * 448 in the last block of row 0) and block amax 6 give s = 1. Elements 0 and 1 are 1.5 + t and
    w_2 - t (w_2 = fl32(12/7)): FP rounds both to 1.5, INT both to w_2, so the errors are {t, u} and {u, t} with
    u = w_2 - 1.5 - t. Elements 8 and 9 hold r0, r1 < 0.2 (both grids give 0, the same error), element 15 is 6.
    The exact error sums tie; the float32 tree sum pairs position 0 with 8 and 1 with 9, so it decides."""
    rng = np.random.default_rng(seed)
    x = np.zeros(SHAPE, np.float32)
    xb = x[:, :192].reshape(6, 12, 16)  # a view: blocks 0..11 of each row
    t = (rng.integers(1, 2**20, size=(6, 11)) * 2.0**-23).astype(np.float32)
    xb[:, :11, 0] = np.float32(1.5) + t
    xb[:, :11, 1] = IF4_GRID[7 + 2] - t
    xb[:, :11, 8:10] = rng.uniform(0, 0.2, size=(6, 11, 2))
    xb[:, :11, 15] = 6.0
    xb[0, 11, 0] = 2688.0
    return x * rng.choice(np.float32([-1.0, 1.0]), size=SHAPE)


def sequential_sum(a: np.ndarray) -> np.ndarray:
    """Left-to-right float32 sum over the last axis (an order the contract does not use)."""
    acc = np.zeros(a.shape[:-1], np.float32)
    for i in range(a.shape[-1]):
        acc = acc + a[..., i]
    return acc


@pytest.mark.parametrize("axis", [-1, 0])
def test_summation_order_decides_exact_ties(axis):
    """Blocks whose candidates' exact error sums are equal: the float32 tree sum (halves added elementwise) makes
    the choice, and lowbit_jax's choices are the oracle's; a left-to-right sum would choose differently."""
    x = order_data()
    ref = {s: adaptive_reference(x, "if4", s) for s in ("mse", "mae")}
    xb = block_view(x, "if4")
    y0, y1 = ref["mse"].candidates
    for r, b in np.ndindex(6, 11):  # exact: the two candidates' errors are permutations of each other
        e0 = sorted(abs(Fraction(float(v))) for v in (xb[r, b] - y0[r, b]))
        assert e0 == sorted(abs(Fraction(float(v))) for v in (xb[r, b] - y1[r, b])), (r, b)
    if axis == -1:
        out = bundle(x, "if4")
        got = {s: out["choices"][s] for s in ("mse", "mae")}
    else:
        out = bundle(x.T.copy(), "if4", axis=0, selects=("mse",))
        got = {"mse": out["choices"]["mse"].T}
    for select, choice in got.items():
        assert (ref[select].choices[:, :11] == 1).sum() >= 5, select  # the tree order breaks many exact ties
        np.testing.assert_array_equal(choice, ref[select].choices, err_msg=f"{select} axis {axis}")
    d = [(xb - yc) ** 2 for yc in (y0, y1)]
    seq = (sequential_sum(d[1]) < sequential_sum(d[0])).astype(np.int32)
    assert (seq != ref["mse"].choices).any()  # the data tells the orders apart


def test_all_zero_input_gives_zeros_and_choice_zero():
    """An all-zero tensor (+0 and -0 rows): zeros, the first candidate's bits, and choice 0 for every select."""
    x = np.zeros(SHAPE, np.float32)
    x[1] = -0.0
    for fmt in ADAPTIVE:
        out = bundle(x, fmt)
        for select in SELECTS:
            assert (out["y"][select] == 0).all(), fmt
            assert_same_bits(out["y"][select], out["cand_y"][0], fmt)
            np.testing.assert_array_equal(out["choices"][select], 0)
        assert_same_bits(out["dq"], out["y"]["mse"], fmt)


# --- 4. dequantize(quantize(x)) == fake_quant(x), and what is stored -------------------------------------------------


@pytest.mark.parametrize("fmt", ADAPTIVE)
def test_dequantize_quantize_is_fake_quant(fmt):
    """Bit for bit (select=mse), with a NaN block and a partial last block; the oracle agrees."""
    x = sample("laplace", 5)
    x[2, 40] = np.nan
    out = bundle(x, fmt)
    assert out["q"].fmt == lb.get_format(fmt) and out["q"].shape == SHAPE
    assert_same_bits(out["dq"], out["y"]["mse"], fmt)
    assert_same_bits(out["dq"], adaptive_reference(x, fmt, "mse").y, f"{fmt} oracle")


@functools.cache
def _qdq(fmt):
    return jax.jit(lambda x: (lb.dequantize(lb.quantize(x, fmt)), lb.fake_quant(x, fmt)))


@pytest.mark.parametrize("fmt,select", [("if4", "mae"), ("mxif4", "absmax"), ("nvfp4_4over6", "absmax")])
def test_dequantize_quantize_is_fake_quant_other_selects(fmt, select):
    """The same identity for select=mae and select=absmax (a compilation each; one per choice storage)."""
    x = sample("outlier", 5)
    x[2, 40] = np.nan
    got, want = (np.asarray(y) for y in _qdq(lb.get_format(spec(fmt, select)))(x))
    assert_same_bits(got, want, f"{fmt}/{select}")
    assert_same_bits(got, adaptive_reference(x, fmt, select).y, f"{fmt}/{select} oracle")


@pytest.mark.parametrize("fmt", ["if4", "if6"])
def test_if_storage_sign_bit_scales_and_codes(fmt):
    """E4M3 scales whose sign bit is the INT choice and whose magnitude is the shared s; FP blocks store the
    element's S.E.M bits, INT blocks two's-complement k in the element width; no separate selectors."""
    width, fp_dtype = {"if4": (4, ml_dtypes.float4_e2m1fn), "if6": (6, ml_dtypes.float6_e2m3fn)}[fmt]
    fp_c, int_c = NV_CANDIDATES[fmt]
    for dist in DISTS:
        x = sample(dist, 6)
        x[1, 17] = np.inf
        ref = adaptive_reference(x, fmt, "mse")
        fp_r, int_r = nv_candidate(x, fp_c), nv_candidate(x, int_c)
        q = bundle(x, fmt)["q"]
        assert q.selectors is None and q.scales.dtype == jnp.float8_e4m3fn
        assert q.scales.shape == ref.choices.shape
        np.testing.assert_array_equal(q.scales.view(np.uint8) >> 7, ref.choices, err_msg=f"{fmt}/{dist} sign bits")
        mag = np.abs(q.scales.astype(np.float32))
        assert_same_bits(mag, np.abs(fp_r.scales), f"{fmt}/{dist} |scales|")
        assert_same_bits(q.tensor_scale, fp_r.g, f"{fmt}/{dist} tensor scale")
        codes = q.codes.astype(np.uint8).reshape(ref.choices.shape + (-1,))
        fp_codes = fp_r.elements.astype(fp_dtype).view(np.uint8)
        int_codes = (int_r.k & (2**width - 1)).astype(np.uint8)
        want = np.where(ref.choices[..., None] == 1, int_codes, fp_codes)
        ok = ref.finite
        np.testing.assert_array_equal(codes[ok], want[ok], err_msg=f"{fmt}/{dist} codes")
        assert (codes < 2**width).all()


@pytest.mark.parametrize("fmt", ["if4", "if6"])
def test_if_scale_sign_bit_selects_the_grid_on_decode(fmt):
    """Flipping the scales' sign bits (codes kept) decodes every block with the other grid: FP blocks read their
    codes as two's-complement k (value fl(w_k * fl(|s| g))), INT blocks as S.E.M; the sign is never the value's
    sign. A scale of -0.0 (INT selected, zero scale) decodes to zeros. The FP code of -0 read as INT is k = -2^(w-1),
    outside the symmetric grid (no valid INT code), so those elements are not compared."""
    width, fp_dtype = {"if4": (4, ml_dtypes.float4_e2m1fn), "if6": (6, ml_dtypes.float6_e2m3fn)}[fmt]
    grid = IF4_GRID if fmt == "if4" else IF6_GRID
    x = sample("student_t", 12)
    ref = adaptive_reference(x, fmt, "mse")
    q = bundle(x, fmt)["q"]
    sbits = q.scales.view(np.uint8)
    flipped = (sbits ^ 0x80).view(ml_dtypes.float8_e4m3fn)
    flipped[0, 2] = np.uint8(0x80).view(ml_dtypes.float8_e4m3fn)  # -0.0
    y = np.asarray(lb.dequantize(dataclasses.replace(q, scales=jnp.asarray(flipped))))
    codes = q.codes.astype(np.uint8).reshape(ref.choices.shape + (-1,))
    k = codes.astype(np.int32) - np.where(codes >= 2 ** (width - 1), 2**width, 0)
    fp_vals = codes.view(fp_dtype).astype(np.float32)
    d = (np.abs(q.scales.astype(np.float32)) * q.tensor_scale)[..., None]
    as_int = ref.choices[..., None] == 0
    valid = ~as_int | (k > -(2 ** (width - 1)))
    want = np.where(as_int, grid[np.clip(k + (grid.size - 1) // 2, 0, grid.size - 1)], fp_vals) * d
    yb = block_view(y, fmt)
    assert (yb[0, 2] == 0).all()
    keep = np.ones(codes.shape, bool) & valid & ref.finite[..., None]
    keep[0, 2] = False
    assert keep.mean() > 0.5
    assert_same_bits(yb[keep], want[keep], f"{fmt} flipped selectors")
    assert (ref.choices == 0).any() and (ref.choices == 1).any()


def test_nvfp4_4over6_stores_the_chosen_scale():
    """The stored E4M3 scale and E2M1 codes are the chosen candidate's (s6 or s4); g = amax / (6 * 256)."""
    for dist in DISTS:
        x = sample(dist, 7)
        ref = adaptive_reference(x, "nvfp4_4over6", "mse")
        r6, r4 = (nv_candidate(x, c) for c in NV_CANDIDATES["nvfp4_4over6"])
        q = bundle(x, "nvfp4_4over6")["q"]
        assert q.selectors is None and q.scales.dtype == jnp.float8_e4m3fn
        want_s = np.where(ref.choices == 1, r4.scales, r6.scales)
        assert_same_bits(q.scales.astype(np.float32), want_s, f"4over6/{dist} scales")
        assert_same_bits(q.tensor_scale, r6.g, f"4over6/{dist} tensor scale")
        assert r6.g == np.float32(np.abs(x).max() / np.float32(1536.0))
        want_e = np.where(ref.choices[..., None] == 1, r4.elements, r6.elements)
        assert_same_bits(q.codes.astype(np.float32).reshape(want_e.shape), want_e, f"4over6/{dist} codes")


@pytest.mark.parametrize("fmt", list(MX_CANDIDATES))
def test_mxif_stores_selectors_and_the_chosen_scale(fmt):
    """selectors: uint8 of the scales' shape, 0 = FP, 1 = INT; each block's UE8M0 scale is its candidate's."""
    for dist in DISTS:
        x = sample(dist, 8)
        ref = adaptive_reference(x, fmt, "mse")
        out = bundle(x, fmt)
        q = out["q"]
        assert q.selectors is not None and q.selectors.dtype == np.uint8
        assert q.selectors.shape == q.scales.shape == ref.choices.shape
        np.testing.assert_array_equal(q.selectors, ref.choices)
        cand_scales = [cq.scales.astype(np.float32) for cq in out["cand_q"]]
        want = np.where(ref.choices == 1, cand_scales[1], cand_scales[0])
        assert q.scales.dtype == jnp.float8_e8m0fnu
        assert_same_bits(q.scales.astype(np.float32), want, f"{fmt}/{dist} scales")


# --- 5. stochastic rounding: RNE choice, the chosen candidate's own uniforms -----------------------------------------


@pytest.mark.parametrize(
    "fmt",
    ["if4", "mxif4"],  # the choice's storage differs, the SR rule does not
)
def test_stochastic_rounding_uses_the_rne_choice(fmt):
    """Each block of fake_quant(x, fmt, key=k) is the same block of fake_quant(x, candidate, key=k), where the
    candidate is the one the oracle picks with round-to-nearest."""
    x = sample("sparse", 9)
    ref = adaptive_reference(x, fmt, "mse")
    ys, *ycs = (block_view(y, fmt) for y in sr_bundle(x, fmt, jax.random.key(3)))
    for c, name in enumerate(CANDIDATE_NAMES[fmt]):
        pick = ref.choices == c
        assert pick.any(), (fmt, name)
        assert_same_bits(ys[pick], ycs[c][pick], f"{fmt} SR {name}")
    assert (bits32(ys) != bits32(block_view(ref.y, fmt))).any()  # SR did move some values off RNE


# --- 6. NaN / Inf ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ADAPTIVE)
def test_nonfinite_block_is_nan_others_unaffected(fmt):
    """A NaN/Inf element makes its whole block NaN with choice 0; every other block equals the result with that
    block zeroed (and the oracle)."""
    b = BLOCK[fmt]
    base = sample("outlier", 10)
    zeroed = base.copy()
    zeroed[2, b : 2 * b] = 0.0
    ref_zeroed = bundle(zeroed, fmt)
    other = np.ones(SHAPE, bool)
    other[2, b : 2 * b] = False
    for special in (np.nan, np.inf, -np.inf):
        x = base.copy()
        x[2, b + 3] = special
        out = bundle(x, fmt)
        for select in SELECTS:
            y = out["y"][select]
            assert np.isnan(y[2, b : 2 * b]).all(), (fmt, special, select)
            assert_same_bits(y[other], ref_zeroed["y"][select][other], f"{fmt}/{special}/{select} other blocks")
            assert_same_bits(y, adaptive_reference(x, fmt, select).y, f"{fmt}/{special}/{select} oracle")
            ch = out["choices"][select]
            assert ch[2, 1] == 0 and ref_zeroed["choices"][select][2, 1] == 0
            np.testing.assert_array_equal(ch, ref_zeroed["choices"][select])
        assert_same_bits(out["dq"], out["y"]["mse"], f"{fmt}/{special} dequantize")

"""MS-EDEN (lowbit_jax.eden) against a numpy transcription of Quartet II's kernel, and its statistics.

Oracle: `quartet2_eden_numpy` below transcribes the Triton kernel `eden_1x16s_fp4_kernel` of Quartet II
(github.com/IST-DASLab/Quartet-II, src/models/quantization/schemes/quartet_2.py) step by step in numpy float32
(IEEE operations, ml_dtypes' round-to-nearest-even E4M3 cast, the E2M1 thresholds written out, the corrected
scale's neighbours taken from the E4M3 bit pattern +-1 as the kernel does), fed the same rotated input, tensor
amax and uniforms. What the kernel leaves to its compiler, the order of the tl.sum over a group and whether a
product is fused into the following addition, is fixed as lowbit_jax.eden documents it: a pairwise tree of terms
built from exact partial products (xs q = RN(hi q + lo q), xs^2 = RN(RN(hi^2 + 2 hi lo) + lo^2), hi the top 12 bits
of xs). The transcription is compared bit for bit except for the sign of zero (the kernel writes -0 for an exact +0
input).

Statistics: a fixed x, K = 1000 draws of (rotation signs, scale / element SR key), deterministic keys. Each draw
gives x_hat = Q(x R) R^T; the statistics are the mean over draws of (a) the error projected on x,
<x_hat - x, x> / <x, x>, with its standard error, and (b) every coordinate's error, combined as a chi-square
sum of the squared z-scores. Bounds: |z| < 5 for a claimed-unbiased mean (P < 6e-7 under the null), the
chi-square's z = (chi2 - d) / sqrt(2 d) < 5, the largest coordinate |z| < 5.5 (Bonferroni over d <= 4096:
P < 2e-4). Fixed keys make each outcome one deterministic draw, and the measured values (docs/rounding.md) sit
well inside these bounds, so the tests are not flaky; the RTN control and MS-EDEN's own projection bias are
detected at many standard errors.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import lowbit_jax as lb
from lowbit_jax import codec, eden, hadamard, scaling
from lowbit_jax.formats import Format

E4M3 = ml_dtypes.float8_e4m3fn
TIE_POINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


# --- the transcription ------------------------------------------------------------------------------------------------


def tree_sum(v: np.ndarray) -> np.ndarray:
    """float32 sum over the last axis, folded in halves (zero-padded to a power of two)."""
    n = v.shape[-1]
    width = 1 << (n - 1).bit_length()
    v = np.concatenate([v, np.zeros(v.shape[:-1] + (width - n,), np.float32)], axis=-1)
    while v.shape[-1] > 1:
        half = v.shape[-1] // 2
        v = v[..., :half] + v[..., half:]
    return v[..., 0]


def e4m3_satfinite(v: np.ndarray) -> np.ndarray:
    """float32 >= 0 -> float8_e4m3fn, round to nearest even, saturating at 448 (cvt.rn.satfinite)."""
    return np.minimum(v, np.float32(448.0)).astype(E4M3)


def quartet2_eden_numpy(x, u, amax, h, override, ties="away"):
    """The Triton kernel on rows of x (rotated float32, blocks of 16 along the last axis): (output, chosen block
    scales, corrections). u: one uniform per block; ties="even" swaps the threshold table for an RNE cast."""
    x = np.asarray(x, np.float32)
    scales_max, val_max, amax = np.float32(255.99), np.float32(6.0 / override), np.float32(amax)
    s_dec = np.float32(1.0) if amax == 0 else (amax / scales_max) / val_max
    xg = x.reshape(-1, 16)
    s_dec_b = np.max(np.abs(xg), axis=-1, keepdims=True) / val_max
    s8 = e4m3_satfinite(s_dec_b / s_dec).astype(np.float32)
    s8 = np.where(s8 == 0, np.float32(1.0), s8)
    xs = xg / (s8 * s_dec)
    a = np.abs(xs)
    if ties == "away":
        conds = [a >= 5, a >= 3.5, a >= 2.5, a >= 1.75, a >= 1.25, a >= 0.75, a >= 0.25]
        mag = np.select(conds, [6.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.5], 0.0).astype(np.float32)
    else:
        mag = np.minimum(a, np.float32(6.0)).astype(ml_dtypes.float4_e2m1fn).astype(np.float32)
    q = mag * np.where(xs > 0, np.float32(1.0), np.float32(-1.0))
    hi = (xs.view(np.uint32) & np.uint32(0xFFFFF000)).view(np.float32)  # the sums' terms, as lowbit_jax.eden
    lo = xs - hi
    sq, cross = (hi * hi + (np.float32(2.0) * hi) * lo) + lo * lo, hi * q + lo * q
    num, den = tree_sum(sq.reshape(-1, h)), tree_sum(cross.reshape(-1, h))
    corr = np.where(den == 0, np.float32(1.0), num / np.where(den == 0, np.float32(1.0), den))
    c = (s8.reshape(-1, h // 16) * corr[:, None]).reshape(-1, 1)
    bits = e4m3_satfinite(c).view(np.uint8)
    value = lambda b: b.view(E4M3).astype(np.float32)
    with np.errstate(invalid="ignore"):
        prev, curr, nxt = value(bits - np.uint8(1)), value(bits), value(bits + np.uint8(1))
        up = np.where(curr > c, curr, nxt)
        down = np.where(curr > c, prev, curr)
        prob = (c - down) / (up - down)  # NaN above 448 (no upper neighbour): the kernel keeps 448
    scale = np.where(np.asarray(u, np.float32).reshape(-1, 1) < prob, up, down)
    out = (q * scale) * s_dec
    return out.reshape(x.shape), scale.reshape(x.shape[0], -1), corr.reshape(x.shape[0], -1)


def same_bits_up_to_zero_sign(got, want):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    norm = lambda v: np.where(v == 0, np.float32(0.0), v).view(np.uint32)
    bad = np.flatnonzero(norm(got) != norm(want))
    assert bad.size == 0, f"{bad.size} differ, first at {bad[0]}: {got.flat[bad[0]]!r} vs {want.flat[bad[0]]!r}"


# --- data -------------------------------------------------------------------------------------------------------------


def tie_amax(override: float) -> np.float32:
    """A tensor amax whose tensor scale s_dec has its last two mantissa bits 0 and whose block scale is 256, so that
    t * 256 * s_dec is exact and divides back to t exactly for every tie point t (found by a deterministic search)."""
    val_max = np.float32(6.0 / override)
    for k in range(4096):
        amax = np.float32(3.0 + k / 1024)
        s_dec = (amax / np.float32(255.99)) / val_max
        ratio = (amax / val_max) / s_dec
        if (s_dec.view(np.uint32) & 3) == 0 and e4m3_satfinite(ratio).astype(np.float32) == 256:
            return amax
    raise AssertionError("no amax found")


def eden_data(override: float, seed: int = 0) -> tuple[np.ndarray, np.float32]:
    """Rotated heavy-tailed rows (8 x 256) with: exact E2M1 ties in row 0 (blocks whose max is the tensor amax),
    an all-zero group (row 1, second half), a block of values ~1e-9 of the amax whose E4M3 scale underflows to 0
    (row 2), and a block of a single nonzero element (row 3)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8, 256)) * np.exp(rng.standard_normal((8, 1)))
    x[rng.random(x.shape) < 0.01] *= 8
    x = np.asarray(hadamard.rotate(jnp.asarray(x, jnp.float32), 128, jax.random.key(seed)))
    amax = tie_amax(override)
    x = (x * (0.9 * amax / np.max(np.abs(x)))).astype(np.float32)
    p = np.float32(256.0) * ((amax / np.float32(255.99)) / np.float32(6.0 / override))
    ties = np.float32(TIE_POINTS + tuple(-t for t in TIE_POINTS)) * p
    for b in range(4):
        x[0, 16 * b] = amax if b % 2 == 0 else -amax
        x[0, 16 * b + 1 : 16 * b + 15] = ties
    x[1, 128:] = 0.0
    x[2, 16:32] = x[2, 16:32] * np.float32(1e-9)
    x[3, 32:48] = 0.0
    x[3, 40] = np.float32(0.5)
    return x, amax


def uniforms(shape, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).integers(0, 2**24, size=shape) * 2.0**-24).astype(np.float32)


# --- bit for bit against the kernel -----------------------------------------------------------------------------------


@pytest.mark.parametrize("override", [eden.QUARTET2_BACKWARD_OVERRIDE, 1.0])
@pytest.mark.parametrize("group", [128, 32])
@pytest.mark.parametrize("ties", ["away", "even"])
def test_matches_the_quartet2_kernel_bit_for_bit(override, group, ties):
    x, amax = eden_data(override)
    u = uniforms((8, 16), seed=group)
    want, want_scale, want_corr = quartet2_eden_numpy(x, u, amax, group, override, ties)
    kw = dict(group=group, scale_override=override, amax=amax, ties=ties, uniform=u)
    got = eden.ms_eden_fake_quant(jnp.asarray(x), "nvfp4", None, **kw)
    same_bits_up_to_zero_sign(got, want)
    parts = eden.ms_eden_parts(jnp.asarray(x), "nvfp4", None, **kw)
    same_bits_up_to_zero_sign(parts.scales, want_scale)
    same_bits_up_to_zero_sign(parts.correction, want_corr)
    assert np.all(np.asarray(got)[1, 128:] == 0) and np.all(np.asarray(got)[2, 16:32] == 0)


def test_ties_round_away_or_to_even():
    """Row 0 of the test data holds x / (s_b s_t) exactly at every E2M1 midpoint: "away" takes the larger
    magnitude (0.25 -> 0.5, 1.25 -> 1.5, 2.5 -> 3, 5 -> 6), "even" the even code (0, 1, 2, 4)."""
    x, amax = eden_data(1.0)
    u = uniforms((8, 16), 1)
    got = {
        t: np.asarray(
            eden.ms_eden_parts(jnp.asarray(x), "nvfp4", None, scale_override=1.0, amax=amax, ties=t, uniform=u).values
        )[0, 1:8]
        for t in eden.TIES
    }
    np.testing.assert_array_equal(got["away"], [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    np.testing.assert_array_equal(got["even"], [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0])


def test_key_draws_24_bit_uniforms_per_block():
    x, _ = eden_data(1.0)
    key = jax.random.key(4)
    u = codec.uniform_like(key, (8, 16))
    a = eden.ms_eden_fake_quant(jnp.asarray(x), "nvfp4", key)
    b = eden.ms_eden_fake_quant(jnp.asarray(x), "nvfp4", None, uniform=u)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c = eden.ms_eden_fake_quant(jnp.asarray(x), "nvfp4", None, uniform=u, amax=np.max(np.abs(x)))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))  # the default amax is max |x_rot|


# --- properties -------------------------------------------------------------------------------------------------------

E4M3_VALUES = np.unique(np.arange(256, dtype=np.uint8).view(E4M3).astype(np.float32))
E4M3_VALUES = E4M3_VALUES[np.isfinite(E4M3_VALUES) & (E4M3_VALUES >= 0)]


def test_scale_is_an_e4m3_neighbour_of_the_corrected_scale_and_the_parts_compose():
    x, _ = eden_data(eden.QUARTET2_BACKWARD_OVERRIDE, seed=3)
    p = eden.ms_eden_parts(jnp.asarray(x), "nvfp4", jax.random.key(2))
    c = (np.asarray(p.rtn_scales) * np.repeat(np.asarray(p.correction), 8, axis=-1)).astype(np.float32).ravel()
    s = np.asarray(p.scales).ravel()
    i = np.searchsorted(E4M3_VALUES, c, side="right") - 1
    down, up = E4M3_VALUES[i], E4M3_VALUES[np.minimum(i + 1, E4M3_VALUES.size - 1)]
    assert np.all((s == down) | ((s == up) & (c > down)))
    y = eden.ms_eden_fake_quant(jnp.asarray(x), "nvfp4", jax.random.key(2))
    composed = (np.asarray(p.values) * np.repeat(np.asarray(p.scales), 16, axis=-1)) * np.asarray(p.tensor_scale)
    np.testing.assert_array_equal(np.asarray(y), composed)


def test_nan_and_inf_blocks_become_nan_and_leave_the_rest_alone():
    """A block holding NaN or Inf is NaN; every other element equals the result with that block zeroed (it is left
    out of the group's sums and of the tensor amax)."""
    x, _ = eden_data(1.0, seed=5)
    bad = x.copy()
    bad[4, 0], bad[5, 70] = np.nan, -np.inf
    zeroed = x.copy()
    zeroed[4, 0:16], zeroed[5, 64:80] = 0.0, 0.0
    key = jax.random.key(8)
    y = np.asarray(eden.ms_eden_fake_quant(jnp.asarray(bad), "nvfp4", key))
    want = np.asarray(eden.ms_eden_fake_quant(jnp.asarray(zeroed), "nvfp4", key))
    nan = np.zeros(x.shape, bool)
    nan[4, 0:16], nan[5, 64:80] = True, True
    assert np.all(np.isnan(y[nan])) and np.all(np.isfinite(y[~nan]))
    np.testing.assert_array_equal(y[~nan], want[~nan])


def test_zeros_axis_dtype_jit_and_gradient():
    z = eden.ms_eden_fake_quant(jnp.zeros((4, 128)), "nvfp4", jax.random.key(0))
    assert np.all(np.asarray(z) == 0)
    x, _ = eden_data(1.0, seed=6)
    key = jax.random.key(1)
    y = eden.ms_eden_fake_quant(jnp.asarray(x), "nvfp4", key)
    u = uniforms((8, 16), 2)
    y_u = eden.ms_eden_fake_quant(jnp.asarray(x), "nvfp4", None, uniform=u)
    yt = eden.ms_eden_fake_quant(jnp.asarray(x.T), "nvfp4", None, axis=0, uniform=u.T)
    np.testing.assert_array_equal(np.asarray(yt).T, np.asarray(y_u))
    jitted = jax.jit(lambda v, k: eden.ms_eden_fake_quant(v, "nvfp4", k))
    np.testing.assert_array_equal(np.asarray(jitted(jnp.asarray(x), key)), np.asarray(y))
    xb = jnp.asarray(x, jnp.bfloat16)
    yb = eden.ms_eden_fake_quant(xb, "nvfp4", key)
    assert yb.dtype == jnp.bfloat16
    ref = eden.ms_eden_fake_quant(xb.astype(jnp.float32), "nvfp4", key)
    np.testing.assert_array_equal(np.asarray(yb), np.asarray(ref.astype(jnp.bfloat16)))
    g = jax.grad(lambda v: jnp.sum(eden.ms_eden_fake_quant(v, "nvfp4", key) * v))(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(g), np.asarray(y) + x)


# --- errors -----------------------------------------------------------------------------------------------------------


def test_errors():
    x, key = jnp.ones((2, 128)), jax.random.key(0)
    with pytest.raises(ValueError, match="positive multiple of the block size 16"):
        eden.ms_eden_fake_quant(x, "nvfp4", key, group=24)
    with pytest.raises(ValueError, match="not a multiple of the correction group"):
        eden.ms_eden_fake_quant(jnp.ones((2, 96)), "nvfp4", key, group=64)
    for fmt in ("mxfp4", "nvint4", "mxfp8", "nvfp4_2d", "nvfp4_4over6", "bf16"):
        with pytest.raises(ValueError, match="E2M1 .FP4. elements in 1-D blocks with E4M3"):
            eden.ms_eden_fake_quant(x, fmt, key)
    with pytest.raises(ValueError, match="sets its own FP32 tensor scale"):
        eden.ms_eden_fake_quant(x, "nvfp4_to6", key)
    with pytest.raises(ValueError, match="exactly one of key= and uniform="):
        eden.ms_eden_fake_quant(x, "nvfp4", None)
    with pytest.raises(ValueError, match="exactly one of key= and uniform="):
        eden.ms_eden_fake_quant(x, "nvfp4", key, uniform=jnp.zeros((2, 8)))
    with pytest.raises(ValueError, match="one value per block"):
        eden.ms_eden_fake_quant(x, "nvfp4", None, uniform=jnp.zeros((2, 16)))
    with pytest.raises(ValueError, match="ties must be one of"):
        eden.ms_eden_fake_quant(x, "nvfp4", key, ties="up")
    for kw in ({"scale_override": 0.0}, {"scale_bound": 500.0}, {"scale_bound": -1.0}):
        with pytest.raises(ValueError, match="positive finite number"):
            eden.ms_eden_fake_quant(x, "nvfp4", key, **kw)
    with pytest.raises(ValueError, match="out of range"):
        eden.ms_eden_fake_quant(x, "nvfp4", key, axis=2)
    with pytest.raises(TypeError, match="float32, bfloat16 and float16"):
        eden.ms_eden_fake_quant(jnp.ones((2, 128), jnp.int32), "nvfp4", key)


# --- statistics over rotations ----------------------------------------------------------------------------------------

H, K = 128, 1000
SR_HEADROOM = Format("nvfp4_sr_17_16", lb.fp(2, 1), 16, scaling.FloatScale("e4m3", tensor="fp32", target=6 * 16 / 17))
QUANTIZERS = {  # (x_rot, key) -> quantized x_rot
    "ms_eden": lambda xr, k: eden.ms_eden_fake_quant(xr, "nvfp4", k, group=H),
    "sr": lambda xr, k: lb.fake_quant(xr, SR_HEADROOM, key=k),  # no block maximum can clip: exactly unbiased SR
    "rtn": lambda xr, k: lb.fake_quant(xr, "nvfp4"),
}


def fixed_x() -> jax.Array:
    return jnp.asarray(np.random.default_rng(0).standard_normal((8, 512)), jnp.float32)


def rotation_draws(x: jax.Array, quantizer, seed: int = 0):
    """Over K draws of (rotation, SR key): the projected errors <x_hat - x, x> / <x, x>, relative squared errors
    |x_hat - x|^2 / |x|^2 and the errors x_hat - x (K, *x.shape), float64."""
    keys = jax.random.split(jax.random.key(seed), 2 * K).reshape(K, 2)

    def one(kk):
        x_hat = hadamard.rotate(quantizer(hadamard.rotate(x, H, kk[0]), kk[1]), H, kk[0], inverse=True)
        e = x_hat - x
        return jnp.sum(e * x) / jnp.sum(x * x), jnp.sum(e * e) / jnp.sum(x * x), e

    return tuple(np.asarray(v, np.float64) for v in jax.jit(jax.vmap(one))(keys))


def z_of_mean(v: np.ndarray) -> float:
    return float(v.mean() / (v.std(ddof=1) / math.sqrt(v.shape[0])))


def coordinate_z(e: np.ndarray) -> tuple[float, float]:
    """(chi-square z of the per-coordinate mean errors, largest |z|)."""
    z = e.mean(0) / (e.std(0, ddof=1) / math.sqrt(e.shape[0]))
    d = z.size
    return float((np.sum(z**2) - d) / math.sqrt(2 * d)), float(np.max(np.abs(z)))


@pytest.mark.slow
def test_bias_and_error_over_rotations():
    """K = 1000 rotations + SR keys of one Gaussian x (8 x 512). SR (17/16 headroom) is unbiased in every statistic;
    RTN is biased (projection z about -68, coordinates' chi-square z about +100); MS-EDEN shows no per-coordinate
    bias at this K but a projection bias of about -5e-4 (its correction is taken in the scaled domain), 1/9 of
    RTN's, and a squared error 2.4x below SR's (measured values: docs/rounding.md)."""
    x = fixed_x()
    res = {name: rotation_draws(x, q) for name, q in QUANTIZERS.items()}
    proj = {n: r[0] for n, r in res.items()}
    mse = {n: float(r[1].mean()) for n, r in res.items()}
    coord = {n: coordinate_z(r[2]) for n, r in res.items()}
    assert abs(z_of_mean(proj["sr"])) < 5 and coord["sr"][0] < 5 and coord["sr"][1] < 5.5
    assert z_of_mean(proj["rtn"]) < -20 and coord["rtn"][0] > 20
    assert coord["ms_eden"][0] < 5 and coord["ms_eden"][1] < 5.5
    assert z_of_mean(proj["ms_eden"]) < -3  # detected: MS-EDEN is not exactly unbiased
    assert abs(proj["ms_eden"].mean()) < abs(proj["rtn"].mean()) / 4
    assert mse["sr"] / mse["ms_eden"] > 2


@pytest.mark.slow
def test_gemm_estimate_over_rotations():
    """<A_hat, B_hat> of two independent Gaussian operands (16 x 1024) rotated with the same R, quantized with
    independent keys, K = 1000 draws: SR and MS-EDEN show no per-entry bias of A B^T, RTN does; MS-EDEN's error
    projected on A B^T is the sum of both operands' projection biases (about -1e-3), under 1/4 of RTN's."""
    rng = np.random.default_rng(1)
    a, b = (jnp.asarray(rng.standard_normal((16, 1024)), jnp.float32) for _ in range(2))
    c = np.asarray(jnp.matmul(a, b.T, precision="highest"), np.float64)
    keys = jax.random.split(jax.random.key(5), 3 * K).reshape(K, 3)
    out = {}
    for name, q in QUANTIZERS.items():

        def one(kk, q=q):
            ar, br = hadamard.rotate(a, H, kk[0]), hadamard.rotate(b, H, kk[0])
            return jnp.matmul(q(ar, kk[1]), q(br, kk[2]).T, precision="highest")

        e = np.asarray(jax.jit(jax.vmap(one))(keys), np.float64) - c
        out[name] = ((e * c).sum((1, 2)) / (c * c).sum(), coordinate_z(e))
    assert abs(z_of_mean(out["sr"][0])) < 5 and out["sr"][1][0] < 5 and out["sr"][1][1] < 5.5
    assert out["ms_eden"][1][0] < 5 and out["ms_eden"][1][1] < 5.5
    assert z_of_mean(out["rtn"][0]) < -20 and out["rtn"][1][0] > 20
    assert abs(out["ms_eden"][0].mean()) < abs(out["rtn"][0].mean()) / 4

"""Memory contracts: a block longer than its axis is clamped to the axis (no padding to the block), the Hadamard
rotation needs no h x h matrix for large h, and stochastic rounding's scratch memory stays near JAX's own
random-bit generation. Memory is measured deterministically: XLA's compiled memory analysis (temp bytes) and
tracemalloc of the host's numpy allocations, never timings."""

import tracemalloc

import flax.serialization
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import lowbit_jax as lb
from lowbit_jax import hadamard, kernels
from lowbit_jax.kernels import reference

HUGE = 2**26  # a block of 2^26 elements: padding 40 elements up to it held 256 MiB of codes per row
U32 = 2.0**-24  # unit roundoff of float32
U64 = 2.0**-53


def temp_bytes(f, *args) -> int:
    """Scratch bytes XLA's compiled program of f needs for these argument shapes (no run, deterministic)."""
    return jax.jit(f).lower(*args).compile().memory_analysis().temp_size_in_bytes


def heavy(shape, seed: int) -> np.ndarray:
    """float32 normals times per-row powers of two 2^-8..2^8 and a few outliers (varied block scales)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * np.exp2(rng.integers(-8, 9, shape[:-1] + (1,)))
    x.reshape(-1)[rng.integers(0, x.size, 3)] *= 50.0
    return x.astype(np.float32)


# --- a block longer than its axis ----------------------------------------------------------------------------------

ZERO_FREE = lb.Format("lut16_no_zero", lb.elements.lut(np.linspace(-1.0, 1.0, 16)), block_size=32, scale="fp32")
ZERO_FREE_B = lb.Format("lut16_no_zero_b", lb.elements.lut(np.linspace(-1.0, 1.0, 16) + 0.03), 32, scale="fp32")

# Every scale rule: UE8M0 ceil / floor / even / bf16 arithmetic, E4M3 with an FP32 and a power-of-two tensor scale,
# UE5M3, FP32 (also in bf16), zero-point INT, lookup tables (one without 0), and the adaptive selections.
ONE_D = [
    "mxfp4",
    "mxint8:scale_rounding=floor",
    "mxint4:scale_rounding=even",
    "mxfp8:scale_dtype=bfloat16",
    "nvfp4",
    "nvint4",
    "nvfp4:tensor_scale=ue8m0",
    "fp(2,1):scale=ue5m3",
    "fp(2,1):scale=fp32:scale_dtype=bfloat16",
    "int(4):int_range=zero_point",
    "nf4",
    ZERO_FREE,
    "if4",
    "mxif4",
    "nvfp4_4over6",
    lb.adaptive([ZERO_FREE, ZERO_FREE_B]),
]
ONE_D_IDS = [f if isinstance(f, str) else f.name for f in ONE_D]


def with_block(fmt, block):
    return lb.get_format(fmt, block_size=block)


def assert_same_bits(a, b, what: str):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert a.tobytes() == b.tobytes(), f"{what}: {np.flatnonzero(a.view(np.uint8) != b.view(np.uint8))[:8]}"


def fields(q: lb.QArray) -> list:
    return [q.codes, q.scales, q.tensor_scale, q.zero_points, q.selectors]


def assert_same_fields(q, r, what: str):
    """Bit-identical stored arrays of two QArrays (or of their `fields` lists)."""
    q, r = (fields(a) if isinstance(a, lb.QArray) else a for a in (q, r))
    for name, a, b in zip(("codes", "scales", "tensor", "zero", "selectors"), q, r):
        assert (a is None) == (b is None), f"{what}: {name}"
        if a is not None:
            assert_same_bits(a, b, f"{what}: {name}")


@pytest.mark.parametrize("fmt", ONE_D, ids=ONE_D_IDS)
def test_block_longer_than_the_axis_is_the_axis(fmt):
    """block_size 2^26 on 40 elements: codes (3, 40), one scale per row, a few KiB of scratch; the values and stored
    fields equal those of block_size = 40 and of the per-channel format, with and without a stochastic-rounding
    key (its uniforms follow the layout); fake_quant == dequantize(quantize).

    And the old layout, evaluated explicitly (x zero-padded to a 4096-element block, cropped), gives the same
    values: zero lies inside every block's range, so the block amax, min and max (hence the scales, the tensor
    scale and the zero points) do not change, and padded elements are cropped. Not so for an adaptive format with
    a candidate grid without 0 (ZERO_FREE): padded zeros round to a non-zero value, whose error entered the block
    choice; the clamped block has no such elements, and equals block_size = 40."""
    x = heavy((3, 40), 0)
    x[1] = 0.0  # a zero block
    big, exact, channel, padded = (with_block(fmt, b) for b in (HUGE, 40, "channel", 4096))
    q = jax.eval_shape(lambda v: lb.quantize(v, big), x)
    assert q.codes.shape == (3, 40) and q.shape == (3, 40)
    assert q.scales.shape == (3, 1)
    assert temp_bytes(lambda v: lb.fake_quant(v, big), x) < 64 * 1024  # the padded layout needed 768 MiB

    @jax.jit
    def results(v, key):
        out = {f"y_{n}": lb.fake_quant(v, f) for n, f in (("big", big), ("exact", exact), ("channel", channel))}
        out["y_padded"] = lb.fake_quant(jnp.pad(v, [(0, 0), (0, 4096 - 40)]), padded)[:, :40]
        out["round_trip"] = lb.dequantize(lb.quantize(v, big))
        out["q_big"], out["q_exact"] = fields(lb.quantize(v, big)), fields(lb.quantize(v, exact))
        out["sr_big"], out["sr_exact"] = lb.fake_quant(v, big, key=key), lb.fake_quant(v, exact, key=key)
        return out

    r = results(x, jax.random.key(4))
    assert_same_bits(r["y_big"], r["y_exact"], "block 2^26 vs 40")
    assert_same_bits(r["y_big"], r["y_channel"], "block 2^26 vs per channel")
    assert_same_bits(r["round_trip"], r["y_big"], "dequantize(quantize)")
    assert_same_fields(r["q_big"], r["q_exact"], "QArray fields")
    assert_same_bits(r["sr_big"], r["sr_exact"], "SR block 2^26 vs 40")
    zero_free_choice = big.is_adaptive and any(0.0 not in c.elem.values for c in big.candidates if c.elem.kind == "lut")
    if not zero_free_choice:
        assert_same_bits(r["y_big"], r["y_padded"], "clamped vs zero-padded")


def mxfp4_oracle(x: np.ndarray) -> np.ndarray:
    """MXFP4 with one block per row, in numpy: scale 2^e, e the smallest integer with amax <= 6 * 2^e (found with
    exact float64 comparisons), elements rounded by ml_dtypes' float4_e2m1fn cast of the clipped x / 2^e."""
    out = np.zeros_like(x)
    for i, row in enumerate(x.astype(np.float64)):
        amax = np.abs(row).max()
        if amax == 0:
            continue
        e = int(np.frexp(amax)[1]) - 4  # 6 * 2^e < amax here: 2^(k-1) <= amax and 6 * 2^(k-4) < 2^(k-1)
        while amax > 6.0 * 2.0**e:
            e += 1
        v = np.clip(row / 2.0**e, -6.0, 6.0).astype(ml_dtypes.float4_e2m1fn).astype(np.float64)
        out[i] = v * 2.0**e
    return out


def test_mx_block_longer_than_the_axis_matches_a_numpy_oracle():
    x = heavy((4, 40), 2)
    x[2] = 0.0
    got = np.asarray(lb.fake_quant(x, with_block("mxfp4", HUGE)))
    np.testing.assert_array_equal(got, mxfp4_oracle(x).astype(np.float32))


TILES = [("nvfp4_2d", (16, 16), (2, 3, 5)), ("mxfp8_2d", (32, 32), (40, 7)), ("nvfp4", (HUGE, HUGE), (5, 6))]


@pytest.mark.parametrize("name,tile,shape", TILES, ids=["16x16_on_3x5", "32x32_on_40x7", "huge_on_5x6"])
def test_tiles_larger_than_the_matrix_are_clamped(name, tile, shape):
    """Each tile side is clamped to its axis on its own; values equal the explicitly clamped tile's and the tile
    evaluated on the zero-padded matrix, cropped."""
    x = heavy(shape, 3)
    fmt = lb.get_format(name, block_size=tile)
    r, c = min(tile[0], shape[-2]), min(tile[1], shape[-1])
    n_r = -(-shape[-2] // r)
    q = jax.eval_shape(lambda v: lb.quantize(v, fmt), x)
    assert q.codes.shape == shape[:-2] + (n_r * r, c) and q.scales.shape == shape[:-2] + (n_r, 1)
    assert temp_bytes(lambda v: lb.fake_quant(v, fmt), x) < 256 * 1024
    y = lb.fake_quant(x, fmt)
    assert_same_bits(y, lb.fake_quant(x, lb.get_format(name, block_size=(r, c))), "clamped tile")
    # The old layout: a tile side above 64 stands for a longer one (every axis here is at most 64: one tile).
    assert max(shape[-2:]) <= 64
    small = (min(tile[0], 64), min(tile[1], 64))
    pad = [(0, 0)] * (len(shape) - 2) + [(0, -shape[-2] % small[0]), (0, -shape[-1] % small[1])]
    want = lb.fake_quant(np.pad(x, pad), lb.get_format(name, block_size=small))[..., : shape[-2], : shape[-1]]
    assert_same_bits(y, want, "clamped vs zero-padded tile")
    assert_same_bits(lb.dequantize(lb.quantize(x, fmt)), y, "dequantize(quantize)")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mxfp4", "nvfp4_2d"])
def test_clamped_blocks_through_the_kernels_codecs_and_serialization(name):
    """The Pallas kernels (interpreted) store and return what the core does, with and without a key; FP4 codes
    pack and unpack; a QArray survives flax serialization; qmatmul on K shorter than the block agrees."""
    fmt = lb.get_format(name, block_size=(64, 64) if name.endswith("2d") else 4096)
    x = heavy((8, 40), 5)
    core = lb.quantize(x, fmt)
    assert core.codes.shape == (8, 40)
    for key in (None, jax.random.key(6)):
        q = kernels.quantize(x, fmt, key=key, impl="pallas")
        assert_same_fields(q, lb.quantize(x, fmt, key=key), f"pallas quantize, key {key is not None}")
        y = kernels.fake_quant(x, fmt, key=key, impl="pallas")
        assert_same_bits(y, lb.fake_quant(x, fmt, key=key), f"pallas fake_quant, key {key is not None}")
    packed = lb.pack_fp4(core.codes)
    assert packed.shape == (8, 20)
    assert_same_bits(lb.unpack_fp4(packed), core.codes, "pack_fp4 round trip")
    back = flax.serialization.from_bytes(core, flax.serialization.to_bytes(core))
    assert back.equals(core)
    assert_same_bits(lb.dequantize(back), lb.dequantize(core), "serialized QArray")
    if not name.endswith("2d"):  # K = 40 under a 256 block: one (clamped) block per row, padded to 256 inside
        fmt_k = lb.get_format(name, block_size=256)
        a, w = lb.quantize(x, fmt_k), lb.quantize(heavy((4, 40), 7), fmt_k)
        ref = np.asarray(kernels.qmatmul(a, w, impl="xla"), np.float64)
        got = np.asarray(kernels.qmatmul(a, w, impl="pallas"), np.float64)
        mags = np.abs(np.asarray(lb.dequantize(a), np.float64)) @ np.abs(np.asarray(lb.dequantize(w), np.float64)).T
        assert (np.abs(got - ref) <= 2 * gamma(256, U32) * mags).all()  # two float32 sums in different orders


# --- Hadamard rotation ---------------------------------------------------------------------------------------------


def gamma(n: int, u: float) -> float:
    """The rounding-error constant n u / (1 - n u) of n successive roundings (Higham, Accuracy and Stability)."""
    return n * u / (1 - n * u)


def sylvester_entries(rows: np.ndarray, h: int) -> np.ndarray:
    """H[i, j] = (-1)^popcount(i & j) for the given rows i (float64): the Sylvester matrix entry by entry."""
    bits = rows[:, None] & np.arange(h)[None, :]
    parity = np.zeros(bits.shape, np.int64)
    while bits.any():
        parity ^= bits & 1
        bits = bits >> 1
    return 1.0 - 2.0 * parity


def reference_rotate(x: np.ndarray, h: int, signs: np.ndarray, inverse: bool, cols: np.ndarray) -> np.ndarray:
    """Entries `cols` of every float64 chunk of x (last axis) times R = diag(signs) H / sqrt(h), or R^T, with H's
    columns (= rows: H is symmetric) from the popcount rule: (x R)_j = sum_i x_i d_i H_ij / sqrt(h) and
    (x R^T)_j = d_j sum_i x_i H_ij / sqrt(h)."""
    chunks = x.astype(np.float64).reshape(-1, h)
    H_cols = sylvester_entries(cols, h).T  # (h, len(cols))
    if inverse:
        return signs[cols] * (chunks @ H_cols) / np.sqrt(h)
    return (chunks * signs) @ H_cols / np.sqrt(h)


def rotation_tolerance(x: np.ndarray, h: int) -> np.ndarray:
    """A bound on |rotate(x) - x R| per chunk (broadcasts against x's chunks), derived for the path rotate takes.

    FWHT (h >= FWHT_MIN_H): log2 h butterfly stages, each one rounded float32 add, then the product with
    fl(1 / sqrt h) (one rounding of the constant, one of the product): |error| <= gamma_(log2 h + 2) ||x_chunk||_1 /
    sqrt(h). Matmul (smaller h): entries fl(+-1 / sqrt h) and an h-term float32 dot product in any order:
    gamma_(h + 1) ||x_chunk||_1 / sqrt(h). Plus the float64 reference's own gamma_(h + 2) in double precision."""
    k = h.bit_length() - 1
    steps = k + 2 if h >= hadamard.FWHT_MIN_H else h + 1
    l1 = np.abs(x.astype(np.float64)).reshape(-1, h).sum(-1, keepdims=True) / np.sqrt(h)
    return (gamma(steps, U32) + gamma(h + 2, U64)) * l1


@pytest.mark.parametrize("inverse", [False, True], ids=["R", "R^T"])
@pytest.mark.parametrize("h", [16, 256, 512, 8192])
def test_rotate_matches_a_float64_reference_within_its_error_bound(h, inverse):
    """Every chunk's entries (a sample of 256 positions for h > 512) within rotation_tolerance of float64."""
    x = heavy((2, 8192), 8)
    key = jax.random.key(11)
    signs = np.asarray(hadamard.random_signs(h, key), np.float64)
    rng = np.random.default_rng(h)
    cols = np.arange(h) if h <= 512 else np.unique(np.r_[0, h - 1, rng.choice(h, 254, replace=False)])
    got = np.asarray(hadamard.rotate(x, h, key, inverse=inverse), np.float64).reshape(-1, h)[:, cols]
    err = np.abs(got - reference_rotate(x, h, signs, inverse, cols))
    tol = rotation_tolerance(x, h)
    assert (err <= tol).all(), (err / tol).max()


@pytest.mark.slow
@pytest.mark.parametrize("h", [512, 4096])
def test_fwht_rotation_is_the_matrix_and_the_kernels_butterflies(h):
    """From FWHT_MIN_H on, rotate runs the butterflies: rotating the identity gives random_hadamard bit for bit (one
    non-zero per row: every add is exact); it equals kernels.reference.rotate_rows exactly (same pairs in the same
    order), along any axis; its gradient is g R^T, also where the outputs are zero (an all-zero chunk), to within
    two rotation tolerances (the transposed butterflies run the stages in reverse order)."""
    assert h >= hadamard.FWHT_MIN_H
    key = jax.random.key(12)
    if h <= 1024:
        R = jax.jit(hadamard.random_hadamard, static_argnums=0)(h, key)
        assert_same_bits(hadamard.rotate(jnp.eye(h, dtype=jnp.float32), h, key), R, "rotate(I) vs R")
    x = heavy((3, 2 * h), 13)
    rows = jax.jit(reference.rotate_rows)(x, hadamard.random_signs(h, key))
    np.testing.assert_array_equal(hadamard.rotate(x, h, key), rows)
    np.testing.assert_array_equal(hadamard.rotate(x.T, h, key, axis=0), rows.T)
    g = heavy((3, 2 * h), 14)
    x[1, :h] = 0.0
    _, vjp = jax.vjp(lambda v: hadamard.rotate(v, h, key), jnp.asarray(x))
    got = np.asarray(vjp(jnp.asarray(g))[0], np.float64)
    want = np.asarray(hadamard.rotate(g, h, key, inverse=True), np.float64)
    assert (np.abs(got - want).reshape(-1, h) <= 2 * rotation_tolerance(g, h)).all()


def test_fwht_rotation_leaves_products_unchanged():
    """(x R) . (w R) = x . w to float32 accuracy for h = 1024 (FWHT path), directly and inside qdot_general. The
    bound: with x R off by alpha and w R by beta (each within rotation_tolerance), |(xR + alpha).(wR + beta) - x.w|
    <= |alpha|.|w R~| + |x R~|.|beta| + |alpha|.|beta| (R~: computed); plus the float64 products' own rounding, and
    for qdot_general its float32 GEMM's gamma_K sum |x R~| |w R~|."""
    h, K = 1024, 2048
    x, w = heavy((8, K), 14), heavy((6, K), 15)
    key = jax.random.key(16)
    rot_key = jax.random.fold_in(key, 0)  # qdot_general's forward rotation key
    xr, wr = (np.asarray(hadamard.rotate(a, h, rot_key), np.float64) for a in (x, w))
    ex = np.repeat(rotation_tolerance(x, h).reshape(8, -1), h, axis=1)
    ew = np.repeat(rotation_tolerance(w, h).reshape(6, -1), h, axis=1)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    exact = x64 @ w64.T
    mags = np.abs(xr) @ np.abs(wr).T
    tol = ex @ np.abs(wr).T + np.abs(xr) @ ew.T + ex @ ew.T + gamma(K, U64) * (np.abs(x64) @ np.abs(w64).T + mags)
    assert (np.abs(xr @ wr.T - exact) <= tol).all()
    cfg = lb.QDotConfig.direct_cast("fp32", rotation=h)  # identity format: the rotation alone
    y = np.asarray(lb.qdot_general(x, w, (((1,), (1,)), ((), ())), cfg, key=key), np.float64)
    assert (np.abs(y - exact) <= tol + gamma(K, U32) * mags).all()


def test_rotate_memory_stays_linear_for_h_8192():
    """h = 8192 on a 128 KiB input: the compiled rotation needs at most 4 input-sized buffers of scratch (measured
    2: the butterfly stages alternate between two), and tracing, compiling and running allocate under 32 MiB of
    host memory (one 8192 x 8192 float32 matrix alone is 256 MiB; measured 0.6 MiB)."""
    x = jnp.asarray(heavy((4, 8192), 17))
    key = jax.random.key(18)
    f = lambda v, k: hadamard.rotate(v, 8192, k)
    tracemalloc.start()
    try:
        assert temp_bytes(f, x, key) <= 4 * x.nbytes
        jax.block_until_ready(jax.jit(f)(x, key))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20


def test_hadamard_cache_is_bounded_and_public_matrices_still_work():
    """Only sizes below FWHT_MIN_H are cached (341 KiB together); sylvester / random_hadamard of larger sizes are
    built on request, correct, and not kept; sylvester returns a private, writable copy."""
    H = hadamard.sylvester(1024)
    np.testing.assert_array_equal(H @ H.T, 1024 * np.eye(1024, dtype=np.float32))
    np.testing.assert_array_equal(H[:64], sylvester_entries(np.arange(64), 1024).astype(np.float32))
    R = np.asarray(hadamard.random_hadamard(2048, jax.random.key(19)), np.float64)
    np.testing.assert_allclose(R @ R.T, np.eye(2048), atol=1e-5)
    small = hadamard.sylvester(8)
    small[0, 0] = 5.0
    assert hadamard.sylvester(8)[0, 0] == 1.0
    cache = hadamard._cached_sylvester.cache_info()
    assert cache.currsize <= (hadamard.FWHT_MIN_H // 2).bit_length()  # sizes 1, 2, ..., FWHT_MIN_H / 2
    with pytest.raises(ValueError, match="cached"):
        hadamard._cached_sylvester(hadamard.FWHT_MIN_H)


# --- stochastic rounding -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4"])
def test_stochastic_rounding_scratch_memory(name):
    """fake_quant with a key on a 4 MiB float32 input: scratch (XLA temp bytes, compiled, deterministic) at most
    JAX's own jax.random.bits of one uint32 per element (threefry: 3.0 inputs with jax 0.10.2 on CPU) plus half an
    input, and below 4 inputs overall (measured 3.06 for MXFP4, 3.19 for NVFP4; round to nearest needs 0.06).
    The bits are drawn once for the whole array, so anything more means a second input-sized copy of them or of
    the blocked values."""
    x = jax.ShapeDtypeStruct((1024, 1024), jnp.float32)
    key = jax.random.key(0)
    n_bytes = 1024 * 1024 * 4
    bits = temp_bytes(lambda k: jax.random.bits(k, x.shape, jnp.uint32), key)
    sr = temp_bytes(lambda v, k: lb.fake_quant(v, name, key=k), x, key)
    assert sr <= bits + n_bytes // 2
    assert sr < 4 * n_bytes

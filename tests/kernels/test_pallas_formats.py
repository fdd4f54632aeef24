"""Pallas quantize kernels == the core (lowbit_jax.codec) bit for bit on the newer scale rules and element types.

Covered: UE8M0 scale_rounding "even" / "ceil_amax" (MXFP4, MXFP8, MXINT8), UE5M3 block scales, E4M3 block scales
with tensor_scale "ue8m0" / "none", custom elements fp(3,2) and int(5), a per-channel UE8M0 "even" format (both
per-channel kernel paths), adaptive formats (IF4, MXIF4, Four Over Six; codes, scales and selectors), the public
impl="pallas" path, and the QArray matmul kernel on such operands.

The reference of the kernels is the core itself (the kernels run the core's tile functions), so every kernel
output is compared with codec.quantize_array / fake_quant_array (what lb.quantize / lb.fake_quant run), given
the same stochastic-rounding bits: codes, scales, tensor scale and fake-quant values, NaNs matching NaNs. Both CPU
backends run: "interpret" (XLA's primitives) and "interpret_portable" (the Triton-portable primitive rules, with
byte outputs as on a GPU). Interpreted grid steps cost milliseconds but each kernel costs an XLA compilation
(about half a second), so every format compiles four kernels once and runs them on three inputs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lowbit_jax as lb
from lowbit_jax import blocks, codec, kernels
from lowbit_jax.kernels import pallas_qmatmul as pm
from lowbit_jax.kernels import pallas_quantize as pq

SHAPE = (8, 200)  # 200 = 6 1/4 blocks of 32 (12 1/2 of 16): a zero-padded last block in every row
TILES = pq.Tiles(blocks=16, rows=4, cols=64)  # 4-7 grid steps for 1-D blocks, 8 for whole per-channel rows
ROW_TILES = pq.Tiles(rows=4, cols=64, whole_row_max=0)  # per-channel rows as (4, 64) tiles, the amax outside
# Kernel runs (backend, input dtype, stochastic rounding, output): every backend runs both outputs, both dtypes
# and both roundings, every output both dtypes and roundings; FLIPPED (every other format) swaps the dtypes, so
# that over two formats each pair of these four factors takes all four level pairs. Each run is one XLA
# compilation (most of this file's time), run on all INPUTS.
RUNS = (
    ("interpret", "float32", False, "fake"),
    ("interpret", "bfloat16", True, "quant"),
    ("interpret_portable", "bfloat16", True, "fake"),
    ("interpret_portable", "float32", False, "quant"),
)
FLIPPED = tuple((be, "bfloat16" if dt == "float32" else "float32", sr, out) for be, dt, sr, out in RUNS)

# (spec, the default-rule spec whose codes or scales the new rule must change on these inputs, or None)
FORMATS = [
    ("mxfp4:scale_rounding=even", "mxfp4"),
    ("mxfp4:scale_rounding=ceil_amax", "mxfp4"),
    ("mxfp8:scale_rounding=even", "mxfp8"),
    ("mxfp8:scale_rounding=ceil_amax", "mxfp8"),
    ("mxint8:scale_rounding=even", "mxint8"),
    ("mxint8:scale_rounding=ceil_amax", "mxint8"),
    ("nvfp4:scale=ue5m3", "nvfp4"),
    ("int(4):block_size=16:scale=ue5m3", "nvint4"),
    ("nvfp4:tensor_scale=none", "nvfp4"),
    ("nvfp4:tensor_scale=ue8m0", "nvfp4"),
    ("nvint4:tensor_scale=ue8m0", "nvint4"),
    ("fp(3,2):block_size=32:scale=ue8m0", None),
    ("int(5):block_size=16:scale=e4m3", None),
    ("mxint8:block_size=channel:scale_rounding=even", "mxint8:block_size=channel"),
    # adaptive formats: the choice in the E4M3 sign bit, beside the scales, and in the scale value
    ("if4", None),
    ("mxif4", None),
    ("nvfp4_4over6:select=mae", "nvfp4_to6"),
]


# --------------------------------------------------------------------------------------------- inputs
def hard_input(seed: int = 0) -> np.ndarray:
    """float32 (8, 200): normal data, each 16-element chunk at its own power of two in [2^-14, 2^14], with a
    NaN block, an Inf block, a zero block, RNE ties and -0.0 (numpy-built)."""
    rng = np.random.default_rng(seed)
    mag = np.exp2(rng.integers(-14, 15, (SHAPE[0], 13))).repeat(16, axis=1)[:, : SHAPE[1]]
    x = (rng.standard_normal(SHAPE) * mag).astype(np.float32)
    x[0, 3], x[1, 40], x[2, :32] = np.nan, np.inf, 0.0
    x[3, :8] = [0.25, 0.75, 1.25, -2.5, 3.5, 5.0, -6.0, 7.0]
    x[3, 8:16] = -0.0
    return x


def _ulp_below(v: float) -> float:
    return float(np.nextafter(np.float32(v), np.float32(0)))


def _ulp_above(v: float) -> float:
    return float(np.nextafter(np.float32(v), np.float32(np.inf)))


# Block maxima on the rules' decision points, one per 32-element block (the rest of the block small).
# ceil_amax: powers of two, and one ulp above.
CEIL_AMAX_POINTS = [1.0, _ulp_above(1.0), 2.0**-20, 2.0**24]
# ceil: element maxima (FP4 6, E4M3 448, E3M2 28, INT8 127, INT4 7, INT5 15), and one ulp above.
CEIL_POINTS = [6.0, _ulp_above(6.0), 448.0, _ulp_above(448.0), 28.0, _ulp_above(28.0), 127.0, _ulp_above(127.0)]
CEIL_POINTS += [7.0, 15.0]
# even: mantissa 2 - 2^-(m+1), where amax rounded to m bits (m = 1, 2, 3, 6) reaches the next binade, and one ulp
# below; 1.99 and 1.9921875 - ulp lie between INT8's ceil (127/64) and even thresholds (row 6's maximum, for the
# per-channel format).
EVEN_POINTS = [1.75, _ulp_below(1.75), 1.875, 1.9375, _ulp_below(1.9375), 1.99, _ulp_below(1.9921875), 1.9921875]
# UE5M3 without a tensor scale: the largest scale x Qmax (122880 x 6, x 7) and past it; the smallest scale 2^-17
# x 6, and half of it (a tie between 0 and 2^-17).
UE5M3_POINTS = [737280.0, 860160.0, 1.1e6, 6 * 2.0**-17, 6 * 2.0**-18]
THRESHOLDS = CEIL_AMAX_POINTS + CEIL_POINTS + EVEN_POINTS + UE5M3_POINTS


def extreme_input(seed: int = 1, huge: bool = True) -> np.ndarray:
    """float32 (8, 200): a tiny row (float32 subnormals included, a block of the smallest one), a huge row (up
    to float32 max; without `huge` a moderate one, so a tensor scale leaves the rest in range), the THRESHOLDS
    blocks (alternating signs), a NaN and an Inf block (numpy-built)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(SHAPE) * 0.01).astype(np.float32)
    x[0] = rng.standard_normal(SHAPE[1]) * np.exp2(rng.integers(-140, -118, SHAPE[1]))
    x[0, :16] = 2.0**-149
    if huge:
        x[1] = rng.standard_normal(SHAPE[1]) * np.exp2(rng.integers(100, 127, SHAPE[1]))
        x[1, 7], x[1, 100] = np.finfo(np.float32).max, -np.finfo(np.float32).max
    x[2, 5], x[3, 60] = np.nan, -np.inf
    for i, v in enumerate(THRESHOLDS):  # rows 4-7, 7 blocks of 32 each
        x[4 + i // 7, 32 * (i % 7) + 3] = v * (-1) ** i
    return x.astype(np.float32)


INPUTS = [("hard", hard_input()), ("extreme", extreme_input()), ("no-huge", extreme_input(2, huge=False))]


# --------------------------------------------------------------------------------------------- comparison
def as_bits(a) -> tuple[np.ndarray, np.ndarray]:
    """(raw bit pattern as unsigned ints, NaN mask) of any array, float8 and e8m0 included."""
    a = np.asarray(a)
    raw = a.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[a.dtype.itemsize])
    isnan = np.isnan(a.astype(np.float32)) if jnp.issubdtype(a.dtype, jnp.floating) else np.zeros(a.shape, bool)
    return raw, isnan


def _bit_diff(actual, expected) -> np.ndarray:
    """Elements whose bits differ (NaN matches NaN whatever its payload), for arrays of one dtype and shape."""
    (ra, na), (re, ne) = as_bits(actual), as_bits(expected)
    return (na != ne) | (~na & (ra != re))


def same_bits(actual, expected) -> bool:
    """Both None, or the same dtype, shape and bits (NaN-aware)."""
    if actual is None or expected is None:
        return actual is None and expected is None
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        return False
    return not _bit_diff(actual, expected).any()


def assert_same(actual, expected, what: str) -> None:
    """Same dtype, shape and bits (NaN matches NaN whatever its payload); None matches only None."""
    if expected is None or actual is None:
        assert actual is None and expected is None, (what, actual, expected)
        return
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (what, actual, expected)
    bad = _bit_diff(actual, expected)
    if bad.any():
        a, e = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
        rows = [f"{tuple(i)}: {a[tuple(i)]!r} vs {e[tuple(i)]!r}" for i in np.argwhere(bad)[:6]]
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} differ\n" + "\n".join(rows))


def assert_fields(actual: tuple, expected: tuple, what: str) -> None:
    assert len(actual) == len(expected), (what, len(actual), len(expected))
    for name, a, e in zip(("codes", "scales", "tensor_scale", "selectors"), actual, expected):
        assert_same(a, e, f"{what} {name}")


# --------------------------------------------------------------------------------------------- kernel vs core
def _axes(fmt) -> tuple[int, ...]:
    return (0, 1) if isinstance(fmt.block_size, tuple) else (1,)


def sr_bits(fmt, seed: int) -> jax.Array:
    """uint32 stochastic-rounding bits in x's padded shape (numpy-drawn: the same bits go to kernel and core)."""
    shape = blocks.layout(SHAPE, fmt.block_size, _axes(fmt)).padded_shape
    return jnp.asarray(np.random.default_rng(seed).integers(0, 2**32, shape, dtype=np.uint32))


def _f32_quant(runs) -> int:
    return next(i for i, (_, dtype, _, out) in enumerate(runs) if dtype == "float32" and out == "quant")


@functools.cache
def core_fn(fmt, runs, base):
    """Jitted core (lowbit_jax.codec): outputs for `runs`, and the base format's fields for the float32 quantize
    run (or None)."""

    @jax.jit
    def run(x, bits):
        outs = []
        for _, dtype, sr, out in runs:
            v, b = x.astype(dtype), bits if sr else None
            if out == "fake":
                outs.append(codec.fake_quant_array(v, fmt, _axes(fmt), rbits=b))
            else:
                q = codec.quantize_array(v, fmt, _axes(fmt), rbits=b)
                outs.append((q.codes, q.scales, q.tensor_scale, q.selectors))
        if base is None:
            return outs, None
        q = codec.quantize_array(x, base, _axes(fmt), rbits=bits if runs[_f32_quant(runs)][2] else None)
        return outs, (q.codes, q.scales, q.tensor_scale, q.selectors)

    return run


@functools.cache
def kernel_fn(fmt, runs):
    """Jitted kernels for `runs` (byte outputs on the portable backend, as on a GPU; per-channel rows whole on
    one backend, as (rows, cols) tiles with the amax reduced outside on the other)."""

    @jax.jit
    def run(x, bits):
        outs = []
        for be, dtype, sr, out in runs:
            v, b = x.astype(dtype), bits if sr else None
            portable = be == "interpret_portable"
            kw = dict(rbits=b, tiles=ROW_TILES if portable and fmt.block_size == "channel" else TILES, backend=be)
            if out == "fake":
                outs.append(pq.fake_quant_pallas(v, fmt, **kw))
            else:
                outs.append(pq.quantize_pallas(v, fmt, byte_outputs=portable, **kw))
        return outs

    return run


@pytest.mark.parametrize("i", range(len(FORMATS)), ids=[s for s, _ in FORMATS])
def test_kernels_equal_core(i):
    spec, base = FORMATS[i]
    fmt, base_fmt = lb.get_format(spec), None if base is None else lb.get_format(base)
    runs = FLIPPED if i % 2 else RUNS
    differs = False
    for seed, (name, x_np) in enumerate(INPUTS):
        x, bits = jnp.asarray(x_np), sr_bits(fmt, seed)
        want, base_q = core_fn(fmt, runs, base_fmt)(x, bits)
        for (be, dtype, sr, out), got, exp in zip(runs, kernel_fn(fmt, runs)(x, bits), want):
            what = f"{spec} {name} {be} {dtype} {'sr' if sr else 'rne'} {out}"
            if out == "fake":
                assert_same(got, exp, what)
            else:
                assert_fields(got, exp, what)
        if base_fmt is not None:  # float32 input: bf16 has no amax between INT8's ceil and even thresholds
            differs |= not all(map(same_bits, want[_f32_quant(runs)], base_q))
    # the inputs must tell the rule from the default one, or a kernel ignoring it would pass
    assert base_fmt is None or differs, f"{spec} quantizes as {base} does on every input"


# --------------------------------------------------------------------------------------------- public path
def test_public_pallas_path_equals_xla_on_axis_1():
    """lb.fake_quant / lb.quantize(impl="pallas") of a 3-D array along axis 1 (moved last by the dispatch, a
    partial last block) == impl="xla". RNE: the key path is the same dispatch code, tested on named formats."""
    spec = "nvint4:tensor_scale=ue8m0"  # E4M3 scales and a power-of-two tensor scale through the dispatch
    x = np.array(hard_input(3).reshape(4, 50, 8))  # axis 1: 50 = 3 1/8 blocks of 16
    x[0, 1, 2], x[2, :, 5] = np.nan, 0.0
    x = jnp.asarray(x)
    fake_p, q_p = lb.fake_quant(x, spec, 1, impl="pallas"), lb.quantize(x, spec, 1, impl="pallas")
    fake_x, q_x = lb.fake_quant(x, spec, 1, impl="xla"), lb.quantize(x, spec, 1, impl="xla")
    assert_same(fake_p, fake_x, f"{spec} fake_quant")
    assert (q_p.fmt, q_p.axis, q_p.shape, q_p.dtype) == (q_x.fmt, q_x.axis, q_x.shape, q_x.dtype)
    assert_fields((q_p.codes, q_p.scales, q_p.tensor_scale), (q_x.codes, q_x.scales, q_x.tensor_scale), spec)


# --------------------------------------------------------------------------------------------- qmatmul
def assert_close_sums(got, want, k: int) -> None:
    """Equal up to float32 reordering of K products: |diff| <= K ulp of the largest |product| sum (the bound of
    test_pallas_qmatmul.py).

    The kernel accumulates (rows, tk) tile products over a loop on K; the reference is one dot_general over all
    of K. Both add the same float32 products of the same dequantized values (dequantization is exact, bit for
    bit the core's), only in different orders, so each of the K additions may round differently by up to half
    an ulp of the running sum.
    """
    got, want = np.asarray(got), np.asarray(want)
    tol = k * np.finfo(np.float32).eps * np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)


def test_qmatmul_kernel_on_ue5m3_and_no_tensor_scale():
    fa, fb = "nvfp4:scale=ue5m3", "nvint4:tensor_scale=none"
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 100)).astype(np.float32) * np.exp2(rng.integers(-6, 6, (40, 1))).astype(np.float32)
    w = rng.standard_normal((24, 100)).astype(np.float32)
    qa, qb = jax.jit(lambda x, w: (lb.quantize(x, fa), lb.quantize(w, fb)))(jnp.asarray(x), jnp.asarray(w))
    assert qa.scales.dtype == jnp.float32 and qb.tensor_scale is None  # UE5M3 values held in float32; no g
    want = kernels.qmatmul(qa, qb, impl="xla")
    got = kernels.qmatmul(qa, qb, impl="pallas", tiles=pm.MatTiles(m=16, n=16, k=64))
    assert got.shape == (40, 24) and got.dtype == jnp.float32
    assert np.isfinite(np.asarray(want)).all() and np.abs(np.asarray(want)).max() > 0
    assert_close_sums(got, want, 100)

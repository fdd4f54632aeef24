"""Fuzz of the numerics contract: hypothesis draws a random format (any FP(e,m) or INT(b) element with its
special-value convention or INT range, any scale rule the spec grammar offers, 1-D blocks that may not divide the
axis, 2-D tiles, per-channel, per-tensor), an input dtype (float32, bfloat16, float16), a shape and axis, and an
input with NaN, +-Inf, +-0, subnormals, values at the dtype's maximum and huge dynamic range inside a block.

Every example checks quantize and fake_quant bit for bit against the independent oracle (tests/fuzz_oracle.py):
outputs, stored scales, tensor scale, zero points and element codes. Oracle-free invariants ride along: finite
blocks stay finite and blocks holding NaN/Inf turn NaN, |Q(x)| <= Qmax * scale, Q(-x) = -Q(x) (FP and symmetric
INT), Q(Q(x)) = Q(x) (UE8M0 scales in float32), fake_quant == dequantize(quantize()).

Each example is one fresh format, hence one XLA compilation (~0.3 s); LOWBIT_FUZZ_EXAMPLES=500 runs a long fuzz.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import ml_dtypes
import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

import lowbit_jax as lb
from tests import fuzz_oracle as fo
from tests.conftest import assert_same_bits

EXAMPLES = int(os.environ.get("LOWBIT_FUZZ_EXAMPLES", "12"))
MAX_ELEMS = 640
ROUNDINGS = ("ceil", "floor", "round", "even", "ceil_amax")
BLOCKS = (1, 2, 3, 4, 5, 7, 8, 16, 32, 33, 64, 100, "channel", "tensor", (1, 4), (2, 2), (3, 5), (4, 8), (8, 1))
DIMS = (1, 2, 3, 4, 5, 8, 12, 16, 17, 32, 40, 64, 96)


# --- strategies -------------------------------------------------------------------------------------------------------


@st.composite
def fuzz_specs(draw) -> fo.FuzzSpec:
    """A format the spec grammar accepts: element, block layout, scale rule and its options."""
    block = draw(st.sampled_from(BLOCKS))
    if draw(st.booleans()):
        e = draw(st.integers(1, 7))
        m = draw(st.integers(0, 7 - e))
        specials = [None, "none"] + (["fn"] if m >= 1 else []) + (["ieee"] if e >= 2 else [])
        elem = {"kind": "fp", "exp_bits": e, "man_bits": m, "special": draw(st.sampled_from(specials))}
    else:
        int_range = draw(st.sampled_from(["symmetric", "asymmetric", "zero_point"]))
        elem = {"kind": "int", "bits": draw(st.integers(2, 8)), "int_range": int_range}
    scale = draw(st.sampled_from(["ue8m0", "ue8m0", "e4m3", "ue5m3", "fp32"]))
    rounding, scale_dtype, tensor = "ceil", "float32", None
    if scale == "ue8m0":
        rounding = draw(st.sampled_from(ROUNDINGS))
        if rounding in ("ceil", "floor", "round") and draw(st.integers(0, 3)) == 0:
            scale_dtype = "bfloat16"
    elif scale == "fp32":
        scale_dtype = draw(st.sampled_from(["float32", "bfloat16"]))
    else:
        tensor = draw(st.sampled_from([None, "fp32", "ue8m0", "none"]))
        if block == "tensor" and (tensor or ("fp32" if scale == "e4m3" else "none")) != "none":
            tensor = "none"  # a tensor scale needs blocks smaller than the tensor
    return fo.FuzzSpec(**elem, block=block, scale=scale, rounding=rounding, scale_dtype=scale_dtype, tensor=tensor)


@st.composite
def shapes_and_axes(draw, block) -> tuple[tuple[int, ...], int | tuple[int, int]]:
    """A shape of at most MAX_ELEMS elements and a quantization axis (two distinct axes, in either order, for
    a tile; negative or not)."""
    tile = isinstance(block, tuple)
    ndim = draw(st.integers(2 if tile else 1, 3))
    shape = [draw(st.sampled_from(DIMS)) for _ in range(ndim)]
    while math.prod(shape) > MAX_ELEMS:
        i = int(np.argmax(shape))
        shape[i] = max(1, shape[i] // 2)
    if tile:
        a, b = draw(st.permutations(range(ndim)))[:2]
        axis = (a - ndim * draw(st.integers(0, 1)), b - ndim * draw(st.integers(0, 1)))
    else:
        axis = draw(st.integers(-ndim, ndim - 1))
    return tuple(shape), axis


def special_values(dtype: str) -> dict[str, float]:
    """Values every input may hold: NaN, +-Inf, +-0, subnormals, the normal boundary and the dtype's maximum;
    float32 also the values around bfloat16's overflow threshold 0x7F7F8000 (bf16 scale arithmetic)."""
    fi = ml_dtypes.finfo(fo.DTYPES[dtype])
    tiny, big = float(fi.smallest_normal), float(fi.max)
    sub = float(fi.smallest_subnormal)
    vals = {
        "nan": math.nan,
        "inf": math.inf,
        "-inf": -math.inf,
        "zero": 0.0,
        "-zero": -0.0,
        "min_sub": sub,
        "-max_sub": -(tiny - sub),
        "min_normal": tiny,
        "-min_normal": -tiny,
        "max": big,
        "-max": -big,
        "below_max": float(np.nextafter(fo.DTYPES[dtype].type(big), fo.DTYPES[dtype].type(0))),
    }
    if dtype == "float32":
        for name, bits in (("bf16_max", 0x7F7F0000), ("bf16_mid", 0x7F7F8000), ("above_mid", 0x7F7F8001)):
            vals[name] = float(np.uint32(bits).view(np.float32))
            vals["-" + name] = -vals[name]
        vals["below_mid"] = float(np.uint32(0x7F7F7FFF).view(np.float32))
    return vals


@st.composite
def inputs(draw, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """x in `dtype`: a distribution times 2^(base + per-element spread) (spread up to the whole exponent range,
    so one block can span it), some zeros, then injected special values."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    npdt = fo.DTYPES[dtype]
    fi = ml_dtypes.finfo(npdt)
    lo_exp, hi_exp = int(np.log2(float(fi.smallest_subnormal))), int(np.log2(float(fi.max)))
    dist = draw(st.sampled_from(fo.DISTRIBUTIONS))
    x = fo.sample_values(rng, dist, shape)
    base = draw(st.integers(lo_exp, hi_exp))
    spread = draw(st.sampled_from([0, 2, 8, 40, hi_exp - lo_exp]))
    exps = np.clip(base + rng.integers(0, spread + 1, size=shape), lo_exp, hi_exp)
    x = np.clip(x * np.exp2(exps.astype(np.float64)), -float(fi.max), float(fi.max))
    x[rng.random(shape) < draw(st.sampled_from([0.0, 0.2, 1.0]))] = 0.0
    x = x.astype(np.float32).astype(npdt)
    pool = special_values(dtype)
    names = sorted(pool)
    for pos, name in draw(st.lists(st.tuples(st.integers(0, x.size - 1), st.sampled_from(names)), max_size=8)):
        x.flat[pos] = npdt.type(pool[name])
    return x


@st.composite
def cases(draw):
    spec = draw(fuzz_specs())
    dtype = draw(st.sampled_from(["float32", "bfloat16", "float16"]))
    shape, axis = draw(shapes_and_axes(spec.block))
    return spec, axis, draw(inputs(shape, dtype))


# --- the library under test -------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)  # hypothesis replays and shrinks reuse formats
def _run(fmt: lb.Format, axis):
    def run(x):
        y = lb.fake_quant(x, fmt, axis)
        q = lb.quantize(x, fmt, axis)
        return y, lb.fake_quant(-x, fmt, axis), lb.fake_quant(y, fmt, axis), q, lb.dequantize(q)

    return jax.jit(run)


def f32(a) -> np.ndarray:
    return np.asarray(a).astype(np.float32)


def stored_codes(q: lb.QArray, sp: fo.FuzzSpec) -> np.ndarray:
    """The element codes as float32 values (uint8 FP bit patterns decoded), cropped to the input's shape."""
    codes = np.asarray(q.codes)[tuple(slice(0, n) for n in q.shape)]
    if sp.kind == "fp" and codes.dtype == np.uint8:
        return fo.decode_fp_bytes(codes, sp.exp_bits, sp.man_bits)
    return codes.astype(np.float32)


def stored_scales(q: lb.QArray, sp: fo.FuzzSpec) -> np.ndarray:
    """Stored block scales as float32 values (UE8M0: the E8M0 bytes)."""
    s = np.asarray(q.scales)
    return s.view(np.uint8).astype(np.float32) if sp.scale == "ue8m0" else s.astype(np.float32)


def magnitude_bound(scales: np.ndarray, tensor, sp: fo.FuzzSpec) -> np.ndarray:
    """Per block, the largest |value| the stored scales allow (float32): max |element| times the scale (x g)."""
    if sp.kind == "fp":
        top = sp.qmax
    else:
        top = sp.qmax if sp.zero_point else max(-sp.code_range[0], sp.code_range[1])
    if sp.scale == "ue8m0":
        return fo.ftz(top * np.ldexp(1.0, scales.astype(np.int64) - 127 - sp.scale_shift))
    d = scales if tensor is None else fo.fmul(scales, np.float32(tensor))
    return fo.fmul(np.float32(top), d)


# --- regressions the fuzz found (each failed before its fix) --------------------------------------------------------


def test_subnormal_amax_of_a_one_element_block():
    """The stored UE8M0 byte of a block whose amax is a float32 subnormal is the oracle's (the amax reads as
    zero, as inside any longer block)."""
    sp = fo.FuzzSpec("int", bits=2, block=1)
    x = np.array([2.0**-130, -(2.0**-126 - 2.0**-149), 2.0**-149], np.float32)
    beside_zero = np.asarray(lb.quantize(np.stack([x, 0 * x], 1), "int(2):block_size=2").scales)
    assert_same_bits(beside_zero.view(np.uint8).ravel().astype(np.float32), fo.expected(x, sp, 0).scales)
    assert_same_bits(stored_scales(lb.quantize(x, sp.spec, 0), sp), fo.expected(x, sp, 0).scales)


def test_bf16_ue8m0_zero_and_tiny_int_blocks():
    """mxint8 with bf16 scale arithmetic: a zero block stores byte 0 (as with float32 arithmetic), and a block
    whose bf16 amax / 127 flushes to zero takes the bottom exponent (the oracle's)."""
    sp = fo.FuzzSpec("int", bits=8, scale_dtype="bfloat16")
    x = np.zeros((2, 32), np.float32)
    x[1, :2] = 2.0**-120, 2.0**-121
    assert np.asarray(lb.quantize(x[:1], "mxint8").scales).view(np.uint8).item() == 0
    q = lb.quantize(x, sp.spec)
    want = fo.expected(x, sp, -1)
    assert_same_bits(stored_scales(q, sp), want.scales, "scales")
    assert_same_bits(f32(lb.fake_quant(x, sp.spec)), f32(want.y), "values")


def test_two_level_int2_block_near_float32_max_stays_finite():
    """A finite block never dequantizes to NaN, also when its scale times the tensor scale passes float32's max."""
    x = np.zeros((1, 16), np.float32)
    x[0, :2] = 3.3e38, -1.0
    for spec in (
        "int(2):block_size=16:scale=e4m3:tensor_scale=ue8m0",
        "int(2):block_size=16:scale=ue5m3:tensor_scale=ue8m0",
    ):
        y = f32(lb.fake_quant(x, spec))
        assert np.isfinite(y).all(), (spec, y[0, :2])


def test_overflowing_two_level_divisor_matches_the_oracle():
    """The fuzz's find: int(2), block 1, E4M3 x UE8M0 on -3.3961777e38 has s = 256, g = 2^120, s g = Inf; x / g / s
    rounds to code -1 and -1 * s * g saturates at -float32 max (the oracle once expected NaN here)."""
    sp = fo.FuzzSpec("int", bits=2, block=1, scale="e4m3", tensor="ue8m0")
    x = np.array([-3.3961777e38], np.float32)
    want = fo.expected(x, sp, 0)
    assert want.y[0] == -np.finfo(np.float32).max  # independent of the library: the oracle's own arithmetic
    assert_same_bits(f32(lb.fake_quant(x, sp.spec, 0)), f32(want.y), "values")
    assert_same_bits(stored_codes(lb.quantize(x, sp.spec, 0), sp), want.codes, "codes")


# --- the fuzz ---------------------------------------------------------------------------------------------------------


FOUND = [  # inputs on which the idempotence check once failed, always run: "round" is not an idempotent rule
    # (-0.5357 -> -0.5 -> -0.375; a flushed INT -0 re-quantizes to +0); no clip-free rule can flush a normal value
    (
        fo.FuzzSpec("fp", exp_bits=1, man_bits=1, block=1, rounding="round"),
        0,
        np.array([0.12573022, -0.13210486, 0.64042264, 0.10490011, -0.5356694], np.float32),
    ),
    (
        fo.FuzzSpec("int", bits=3, block=(1, 4), rounding="round"),
        (0, 1),
        np.array([[1.1823613e-38, -1.2423081e-38]], np.float32),
    ),
]


@settings(max_examples=EXAMPLES)
@given(case=cases())
@example(case=FOUND[0])
@example(case=FOUND[1])
def test_random_formats_match_the_oracle(case):
    """quantize / fake_quant of random formats and inputs equal the oracle bit for bit, plus the invariants."""
    sp, axis, x = case
    fmt = lb.get_format(sp.spec)
    y, y_neg, y_twice, q, y_dq = (jax.tree.map(np.asarray, o) for o in _run(fmt, axis)(x))
    want = fo.expected(x, sp, axis)
    what = f"{sp.spec} axis={axis} {x.dtype} {x.shape}"

    assert y.dtype == x.dtype and y.shape == x.shape, what
    assert_same_bits(f32(y), f32(want.y), f"fake_quant {what}")
    assert_same_bits(f32(y_dq), f32(y), f"dequantize(quantize()) vs fake_quant {what}")
    assert_same_bits(stored_scales(q, sp), want.scales, f"scales {what}")
    if want.tensor is None:
        assert q.tensor_scale is None, what
    else:
        assert_same_bits(np.asarray(q.tensor_scale), want.tensor, f"tensor scale {what}")
    if want.zero_points is None:
        assert q.zero_points is None, what
    else:
        assert_same_bits(f32(q.zero_points), want.zero_points, f"zero points {what}")
    assert_same_bits(stored_codes(q, sp), want.codes, f"codes {what}")

    # Oracle-free invariants: NaN exactly in the blocks that hold NaN/Inf, and the scales bound every value.
    lay = fo.cut_rows(f32(x), sp.block, axis)
    rows_out = fo.cut_rows(f32(y), sp.block, axis).rows
    real = fo.cut_rows(np.ones(x.shape, np.float32), sp.block, axis).rows == 1  # not padding
    bad = np.broadcast_to(~np.isfinite(lay.rows).all(axis=1, keepdims=True), real.shape)
    assert np.isnan(rows_out[bad & real]).all() and np.isfinite(rows_out[~bad]).all(), f"NaN blocks {what}"
    big = np.float32(float(ml_dtypes.finfo(x.dtype).max))
    bound = lay.scales_to_rows(magnitude_bound(stored_scales(q, sp), q.tensor_scale, sp))
    bound = np.broadcast_to(f32(np.minimum(bound, big).astype(x.dtype)), real.shape)
    assert (np.abs(rows_out[~bad]) <= bound[~bad]).all(), f"|Q(x)| <= Qmax * scale {what}"

    if sp.kind == "fp":
        assert_same_bits(f32(y_neg), -f32(y), f"odd symmetry {what}")
    elif sp.int_range == "symmetric":  # INT codes have no -0, but a flushed subnormal result keeps its sign:
        zero = np.float32(0)  # the sign of zero is the oracle comparison's business, the magnitudes are this one's
        assert_same_bits(f32(y_neg) + zero, -f32(y) + zero, f"odd symmetry {what}")
    # Re-quantizing is exact for power-of-two scales whose rule cannot clip the result's amax: under ceil and
    # ceil_amax the re-derived exponent is never coarser and Q(x) fits under it; under floor it is the same exponent.
    # "round" and "even" can take an exponent one finer once Q(x)'s amax has rounded down, and the amax then clips
    # (FP(1,1), block 1: -0.5357 -> -0.5 -> -0.375). Asymmetric and zero-point INT need ceil: the most negative code
    # or the zero point can move it. float16 is left out: its subnormal grid and 65504 clip move the first result off
    # the element grid.
    fixed_grid = sp.kind == "fp" or sp.int_range == "symmetric" or sp.rounding == "ceil"
    no_clip = sp.rounding in ("ceil", "ceil_amax", "floor")
    if sp.scale == "ue8m0" and sp.scale_dtype == "float32" and fixed_grid and no_clip and x.dtype != np.float16:
        assert_same_bits(f32(y_twice), f32(y), f"idempotence {what}")

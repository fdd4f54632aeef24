"""quantize / dequantize / fake_quant end to end, against gfloat (MX), numpy float32 (NV, per-channel) and ml_dtypes.

Oracles live in tests/conftest.py: `mx_reference` (float64 gfloat RNE) and `nv_reference` (the NV two-level rule of
docs/formats.md, section "E4M3 with an FP32 tensor scale", transcribed to numpy float32, whose division is IEEE);
docs/theory.md, section "Test oracles".
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from gfloat import round_ndarray

import lowbit_jax as lb
from tests.conftest import (
    GFLOAT_FI,
    MX_FORMATS,
    assert_same_bits,
    dq,
    fq,
    fq_many,
    heavy_blocks,
    mx_reference,
    mx_scale_exponent,
    nv_reference,
    qz,
)

ALL_NAMED = lb.list_formats()


def boundary_rows(name: str, rng: np.random.Generator) -> np.ndarray:
    """Blocks whose amax sits on a scale boundary (Qmax * 2^k exactly, one float32 ulp above and below)."""
    qmax = lb.get_format(name).qmax
    rows = []
    for k in (-9, 0, 5):
        at = np.float32(qmax * 2.0**k)
        for amax in (at, np.nextafter(at, np.float32(np.inf)), np.nextafter(at, np.float32(0))):
            r = rng.uniform(-1, 1, 32).astype(np.float32) * np.float32(amax)
            r[rng.integers(32)] = -amax if k else amax
            rows.append(r)
    rows.append(np.zeros(32, np.float32))
    return np.stack(rows)


# --- MX formats vs gfloat -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MX_FORMATS)
def test_mx_fake_quant_matches_gfloat(name):
    """Bit-exact against the float64 gfloat oracle for the ceil, floor and round rules.

    100 columns = three full blocks plus a padded one; per-block magnitudes 2^-20..2^20; blocks whose amax is
    Qmax * 2^k exactly or one float32 ulp above or below; a zero block and zeros inside a block.
    """
    rng = np.random.default_rng(sum(map(ord, name)))
    x = heavy_blocks(rng, 12, 100, 32)
    x[:10, :32] = boundary_rows(name, rng)
    x[3, 40:45] = 0.0
    rules = ("ceil", "floor", "round")
    outs = fq_many(x, [lb.get_format(name, scale_rounding=r) for r in rules])
    for rule, out in zip(rules, outs, strict=True):
        assert_same_bits(out, mx_reference(x, name, rule).astype(np.float32), f"{name}/{rule}")


@pytest.mark.parametrize("name", ["mxint8", "mxint6", "mxint4"])
def test_mxint_asymmetric_matches_gfloat_twos_complement(name):
    """int_range='asymmetric' is gfloat's two's-complement grid unclipped: floor reaches -2^(b-1), ceil never."""
    rng = np.random.default_rng(11)
    x = heavy_blocks(rng, 16, 64, 32)
    mag = 2.0 ** rng.integers(-10, 10, size=(16, 1))
    x[:, :32] = rng.uniform(-1, 1, size=(16, 32)) * mag
    x[:, 0] = -rng.uniform(1.993, 2.0, size=16) * mag[:, 0]  # floor: |x| / 2^e >= 127.5 rounds to -128
    bits = int(name[-1])
    for rule in ("ceil", "floor"):
        fmt = lb.get_format(name, scale_rounding=rule, int_range="asymmetric")
        expected = mx_reference(x, name, rule, asymmetric=True).astype(np.float32)
        assert_same_bits(fq(x, fmt), expected, name)
        codes = np.asarray(qz(x, fmt).codes).astype(np.int32)
        assert codes.min() >= -(2 ** (bits - 1))
        assert (codes.min() == -(2 ** (bits - 1))) == (rule == "floor")


def test_mx_oracle_agrees_with_gfloat_quantize_block():
    """Validate the vectorised oracle against gfloat's scalar quantize_block on a few blocks (floor rule)."""
    from gfloat import BlockFormatInfo, compute_scale_amax, quantize_block
    from gfloat.formats import format_info_ocp_e8m0

    rng = np.random.default_rng(12)
    x = heavy_blocks(rng, 4, 64, 32).astype(np.float64)
    for name in ("mxfp8_e4m3", "mxfp4", "mxfp6_e3m2", "mxint8"):
        bfi = BlockFormatInfo(name, GFLOAT_FI[name], 32, format_info_ocp_e8m0)
        for blk in x.reshape(-1, 32):
            expected = quantize_block(bfi, blk, compute_scale_amax)  # gfloat keeps int8's -2.0: unclipped oracle
            got = mx_reference(blk[None], name, "floor", asymmetric=True)[0]
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", MX_FORMATS)
def test_mx_codes_and_scales_match_oracle(name):
    """Stored codes are the element values (ml_dtypes / integer encoding); E8M0 scales hold e + 127, NaN 0xFF."""
    rng = np.random.default_rng(13)
    x = heavy_blocks(rng, 4, 64, 32)
    x[1, 40] = np.nan
    x[2, :32] = 0.0  # a zero block: E8M0 code 0 (2^-127), zero codes
    fmt = lb.get_format(name)
    q = qz(x, fmt)
    fi = GFLOAT_FI[name]
    xb = x.astype(np.float64).reshape(4, 2, 32)
    finite = np.isfinite(xb).all(-1, keepdims=True)
    amax = np.abs(np.where(finite, xb, 0)).max(-1, keepdims=True)
    e = mx_scale_exponent(amax, name, "ceil")
    e_int = e  # OCP layout: the E8M0 byte is X itself (MXINT: the scale of the fixed-point elements k / 2^(b-2))
    assert q.scales.dtype == jnp.float8_e8m0fnu and q.scales.shape == (4, 2)
    np.testing.assert_array_equal(np.asarray(q.scales).view(np.uint8), np.where(finite, e_int + 127, 255)[..., 0])
    elems = round_ndarray(fi, np.where(finite, xb, 0) / 2.0**e, sat=True).reshape(4, 64)
    if name.startswith("mxint"):
        bits = int(name[-1])
        elems = np.clip(elems, -fi.max, fi.max) * 2.0 ** (bits - 2)  # integer codes
        np.testing.assert_array_equal(np.asarray(q.codes).astype(np.int32), elems.astype(np.int32))
    else:
        elem = fmt.elem
        dt = {(4, 3): ml_dtypes.float8_e4m3fn, (5, 2): ml_dtypes.float8_e5m2, (2, 1): ml_dtypes.float4_e2m1fn}
        dt |= {(2, 3): ml_dtypes.float6_e2m3fn, (3, 2): ml_dtypes.float6_e3m2fn}
        ref = elems.astype(np.float32).astype(dt[(elem.exp_bits, elem.man_bits)])
        got = np.asarray(q.codes)
        if got.dtype == np.uint8:
            np.testing.assert_array_equal(got, ref.view(np.uint8))
        else:
            np.testing.assert_array_equal(got.view(np.uint8), ref.view(np.uint8))


def test_float32_range_ends():
    """Bottom and top of float32 (XLA flushes float32 subnormals to zero: docs/theory.md#xla-arithmetic-facts).

    Tiny blocks (amax 2^-125..2^-119) clamp the scale exponent at -127; normal inputs whose oracle result is normal
    are bit-exact; subnormal inputs or results are the oracle's value or a zero of the same sign.
    Blocks up to 2^127 are bit-exact (rounding FLT_MAX itself up would overflow float32 in any implementation).
    """
    rng = np.random.default_rng(26)
    tiny = rng.uniform(-1, 1, (4, 32)) * 2.0 ** rng.integers(-125, -118, (4, 1))
    tiny[:, 0] = 2.0 ** np.array([-125, -123, -121, -119])  # keep every amax a normal float32
    sub = np.full((1, 32), 1e-40)
    sub[0, ::2] = -1e-40
    huge = rng.uniform(-1, 1, (3, 32)) * 2.0 ** np.array([[100], [120], [126]])
    x = np.concatenate([tiny, sub, huge]).astype(np.float32)
    for name in ("mxfp8_e4m3", "mxfp4", "mxint8"):
        out, ref = fq(x, name), mx_reference(x, name).astype(np.float32)
        normal = (np.abs(ref) >= 2.0**-126) & ((np.abs(x) >= 2.0**-126) | (x == 0))  # normal input and result
        assert_same_bits(out[normal], ref[normal], name)
        o, r = out[~normal], ref[~normal]
        same_sign = (np.signbit(o) == np.signbit(r)) | name.startswith("mxint")  # INT zeros are +0
        assert np.all((o == r) | ((o == 0) & same_sign)), name
        assert normal[:4].mean() > 0.5 and np.isfinite(out).all()


# --- NV formats -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nvfp4", "nvint4"])
def test_nv_matches_numpy_float32_reference(name):
    """Values, E4M3 block scales and FP32 tensor scale bit-exact; blocks span 2^-30..2^8 (underflowing scales)."""
    rng = np.random.default_rng(14)
    x = heavy_blocks(rng, 16, 72, 16, lo=-30, hi=8)
    x[2, :16] = 0.0
    kind = "fp" if name == "nvfp4" else "int"
    y_ref, s_ref, g_ref = nv_reference(x, kind)
    assert_same_bits(fq(x, name), y_ref, name)
    q = qz(x, name)
    assert q.scales.dtype == jnp.float8_e4m3fn and q.scales.shape == (16, 5)
    assert q.tensor_scale.dtype == jnp.float32 and q.tensor_scale.shape == ()
    assert_same_bits(np.asarray(q.scales).astype(np.float32), s_ref, "block scales")
    assert_same_bits(np.asarray(q.tensor_scale), g_ref, "tensor scale")
    assert (s_ref == 0).sum() > 16 and (s_ref == 448).any()  # the sweep reaches underflow and the top scale


@pytest.mark.parametrize("name", ["nvfp4", "nvint4"])
def test_nv_all_zero_tensor(name):
    """g = 1, every block scale 0, zeros out (FP keeps the sign of zero; INT codes have no -0)."""
    x = np.zeros((2, 32), np.float32)
    x[1, 3] = -0.0
    q = qz(x, name)
    assert float(q.tensor_scale) == 1.0 and not np.asarray(q.scales).astype(np.float32).any()
    expected = x if name == "nvfp4" else x + np.float32(0)
    assert_same_bits(fq(x, name), expected, name)
    assert_same_bits(dq(q), expected, name)


# --- per-channel, per-tensor and identity formats -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fp8_channel", "int8_channel"])
def test_per_channel_fp32_scale(name):
    """s = amax / Qmax (IEEE float32), element = RNE_sat(x / s) (ml_dtypes E4M3 or numpy round), value = q * s."""
    rng = np.random.default_rng(15)
    x = heavy_blocks(rng, 6, 50, 50)
    x[4] = 0.0
    fmt = lb.get_format(name)
    s = np.abs(x).max(axis=1, keepdims=True) / np.float32(fmt.qmax)
    with np.errstate(invalid="ignore", divide="ignore"):
        v = np.where(s > 0, x / s, np.copysign(np.float32(0), x)).astype(np.float32)
    if name == "fp8_channel":
        q = np.clip(v, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    else:
        q = np.round(np.clip(v, -127, 127)) + np.float32(0)
    assert_same_bits(fq(x, fmt), q * s, name)
    qa = qz(x, fmt)
    assert qa.scales.dtype == jnp.float32 and qa.scales.shape == (6, 1)
    assert_same_bits(qa.scales, s, "scales")


def test_per_tensor_block():
    """block_size='tensor': one UE8M0 scale for the whole array (the oracle with a single block)."""
    rng = np.random.default_rng(16)
    x = heavy_blocks(rng, 3, 40, 40, lo=-3, hi=3)
    fmt = lb.get_format("mxfp6", block_size="tensor")
    q = qz(x, fmt)
    assert q.scales.shape == ()
    expected = mx_reference(x.reshape(1, -1), "mxfp6_e2m3", "ceil", block=120).reshape(3, 40)
    assert_same_bits(fq(x, fmt), expected.astype(np.float32), "per-tensor")


@pytest.mark.parametrize("name", ["bf16", "fp32"])
def test_identity_formats(name):
    x = heavy_blocks(np.random.default_rng(17), 2, 16, 16)
    dt = ml_dtypes.bfloat16 if name == "bf16" else np.float32
    assert_same_bits(fq(x, name), x.astype(dt).astype(np.float32), name)


# --- special values, padding, axes, dtypes --------------------------------------------------------------------------


@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", ["mxfp8", "mxint8", "nvfp4", "fp8_channel"])
def test_nonfinite_block_is_all_nan_others_unaffected(name, special):
    """A NaN/Inf element makes its whole block NaN; every other block equals the result with that block zeroed."""
    rng = np.random.default_rng(18)
    x = heavy_blocks(rng, 4, 64, 16, lo=-4, hi=4)
    bs = 64 if name == "fp8_channel" else lb.get_format(name).block_size
    bad = x.copy()
    bad[1, 5] = special
    zeroed = x.copy()
    zeroed[1, :bs] = 0.0
    out, ref = fq(bad, name), fq(zeroed, name)
    assert np.isnan(out[1, :bs]).all()
    mask = np.ones_like(x, bool)
    mask[1, :bs] = False
    assert_same_bits(out[mask], ref[mask], name)
    assert_same_bits(dq(qz(bad, name)), out, "dequantize")


def test_nonfinite_blocks_on_a_wide_array():
    """(8, 4128) (XLA:CPU's max reduction skipped NaNs at this width): NaN / Inf blocks still come out all-NaN."""
    x = np.random.default_rng(27).normal(size=(8, 4128)).astype(np.float32)
    x[3, 100], x[5, 4000] = np.nan, -np.inf
    for name, bs in (("mxfp8_e4m3", 32), ("nvfp4", 16), ("fp8_channel", 4128)):
        out = fq(x, name)
        bad = np.zeros_like(x, bool)
        bad[3, 100 // bs * bs : (100 // bs + 1) * bs] = True
        bad[5, 4000 // bs * bs : (4000 // bs + 1) * bs] = True
        assert np.isnan(out[bad]).all() and np.isfinite(out[~bad]).all(), name


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxint4", "nvfp4"])
def test_padding_is_cropped_and_never_changes_amax(name):
    """Length 37: equals the explicitly zero-padded array's result, cropped; codes keep the padded length.

    For the MX formats the last block holds only 5 values; its result equals the oracle on those 5 alone (the zero
    padding never enters the block amax).
    """
    rng = np.random.default_rng(19)
    x = heavy_blocks(rng, 3, 37, 8, lo=-2, hi=2)
    bs = lb.get_format(name).block_size
    padded = np.pad(x, [(0, 0), (0, -37 % bs)])
    out = fq(x, name)
    assert_same_bits(out, fq(padded, name)[:, :37], name)
    if name.startswith("mx"):
        assert_same_bits(out[:, 32:], mx_reference(x[:, 32:], name).astype(np.float32), "tail block alone")
    q = jax.eval_shape(lambda v: lb.quantize(v, name), x)
    assert q.codes.shape == (3, padded.shape[1]) and q.shape == (3, 37)
    assert jax.eval_shape(lb.dequantize, q).shape == (3, 37)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("name", ["mxfp4", "nvint4"])
def test_any_axis_and_leading_shape(name, axis):
    """Quantizing along `axis` equals moving that axis last, quantizing, and moving it back (oracle on that view)."""
    rng = np.random.default_rng(20)
    x = heavy_blocks(rng, 1, 3 * 40 * 5, 5, lo=-3, hi=3).reshape(3, 40, 5)
    xm = np.moveaxis(x, axis, -1)
    if name == "mxfp4":
        ref = mx_reference(xm, "mxfp4").astype(np.float32)
    else:
        ref = nv_reference(xm, "int")[0]
    assert_same_bits(fq(x, name, axis=axis), np.moveaxis(ref, -1, axis), f"axis {axis}")
    for a in (axis, axis - 3):  # negative axes are normalised
        q = jax.eval_shape(lambda v, a=a: lb.quantize(v, name, axis=a), x)
        assert q.axis == axis and q.shape == x.shape


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", ["mxfp8", "mxfp6_e3m2", "mxint8", "nvfp4"])
def test_low_precision_inputs(name, dtype):
    """bf16 / f16 input: output of the same dtype, equal to the float32 result of the (exact) up-cast input."""
    rng = np.random.default_rng(21)
    x = heavy_blocks(rng, 4, 64, 16, lo=-6, hi=6).astype(dtype)
    x32 = np.asarray(x).astype(np.float32)
    out = jax.jit(lb.fake_quant, static_argnums=1)(jnp.asarray(x), name)
    assert out.dtype == dtype
    if name == "nvfp4":
        ref = nv_reference(x32, "fp")[0]
    else:
        ref = mx_reference(x32, lb.get_format(name).name).astype(np.float32)
    assert_same_bits(np.asarray(out).astype(np.float32), np.asarray(jnp.asarray(ref).astype(dtype)).astype(np.float32))
    assert jax.eval_shape(lambda v: lb.dequantize(lb.quantize(v, name)), x).dtype == dtype


STORAGE = {
    "mxfp8_e4m3": (jnp.float8_e4m3fn, jnp.float8_e8m0fnu),
    "mxfp8_e5m2": (jnp.float8_e5m2, jnp.float8_e8m0fnu),
    "mxfp6_e2m3": (jnp.uint8, jnp.float8_e8m0fnu),
    "mxfp6_e3m2": (jnp.uint8, jnp.float8_e8m0fnu),
    "mxfp4": (jnp.float4_e2m1fn, jnp.float8_e8m0fnu),
    "mxint8": (jnp.int8, jnp.float8_e8m0fnu),
    "mxint6": (jnp.int8, jnp.float8_e8m0fnu),
    "mxint4": (jnp.int4, jnp.float8_e8m0fnu),
    "nvfp4": (jnp.float4_e2m1fn, jnp.float8_e4m3fn),
    "nvint4": (jnp.int4, jnp.float8_e4m3fn),
    "nvfp4_2d": (jnp.float4_e2m1fn, jnp.float8_e4m3fn),
    "mxfp8_2d": (jnp.float8_e4m3fn, jnp.float8_e8m0fnu),
    "nf4": (jnp.uint4, jnp.float32),
    "sf4": (jnp.uint4, jnp.float32),
    "fp8_channel": (jnp.float8_e4m3fn, jnp.float32),
    "int8_channel": (jnp.int8, jnp.float32),
    "bf16": (jnp.bfloat16, None),
    "fp32": (jnp.float32, None),
    "nvfp6": (jnp.uint8, jnp.float8_e4m3fn),
    "if4_int": (jnp.int4, jnp.float8_e4m3fn),  # the integers k of the stretched grid
    "if6_int": (jnp.int8, jnp.float8_e4m3fn),
    "nvfp4_to6": (jnp.float4_e2m1fn, jnp.float8_e4m3fn),
    "nvfp4_to4": (jnp.float4_e2m1fn, jnp.float8_e4m3fn),
    "if4": (jnp.uint4, jnp.float8_e4m3fn),  # FP or INT bit patterns; the choice in the scale's sign bit
    "if6": (jnp.uint8, jnp.float8_e4m3fn),
    "mxif4": (jnp.uint4, jnp.float8_e8m0fnu),
    "mxif6": (jnp.uint8, jnp.float8_e8m0fnu),
    "mxif8": (jnp.uint8, jnp.float8_e8m0fnu),
    "nvfp4_4over6": (jnp.float4_e2m1fn, jnp.float8_e4m3fn),
}


@pytest.mark.parametrize("name", ALL_NAMED)
def test_storage_dtypes_and_shapes(name):
    """Codes in the narrowest XLA dtype (FP6 as uint8), E8M0 / E4M3 / FP32 scales, one scale per block."""
    assert set(STORAGE) == set(ALL_NAMED)
    x = jax.ShapeDtypeStruct((2, 3, 40), jnp.float32)
    axis = 1 if name.endswith("channel") else lb.get_format(name).default_axis
    q = jax.eval_shape(lambda v: lb.quantize(v, name, axis=axis), x)
    codes_dt, scales_dt = STORAGE[name]
    assert q.codes.dtype == codes_dt
    assert (q.scales is None) if scales_dt is None else q.scales.dtype == scales_dt
    assert (q.tensor_scale is not None) == name.startswith(("nv", "if"))  # the NV-layout formats
    fmt = lb.get_format(name)
    if isinstance(fmt.block_size, int):
        b = min(fmt.block_size, 40)  # a block longer than the axis is clamped to the axis (nf4: 64, sf4: 128)
        nb = -(-40 // b)
        assert q.codes.shape == (2, 3, nb * b) and q.scales.shape == (2, 3, nb)
    elif fmt.block_size == "channel":
        assert q.codes.shape == (2, 3, 40) and q.scales.shape == (2, 1, 40)
    elif isinstance(fmt.block_size, tuple):
        r, c = min(fmt.block_size[0], 3), fmt.block_size[1]  # tile rows clamped to the 3 rows
        assert q.codes.shape == (2, r, -(-40 // c) * c) and q.scales.shape == (2, 1, -(-40 // c))


# --- fake_quant == dequantize(quantize) ------------------------------------------------------------------------------


def identity_input() -> np.ndarray:
    """(4, 50) float32: padding for every block size, a NaN block, a zero block and a -0 block."""
    x = heavy_blocks(np.random.default_rng(22), 4, 50, 16, lo=-8, hi=8)
    x[0, 3] = np.nan
    x[2, :] = 0.0
    x[3, :16] = -0.0
    return x


@functools.cache
def identity_all_formats() -> dict:
    """fake_quant and dequantize(quantize) of identity_input() for every named format, in one compilation."""
    out = jax.jit(lambda v: [(lb.fake_quant(v, n), lb.dequantize(lb.quantize(v, n))) for n in ALL_NAMED])(
        identity_input()
    )
    return dict(zip(ALL_NAMED, out, strict=True))


@pytest.mark.parametrize("name", ALL_NAMED)
def test_fake_quant_equals_dequantize_quantize(name):
    """The stated identity, bit for bit under jit (RNE): NaN, zero and -0 blocks, padding (length 50)."""
    fake, round_trip = identity_all_formats()[name]
    assert fake.dtype == round_trip.dtype == jnp.float32
    assert_same_bits(fake, round_trip, name)


SR_CASES = [(n, jnp.float32, True) for n in ("mxfp8_e4m3", "mxfp6_e3m2", "mxint4", "nvfp4", "fp8_channel")]
SR_CASES += [(n, jnp.bfloat16, False) for n in ("mxfp4", "nvint4", "int8_channel")]


@pytest.mark.parametrize(
    ("name", "dtype", "stochastic"),
    SR_CASES,
    ids=[f"{n}-{jnp.dtype(d).name}{'-sr' if sr else ''}" for n, d, sr in SR_CASES],
)
def test_fake_quant_equals_dequantize_quantize_sr_and_bf16(name, dtype, stochastic):
    """The same identity with stochastic rounding (one format per element kind and scale type) and bf16 input."""
    key = jax.random.key(3, impl="rbg") if stochastic else None  # rbg: threefry costs ~1 s of compile per function

    @jax.jit
    def both(v, k):
        return lb.fake_quant(v, name, key=k), lb.dequantize(lb.quantize(v, name, key=k))

    fake, round_trip = both(jnp.asarray(identity_input()).astype(dtype), key)
    assert fake.dtype == round_trip.dtype == dtype
    assert_same_bits(np.asarray(fake).astype(np.float32), np.asarray(round_trip).astype(np.float32), name)
    if stochastic:  # the key was used
        assert not np.array_equal(np.asarray(fake), np.asarray(identity_all_formats()[name][0]), equal_nan=True)


# --- scale_dtype="bfloat16": the paper's Algorithm 1 ----------------------------------------------------------------


def test_algorithm1_bf16_fraction_mapped_to_128():
    """Paper Table 11: with S = D / 127 in BF16, 16.82% of N(0, 1) entries map to 128; in FP32 none do.

    Per-element scales are block_size=1 with an FP32 (amax / Qmax) scale. With the asymmetric range a negative entry
    that maps to 128 keeps the code -128. 2^20 samples: sd of the fraction sqrt(p (1 - p) / n) = 3.7e-4, bound 5 sd.
    Also exact per element against ml_dtypes bf16 arithmetic of Algorithm 1.
    """
    n = 2**20
    d = np.random.default_rng(23).normal(size=(n, 1)).astype(ml_dtypes.bfloat16)
    neg = (d < 0)[:, 0]
    fmt = lb.get_format("int8_channel", block_size=1, scale_dtype="bfloat16", int_range="asymmetric")
    codes = np.asarray(qz(jnp.asarray(d), fmt).codes)[:, 0].astype(np.int32)
    frac = np.mean(codes[neg] == -128)
    sd = np.sqrt(0.1682 * (1 - 0.1682) / neg.sum())
    assert abs(frac - 0.1682) < 5 * sd + 5e-5, frac
    s = np.abs(d) / ml_dtypes.bfloat16(127)  # Algorithm 1 in bf16 (ml_dtypes rounds every operation)
    hits = np.abs(np.round((d / s).astype(np.float32)))[:, 0] == 128
    np.testing.assert_array_equal(codes == -128, hits & neg)
    assert (codes[~neg] <= 127).all()
    fmt32 = lb.get_format("int8_channel", block_size=1, int_range="asymmetric")
    codes32 = np.asarray(qz(jnp.asarray(d), fmt32).codes)
    assert codes32.min() == -127  # Table 11, Float32: 0%


def test_bf16_ue8m0_negative_block_maxima_reach_minus_128():
    """With log2 in BF16 the ceil can fail and a block maximum maps to 128 (an independent analysis of the paper's
    Table 10 gap: docs/theory.md#bf16-scale-arithmetic-and-the-asymmetric-int-bias).

    mxint8, asymmetric, Gaussian data scaled by 1e-6: some blocks hold -128 with the BF16 arithmetic, none with the
    exact float32 scale. Exact check: codes equal a numpy/ml_dtypes bf16 reference of the whole block quantizer.
    """
    bf = ml_dtypes.bfloat16
    x = (np.random.default_rng(24).normal(size=(1024, 32)) * 1e-6).astype(bf).astype(np.float32)
    fmt = lb.get_format("mxint8", scale_dtype="bfloat16", int_range="asymmetric")
    codes = np.asarray(qz(x, fmt).codes).astype(np.int32)
    s = np.abs(x).max(axis=1, keepdims=True).astype(bf) / bf(127)
    e = np.clip(np.ceil(np.log2(s).astype(np.float32)), -127, 127)
    ref = np.clip(np.round(x / 2.0**e), -128, 127).astype(np.int32)
    np.testing.assert_array_equal(codes, ref)
    blocks_hit = (codes == -128).any(axis=1).mean()
    assert 0 < blocks_hit < 0.1, blocks_hit
    exact = np.asarray(qz(x, lb.get_format("mxint8", int_range="asymmetric")).codes)
    assert exact.min() >= -127


# --- QArray as a pytree: jit, vmap, grad ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mxfp6", "nvint4"])
def test_qarray_pytree_jit_vmap_grad(name):
    """QArray flattens to (codes, scales[, tensor_scale]) with static metadata; passes through jit, vmap and grad."""
    rng = np.random.default_rng(25)
    x = jnp.asarray(heavy_blocks(rng, 3, 48, 16, lo=-2, hi=2))
    q = qz(x, name)
    leaves, treedef = jax.tree_util.tree_flatten(q)
    assert len(leaves) == (3 if name.startswith("nv") else 2)
    q2 = jax.tree_util.tree_unflatten(treedef, leaves)
    assert q2.fmt == q.fmt and q2.shape == q.shape and q2.axis == q.axis
    assert_same_bits(dq(q2), fq(x, name), "jit round trip")
    as_bf16 = jax.jit(lambda q_: lb.dequantize(q_, jnp.bfloat16))(q)  # explicit output dtype: one final cast
    assert as_bf16.dtype == jnp.bfloat16
    assert_same_bits(np.asarray(as_bf16).astype(np.float32), fq(x, name).astype(ml_dtypes.bfloat16), "dtype=bf16")
    qv = jax.jit(jax.vmap(lambda v: lb.quantize(v, name)))(x)  # one tensor per row (NV: per-row tensor scale)
    assert qv.shape == (48,) and qv.codes.shape[0] == 3
    per_row = np.stack([fq(x[i : i + 1], name)[0] for i in range(3)])
    assert_same_bits(jax.jit(jax.vmap(lb.dequantize))(qv), per_row, "vmap")
    w = jnp.asarray(rng.normal(size=(3, 48)).astype(np.float32))
    g = jax.jit(jax.grad(lambda w_, q_: jnp.sum(lb.dequantize(q_) * w_)))(w, q)
    assert_same_bits(g, dq(q), "grad with a QArray argument")


F32_MAX = float(np.finfo(np.float32).max)
_S_CH = float(np.float32(F32_MAX) / np.float32(127))  # int8_channel's scale of a FLT_MAX row (IEEE float32)
NEAR_MAX = [  # (format, input, dtype, expected): closed forms of the UE8M0 ceil rule and RNE elements
    ("mxfp4", 3.0e38, np.float32, F32_MAX),  # X = 2^126, 3.53 -> 4: 4 * 2^126 = 2^128 saturates
    ("mxfp8_e4m3", 3.3e38, np.float32, F32_MAX),  # X = 2^120, 248.2 -> 256: 2^128 saturates
    ("mxint8", 3.4028235e38, np.float32, 127 * 2.0**121),  # X clamps at 2^127: k = 127 (saturated) * 2^(127-6)
    ("mxint4", 3.4028235e38, np.float32, 7 * 2.0**125),  # X = 2^127: k = 7 * 2^(127-2)
    ("int8_channel", 3.4028235e38, np.float32, float(np.float32(min(127 * _S_CH, F32_MAX)))),
    ("mxfp4", 57344.0, np.float16, 65504.0),  # X = 2^14, 3.5 -> 4 (tie to even): 65536 saturates
    ("mxint8", 65504.0, np.float16, 65504.0),  # code scale 2^10 (X = 2^16), 63.97 -> 64: 65536 saturates
    ("mxfp8_e4m3", 65504.0, np.float16, 65504.0),  # X = 2^8, 255.9 -> 256: 65536 saturates
    ("mxfp6_e2m3", 65504.0, np.float16, 65504.0),  # X = 2^14, 3.998 -> 4: 65536 saturates
]


@pytest.mark.parametrize(("name", "value", "dtype", "expected"), NEAR_MAX)
def test_finite_inputs_near_the_dtype_max_stay_finite(name, value, dtype, expected):
    """A finite input never comes back Inf: a value whose rounding lands beyond the output dtype's range
    saturates to its largest finite value; dequantize(quantize) agrees."""
    x = np.full((1, 32), value, dtype)
    y = np.asarray(lb.fake_quant(x, name)).astype(np.float64)
    np.testing.assert_array_equal(y, np.full((1, 32), expected))
    np.testing.assert_array_equal(np.asarray(lb.dequantize(lb.quantize(x, name))).astype(np.float64), y)


@pytest.mark.parametrize(
    ("name", "shape"),
    [(n, s) for n in ("nvfp4", "nvint4", "nvfp4:tensor_scale=ue8m0") for s in [(0,), (3, 0), (0, 3)]]
    + [("nvfp4_2d", (3, 0)), ("nvfp4_2d", (0, 3))],
)
def test_formats_with_a_tensor_scale_take_empty_arrays(name, shape):
    """An empty array has no block to take a tensor amax from: its tensor scale is 1 and every path returns an
    empty result (the tensor-amax reduction used to raise 'zero-size array to reduction operation max')."""
    x = np.zeros(shape, np.float32)
    q = lb.quantize(x, name)
    assert float(q.tensor_scale) == 1.0 and lb.dequantize(q).shape == shape
    assert lb.fake_quant(x, name).shape == shape and lb.fake_quant(x, name, impl="pallas").shape == shape


@pytest.mark.parametrize(("a", "b"), [((2, 0), (0, 3)), ((0, 4), (4, 3))])
def test_qdot_general_with_an_nv_format_takes_empty_operands(a, b):
    """K = 0 or M = 0 through the six-operand NV training GEMMs: forward and both gradients have their shapes."""
    dn, cfg = (((1,), (0,)), ((), ())), lb.QDotConfig.train("nvfp4")
    x, w = jnp.zeros(a), jnp.zeros(b)
    y = lb.qdot_general(x, w, dn, cfg)
    dx, dw = jax.grad(lambda x, w: lb.qdot_general(x, w, dn, cfg).sum(), argnums=(0, 1))(x, w)
    assert y.shape == (a[0], b[1]) and not np.asarray(y).any() and dx.shape == a and dw.shape == b

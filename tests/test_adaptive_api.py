"""Adaptive formats through the public API: construction and its errors, the spec grammar, storage, the stretched
INT grid, the Four Over Six scale target, gradients, GEMMs, 2-D tiles and the kernels' coverage.

The selection rule itself is checked against an independent numpy transcription in test_adaptive_oracle.py.
"""

from __future__ import annotations

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lowbit_jax as lb

ADAPTIVE = ("if4", "if6", "mxif4", "mxif6", "mxif8", "nvfp4_4over6")


def heavy(shape, seed=0) -> np.ndarray:
    """Gaussian values times a log-normal per element: blocks of every crest factor, both choices taken."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * np.exp(rng.standard_normal(shape))).astype(np.float32)


def same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# --------------------------------------------------------------------------------------------- construction
def test_named_adaptive_formats_and_their_storage():
    """Selector placement and bits per element follow from the candidates (scale sign, scale value, beside)."""
    want = {
        "if4": ("scale_sign", 0, 4 + 8 / 16),
        "if6": ("scale_sign", 0, 6 + 8 / 16),
        "mxif4": ("separate", 1, 4 + 9 / 32),
        "mxif6": ("separate", 1, 6 + 9 / 32),
        "mxif8": ("separate", 1, 8 + 9 / 32),
        "nvfp4_4over6": ("scale", 0, 4 + 8 / 16),
    }
    for name, (mode, bits, bpe) in want.items():
        fmt = lb.get_format(name)
        assert fmt.is_adaptive and isinstance(fmt, lb.AdaptiveFormat) and isinstance(fmt, lb.Format)
        assert (fmt.selector, fmt.selector_bits, fmt.bits_per_element) == (mode, bits, bpe), name
        assert name in lb.list_formats()
    assert not lb.get_format("nvfp4").is_adaptive
    assert [c.name for c in lb.get_format("if4").candidates] == ["nvfp4", "if4_int"]
    assert [c.name for c in lb.get_format("nvfp4_4over6").candidates] == ["nvfp4_to6", "nvfp4_to4"]


def test_generic_constructor_equals_the_named_format():
    x = heavy((6, 96))
    mine = lb.adaptive(["mxfp4", "mxint4"], select="mse")
    assert mine.candidates == lb.get_format("mxif4").candidates and mine.name == "adaptive(mxfp4|mxint4)"
    assert same_bits(lb.fake_quant(x, mine), lb.fake_quant(x, "mxif4"))
    assert same_bits(lb.block_choices(x, mine), lb.block_choices(x, "mxif4"))


def test_three_candidates_store_two_bit_selectors():
    """Three 4-bit UE8M0 candidates: a 2-bit selector beside the scales, every choice taken on heavy data, and
    the dequantized blocks equal the chosen candidate's blocks."""
    fmt = lb.adaptive(["mxfp4", "mxint4", "fp(3,0)"])
    assert fmt.selector == "separate" and fmt.selector_bits == 2
    x = heavy((16, 128), seed=3)
    q = lb.quantize(x, fmt)
    assert q.selectors.dtype == jnp.uint8 and q.selectors.shape == q.scales.shape
    assert set(np.unique(q.selectors)) == {0, 1, 2}
    assert same_bits(lb.dequantize(q), lb.fake_quant(x, fmt))
    y = np.asarray(lb.fake_quant(x, fmt)).reshape(16, 4, 32)
    cands = [np.asarray(lb.fake_quant(x, c)).reshape(16, 4, 32) for c in fmt.candidates]
    sel = np.asarray(q.selectors)
    for c, yc in enumerate(cands):
        assert same_bits(y[sel == c], yc[sel == c])
    assert q.nbytes_payload == 16 * 128 * 4 / 8 + 16 * 4 * (8 + 2) / 8


@pytest.mark.parametrize(
    "candidates,match",
    [
        (["mxfp4"], "at least two"),
        (["mxfp4", "mxint4:block_size=16"], "one block layout"),
        (["mxfp4", "mxint8"], "one width"),
        (["mxfp4", "int(4):block_size=32:scale=e4m3:tensor_scale=none"], "one scale type"),
        (["nvfp4", "nvfp4_to4"], "second-level scale"),
        (["mxfp4", "bf16"], "plain block format"),
        (["mxint4:int_range=zero_point", "mxfp4"], "zero-point"),
        (["mxfp4", "mxif4"], "plain block format"),
    ],
)
def test_bad_candidates_raise(candidates, match):
    with pytest.raises(ValueError, match=match):
        lb.adaptive(candidates)


def test_spec_grammar_select_and_overrides():
    assert lb.get_format("IF4:select=MAE").select == "mae"
    assert lb.get_format("if4:select=mae").label == "if4[select=mae]"
    fmt = lb.get_format("mxif4:block_size=16")
    assert all(c.block_size == 16 for c in fmt.candidates) and fmt.block_size == 16
    assert fmt.label == "mxif4[block_size=16]"
    assert lb.get_format("if4", select="absmax").select == "absmax"
    with pytest.raises(ValueError, match="adaptive formats only"):
        lb.get_format("nvfp4:select=mse")
    with pytest.raises(ValueError, match="select must be one of"):
        lb.get_format("if4:select=l2")
    with pytest.raises(ValueError, match="block choices exist"):
        lb.block_choices(np.ones((2, 32), np.float32), "mxfp4")


# --------------------------------------------------------------------------------------------- element grids
def test_stretched_int_grid_is_correctly_rounded_with_even_ties():
    """IF4's INT candidate: the values fl32(6k/7), each the float32 nearest the exact rational (Fraction
    arithmetic, not a float64 detour); exact midpoints go to the even k; beyond +-6 saturates."""
    e = lb.stretched_int(4, 6.0)
    vals = np.asarray(e.decode(jnp.arange(-7, 8, dtype=jnp.int32)))
    for k, v in zip(range(-7, 8), vals):
        exact = Fraction(6 * k, 7)
        below, above = np.nextafter(v, np.float32(-1e9)), np.nextafter(v, np.float32(1e9))
        assert abs(Fraction(float(v)) - exact) <= min(abs(Fraction(float(w)) - exact) for w in (below, above))
    mids = (vals[:-1].astype(np.float64) + vals[1:]) / 2  # exact midpoints of neighbours (float64 holds them)
    on_f32 = mids.astype(np.float32).astype(np.float64) == mids
    ks = np.asarray(e.encode(jnp.asarray(mids[on_f32], jnp.float32)), np.int64)
    assert on_f32.sum() >= 4 and (ks % 2 == 0).all()
    big = jnp.asarray([6.5, -1e30, 3.0], jnp.float32)
    assert np.asarray(e.round(big)).tolist() == [6.0, -6.0, float(vals[7 + 4])]  # 3.0 = the 3|4 midpoint: k = 4
    with pytest.raises(ValueError, match="2 <= b <= 8"):
        lb.stretched_int(9, 6.0)
    with pytest.raises(ValueError, match="positive float32"):
        lb.stretched_int(4, -6.0)


def test_four_over_six_maps_the_block_amax_to_four():
    """nvfp4_to4 on a one-block tensor of amax 4: g = 4 / (6 * 256), block scale E4M3(4 / 4 / g) = 384, so
    the amax lands on the E2M1 value 4 (hand computation); a target above the grid's max is refused."""
    x = jnp.asarray([[4.0, 1.0, -2.0] + [0.0] * 13], jnp.float32)
    q = lb.quantize(x, "nvfp4_to4")
    assert float(q.tensor_scale) == np.float32(4.0) / np.float32(1536.0)
    assert float(q.scales.astype(jnp.float32)[0, 0]) == 384.0
    assert np.asarray(q.codes.astype(jnp.float32))[0, :3].tolist() == [4.0, 1.0, -2.0]
    with pytest.raises(ValueError, match="exceeds the largest"):
        lb.Format("bad", lb.fp(2, 1), 16, lb.scaling.FloatScale("e4m3", tensor="fp32", target=8.0))


# --------------------------------------------------------------------------------------------- everywhere
@pytest.mark.parametrize("name", ["if6", "mxif8", "nvfp4_4over6"])  # every format: test_adaptive_oracle.py
def test_round_trip_and_storage_dtypes(name):
    x = heavy((5, 70), seed=1)  # a partial last block
    x[0] = np.where(np.arange(70) % 16 == 0, 10.0, 0.02 * x[0])  # spiky blocks: MXFP8 beats MXINT8 there
    q = lb.quantize(x, name)
    assert same_bits(lb.dequantize(q), lb.fake_quant(x, name))
    choice = np.asarray(lb.block_choices(x, name))
    assert choice.shape == q.scales.shape and set(np.unique(choice)) == {0, 1}, name
    if name.startswith("if"):  # the choice is the E4M3 scale's sign bit
        sign = np.asarray(jax.lax.bitcast_convert_type(q.scales, jnp.uint8)) >> 7
        assert q.selectors is None and (sign == choice).all()
    elif name.startswith("mxif"):
        assert (np.asarray(q.selectors) == choice).all()
    else:
        assert q.selectors is None and q.codes.dtype == jnp.float4_e2m1fn


def test_gradient_is_straight_through_and_jit_carries_selectors():
    x = jnp.asarray(heavy((4, 64), seed=2))
    g = jax.grad(lambda v: jnp.sum(lb.fake_quant(v, "if4") * 3.0))(x)
    assert (np.asarray(g) == 3.0).all()
    q = jax.jit(lambda v: lb.quantize(v, "mxif8"))(x)
    assert same_bits(jax.jit(lb.dequantize)(q), lb.fake_quant(x, "mxif8"))


def test_gemm_and_interceptor_take_adaptive_formats():
    """qdot_general with direct-cast IF4 equals the product of the fake-quantized operands; the interceptor
    preset grammar takes an adaptive spec."""
    x, w = jnp.asarray(heavy((8, 64), 4)), jnp.asarray(heavy((64, 16), 5))
    cfg = lb.QDotConfig.direct_cast("if4:select=mae")
    got = lb.qdot_general(x, w, (((1,), (0,)), ((), ())), config=cfg)
    want = lb.fake_quant(x, "if4:select=mae") @ lb.fake_quant(w, "if4:select=mae", axis=0)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-5)
    from lowbit_jax.interceptor import parse_value

    assert parse_value("direct_cast:if4:select=mae") == cfg


def test_two_d_tiles_choose_per_tile():
    x = heavy((32, 48), seed=6)
    fmt = lb.get_format("nvfp4_4over6:block_size=16x16")
    q = lb.quantize(x, fmt)
    assert q.scales.shape == (2, 3) and same_bits(lb.dequantize(q), lb.fake_quant(x, fmt))
    choice = np.asarray(lb.block_choices(x, fmt))
    tiles = lambda a: np.asarray(a).reshape(2, 16, 3, 16).transpose(0, 2, 1, 3)  # noqa: E731
    y = tiles(lb.fake_quant(x, fmt))
    for c, cand in enumerate(fmt.candidates):
        assert same_bits(y[choice == c], tiles(lb.fake_quant(x, cand))[choice == c])


def test_kernels_refuse_what_they_cannot_tile():
    with pytest.raises(NotImplementedError, match="whole block in one kernel tile"):
        lb.fake_quant(heavy((4, 64)), "mxif4:block_size=tensor", impl="pallas")

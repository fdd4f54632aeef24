"""A given tensor amax (tensor_amax=, fake_quant_delayed): the second-level scale of NV-style formats taken from an
amax passed in instead of a reduction over x. Oracles: the same tensor with one extra block holding the amax (its
tensor amax is then the one given, and every other block is quantized as before), and a numpy evaluation of the
saturating two-level rule for an amax below x's own (a stale one)."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import lowbit_jax as lb

FORMATS = ["nvfp4", "nvint4", "nvfp4:numerics=torchao", "nvfp4:numerics=te", "if4", "nvfp4:tensor_scale=ue8m0"]


def rand(shape, seed, scale=1.0):
    return jnp.asarray((scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32))


X = rand((8, 64), 0, 3.0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_own_amax_reproduces_the_plain_quantizer(fmt):
    y, amax = lb.fake_quant_delayed(X, fmt, tensor_amax=1.0)
    np.testing.assert_array_equal(lb.fake_quant(X, fmt, tensor_amax=amax), lb.fake_quant(X, fmt))
    assert float(amax) == float(jnp.max(jnp.abs(X)))
    q, q_own = lb.quantize(X, fmt, tensor_amax=amax), lb.quantize(X, fmt)
    for a, b in zip(jax.tree.leaves(q), jax.tree.leaves(q_own), strict=True):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_larger_amax_acts_as_the_tensor_that_holds_it(fmt):
    a = 40.0  # above every |x|: the extra row's block of a's is the tensor's amax
    spiked = jnp.concatenate([X, jnp.full((1, 64), a, jnp.float32)])
    want = lb.fake_quant(spiked, fmt)[:-1]
    np.testing.assert_array_equal(lb.fake_quant(X, fmt, tensor_amax=a), want)
    np.testing.assert_array_equal(lb.fake_quant(X, fmt, tensor_amax=jnp.float32(a)), want)


def test_a_stale_smaller_amax_saturates_the_block_scales():
    a = np.float32(0.5)  # far below amax(X) = ~10: every block scale saturates at E4M3's 448
    y = np.asarray(lb.fake_quant(X, "nvfp4", tensor_amax=a))
    g = np.float32(a / np.float32(6 * 448))
    s = np.float32(448.0)
    x = np.asarray(X)
    amax_b = np.abs(x.reshape(8, 4, 16)).max(-1, keepdims=True)
    scale = np.minimum(amax_b / np.float32(6) / g, s)  # E4M3 rounding of a saturated scale: 448 itself
    assert np.all(scale == s)
    v = np.clip(x.reshape(8, 4, 16) / np.float32(s * g), -6, 6).astype(ml_dtypes.float4_e2m1fn).astype(np.float32)
    np.testing.assert_array_equal(y, (v * np.float32(s * g)).reshape(8, 64))
    assert np.abs(y).max() == np.float32(6 * s * g)  # clipped at Qmax x 448 x g, the stale amax's range


def test_bad_amax_raises_or_poisons():
    with pytest.raises(ValueError, match="has none"):
        lb.fake_quant(X, "mxfp4", tensor_amax=1.0)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite and >= 0"):
            lb.fake_quant(X, "nvfp4", tensor_amax=bad)
    with pytest.raises(ValueError, match="scalar"):
        lb.fake_quant(X, "nvfp4", tensor_amax=jnp.ones(2))
    traced = jax.jit(lambda a: lb.fake_quant(X, "nvfp4", tensor_amax=a))
    assert np.isnan(np.asarray(traced(jnp.float32(np.nan)))).all()  # a traced NaN reaches every block
    assert np.isnan(np.asarray(traced(jnp.float32(-2.0)))).all()


def test_gradient_is_straight_through_in_x_and_zero_in_the_amax():
    gx, ga = jax.grad(lambda x, a: jnp.sum(lb.fake_quant(x, "nvfp4", tensor_amax=a)), argnums=(0, 1))(X, 20.0)
    np.testing.assert_array_equal(gx, np.ones_like(X))
    assert float(ga) == 0.0


@pytest.mark.parametrize("fmt", ["nvfp4", "nvfp4_2d", "nvfp4:numerics=te"])
def test_kernels_take_the_amax_too(fmt):
    x = rand((32, 64), 3)
    want = lb.fake_quant(x, fmt, tensor_amax=9.0)
    np.testing.assert_array_equal(lb.fake_quant(x, fmt, tensor_amax=9.0, impl="pallas"), want)
    q = lb.quantize(x, fmt, tensor_amax=9.0, impl="pallas")
    np.testing.assert_array_equal(lb.dequantize(q), want)
    np.testing.assert_array_equal(lb.kernels.fake_quant(x, fmt, impl="xla", tensor_amax=jnp.float32(9.0)), want)

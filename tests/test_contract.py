"""Contract hardening: arguments that used to be silently reinterpreted or failed with unrelated messages now raise
clear errors (each case was a silent wrong result or an unclear crash before)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lowbit_jax as lb

S = jnp.arange(64, dtype=jnp.float32).reshape(8, 8) / 7.0


def test_out_of_range_dimension_numbers_raise_instead_of_wrapping():
    """Contracting dim 2 of a rank-2 operand used to wrap to dim 0 and return s.T @ t; lax.dot_general refuses."""
    with pytest.raises(TypeError, match="out of range"):
        lb.qdot_general(S, S, (((2,), (0,)), ((), ())))
    with pytest.raises(TypeError, match="out of range"):
        lb.qdot_general(S, S, (((1,), (-3,)), ((), ())))
    ok = lb.qdot_general(S, S, (((-1,), (0,)), ((), ())))  # negative dims count from the end
    np.testing.assert_allclose(np.asarray(ok), np.asarray(S @ S), rtol=1e-6)


def test_qdot_general_argument_errors():
    dims = (((1,), (0,)), ((), ()))
    with pytest.raises(TypeError, match="must be a QDotConfig"):
        lb.qdot_general(S, S, dims, "mxfp4")
    with pytest.raises(TypeError, match="real floating-point operands"):
        lb.qdot_general(jnp.ones((4, 4), jnp.int32), S[:4, :4], dims)
    with pytest.raises(TypeError, match="stochastic_grads must be True or False"):
        lb.QDotConfig(stochastic_grads="yes")


def test_hadamard_rotate_refuses_ints_scalars_and_bad_axes():
    key = jax.random.key(0)
    with pytest.raises(TypeError, match="floating-point"):
        lb.hadamard.rotate(jnp.arange(8), 8, key)
    with pytest.raises(ValueError, match="scalar"):
        lb.hadamard.rotate(jnp.float32(1.0), 1, key)
    with pytest.raises(ValueError, match="out of range"):  # used to rotate axis 0
        lb.hadamard.rotate(S, 8, key, axis=2)
    np.testing.assert_array_equal(
        np.asarray(lb.hadamard.rotate(S, 8, key, axis=np.int64(0))), np.asarray(lb.hadamard.rotate(S, 8, key, axis=0))
    )


def test_axis_types():
    """numpy integer axes are accepted; bools and strings are refused with a message naming the type."""
    x = np.ones((4, 32), np.float32)
    np.testing.assert_array_equal(np.asarray(lb.fake_quant(x, "mxfp4", axis=np.int64(1))), lb.fake_quant(x, "mxfp4"))
    for bad in (True, "0", 1.0):
        with pytest.raises(ValueError, match="axis must be a Python int"):
            lb.fake_quant(x, "mxfp4", axis=bad)


def test_format_with_a_name_instead_of_an_element_raises_at_construction():
    with pytest.raises(TypeError, match="elem must be an element grid"):
        lb.Format("x", "int8")
    with pytest.raises(TypeError, match="a Format or a spec string"):
        lb.get_format(["mxfp4"])


def test_dequantize_validates_the_qarray():
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    q = lb.quantize(x, "nvfp4")
    np.testing.assert_array_equal(np.asarray(lb.dequantize(q)), np.asarray(lb.fake_quant(x, "nvfp4")))
    swapped = lb.QArray(q.scales, q.codes, q.tensor_scale, q.fmt, q.axis, q.shape, q.dtype)
    with pytest.raises(ValueError, match="fields swapped"):
        lb.dequantize(swapped)
    with pytest.raises(ValueError, match="tensor_scale"):
        lb.dequantize(lb.QArray(q.codes, q.scales, None, q.fmt, q.axis, q.shape, q.dtype))
    batched = jax.vmap(lambda r: lb.quantize(r, "mxfp4"))(jnp.asarray(x))
    with pytest.raises(ValueError, match="under vmap"):
        lb.dequantize(batched)
    np.testing.assert_array_equal(np.asarray(jax.vmap(lb.dequantize)(batched)), np.asarray(lb.fake_quant(x, "mxfp4")))
    m = lb.quantize(x, "mxif4")
    with pytest.raises(ValueError, match="selectors is missing"):
        lb.dequantize(lb.QArray(m.codes, m.scales, None, m.fmt, m.axis, m.shape, m.dtype))


@pytest.mark.parametrize("name", ["nvfp4", "mxif4", "mxint4:int_range=zero_point"])
def test_qarray_equality_and_flax_serialization(name):
    import flax.serialization

    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    q = lb.quantize(x, name)
    assert q.equals(lb.quantize(x, name)) and not q.equals(lb.quantize(x * 2, name)) and not q.equals(x)
    assert (q == q) and not (q == lb.quantize(x, name))  # identity, not an ambiguous array truth value
    restored = flax.serialization.from_bytes({"w": q}, flax.serialization.to_bytes({"w": q}))["w"]
    assert restored.equals(q)
    np.testing.assert_array_equal(np.asarray(lb.dequantize(restored)), np.asarray(lb.dequantize(q)))


def test_quantize_is_not_differentiable_and_says_so():
    """grad through dequantize(quantize(x)) used to be silently all zero; fake_quant is the differentiable path."""
    x = jnp.asarray(np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32))
    with pytest.raises(TypeError, match="not differentiable"):
        jax.grad(lambda v: jnp.sum(lb.dequantize(lb.quantize(v, "mxfp4"))))(x)
    g = jax.grad(lambda v: jnp.sum(lb.fake_quant(v, "mxfp4")))(x)
    assert (np.asarray(g) == 1.0).all()
    q = jax.jit(lambda v: lb.quantize(v, "mxfp4"))(x)  # jit and vmap are unaffected
    assert q.equals(lb.quantize(x, "mxfp4"))


def test_identity_formats_refuse_a_key_and_float64_is_refused():
    x = jnp.ones((2, 8), jnp.float32)
    for fn in (lb.fake_quant, lb.quantize):
        with pytest.raises(ValueError, match="no effect"):
            fn(x, "bf16", key=jax.random.key(0))
    with jax.enable_x64(True):
        with pytest.raises(TypeError, match="float64"):
            lb.fake_quant(jnp.ones((2, 32), jnp.float64), "mxfp4")

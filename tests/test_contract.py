"""Contract hardening: arguments that used to be silently reinterpreted or failed with unrelated messages now raise
clear errors (each case was a silent wrong result or an unclear crash before)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

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


# ------------------------------------------------------------------------------------------------ interception
class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(64, name="fc1")(x))
        return nn.Dense(32, name="fc2")(x)


class _TiedLM(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        embed = nn.Embed(64, 32, name="embed")
        return embed.attend(nn.Dense(32, name="fc")(embed(tokens)))


class _NNXTiedLM(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(64, 32, rngs=rngs)
        self.fc = nnx.Linear(32, 32, rngs=rngs)

    def __call__(self, tokens):
        return self.embed.attend(self.fc(self.embed(tokens)))


X32 = jnp.asarray(np.random.default_rng(0).standard_normal((4, 32)), jnp.float32)
MLP_PARAMS = _MLP().init(jax.random.key(0), X32)
DC4 = lb.QDotConfig.direct_cast("mxfp4")


def _mlp(rules):
    with lb.quantized(rules) as report:
        y = _MLP().apply(MLP_PARAMS, X32)
    return y, report


def test_rules_as_a_dict_quantize_and_bare_patterns_raise():
    y_list, rep_list = _mlp([(".*", "direct_cast:mxfp4")])
    y_dict, rep_dict = _mlp({".*": "direct_cast:mxfp4"})
    assert rep_dict.quantized == rep_list.quantized == {"fc1": "direct_cast(mxfp4)", "fc2": "direct_cast(mxfp4)"}
    np.testing.assert_array_equal(y_dict, y_list)
    assert not np.array_equal(y_dict, _MLP().apply(MLP_PARAMS, X32))
    for bad in (".*", [".*", "fc1"], None, DC4, [(".*", DC4, 1)]):
        with pytest.raises(TypeError, match="rule"):
            with lb.quantized(bad):
                pass


def test_nested_quantized_innermost_rule_wins_and_every_report_says_what_ran():
    with lb.quantized({".*": "direct_cast:mxfp4"}) as outer:
        with lb.quantized({"fc2": "direct_cast:mxint8"}) as inner:
            y = _MLP().apply(MLP_PARAMS, X32)
    y_ref, _ = _mlp({"fc1": "direct_cast:mxfp4", "fc2": "direct_cast:mxint8"})
    np.testing.assert_array_equal(y, y_ref)
    assert outer.quantized == inner.quantized == {"fc1": "direct_cast(mxfp4)", "fc2": "direct_cast(mxint8)"}
    with lb.quantized({".*": "direct_cast:mxfp4"}) as outer:  # an inner skip rule keeps the layer unquantized
        with lb.quantized([("fc1", None)]):
            y = _MLP().apply(MLP_PARAMS, X32)
    np.testing.assert_array_equal(y, _mlp([("fc2", DC4)])[0])
    assert outer.quantized == {"fc2": "direct_cast(mxfp4)"} and outer.skipped == ["fc1"]


def _loss(params, x):
    return jnp.sum(_MLP().apply(params, x) ** 2)


@pytest.mark.parametrize("capture_inside", [True, False])
def test_capture_and_quantized_compose(capture_inside):
    """Both contexts act: the GEMMs are quantized (same output and gradient as quantized alone) and the capture
    records the operands the quantizers see (fc1's X and W exactly; fc2's X is quantized fc1's activation)."""
    rules = {".*": "train:mxfp4"}  # forward operands in MXFP4 as DC4; gradients too
    with lb.quantized(rules):
        y_q, g_q = jax.value_and_grad(_loss)(MLP_PARAMS, X32)
    with lb.capture() as cap_plain:
        jax.grad(_loss)(MLP_PARAMS, X32)
    if capture_inside:
        with lb.quantized(rules) as report, lb.capture() as cap:
            y, g = jax.value_and_grad(_loss)(MLP_PARAMS, X32)
    else:
        with lb.capture() as cap, lb.quantized(rules) as report:
            y, g = jax.value_and_grad(_loss)(MLP_PARAMS, X32)
    np.testing.assert_array_equal(y, y_q)
    jax.tree.map(np.testing.assert_array_equal, g, g_q)
    assert report.quantized == {"fc1": "train(mxfp4)", "fc2": "train(mxfp4)"}
    assert cap.report.quantized == {"fc1": "capture", "fc2": "capture"}
    np.testing.assert_array_equal(cap["fc1"]["x"].value, X32)
    np.testing.assert_array_equal(cap["fc1"]["w"].value, MLP_PARAMS["params"]["fc1"]["kernel"])
    h1 = jax.nn.relu(
        lb.qdot_general(X32, MLP_PARAMS["params"]["fc1"]["kernel"], (((1,), (0,)), ((), ())), DC4)
        + MLP_PARAMS["params"]["fc1"]["bias"][None]
    )
    np.testing.assert_array_equal(cap["fc2"]["x"].value, h1)
    with lb.quantized(rules):
        out = _MLP().apply(MLP_PARAMS, X32)
    np.testing.assert_array_equal(cap["fc2"]["dy"].value, 2 * out)  # d sum(y^2) / dy
    assert not np.array_equal(cap["fc2"]["x"].value, cap_plain["fc2"]["x"].value)


def test_tied_lm_head_is_quantized_linen_and_nnx():
    tokens = jnp.asarray([[1, 5, 9, 63]], jnp.int32)
    params = _TiedLM().init(jax.random.key(1), tokens)
    with lb.quantized({".*": DC4}) as report:
        logits = _TiedLM().apply(params, tokens)
    assert report.quantized == {"fc": "direct_cast(mxfp4)", "embed": "direct_cast(mxfp4)"}
    table = params["params"]["embed"]["embedding"]
    h = lb.qdot_general(table[tokens], params["params"]["fc"]["kernel"], (((2,), (0,)), ((), ())), DC4)
    h = h + params["params"]["fc"]["bias"][None, None]
    np.testing.assert_array_equal(logits, lb.qdot_general(h, table, (((2,), (1,)), ((), ())), DC4))

    model = _NNXTiedLM(nnx.Rngs(2))
    with lb.quantized({".*": DC4}, model=model) as report:
        logits = model(tokens)
    assert report.quantized == {"embed": "direct_cast(mxfp4)", "fc": "direct_cast(mxfp4)"}
    table = model.embed.embedding[...]
    h = (
        lb.qdot_general(table[tokens], model.fc.kernel[...], (((2,), (0,)), ((), ())), DC4)
        + model.fc.bias[...][None, None]
    )
    np.testing.assert_array_equal(logits, lb.qdot_general(h, table, (((2,), (1,)), ((), ())), DC4))
    assert "attend" not in vars(model.embed)  # the hook is removed on exit
    np.testing.assert_array_equal(model(tokens), jnp.dot(model.fc(table[tokens]), table.T))


def test_nnx_contexts_compose_like_linen():
    model = _NNXTiedLM(nnx.Rngs(3))
    tokens = jnp.asarray([[2, 4, 8]], jnp.int32)
    with lb.quantized({".*": DC4}, model=model):
        y_q = model(tokens)
    with lb.quantized({".*": DC4}, model=model):
        with lb.quantized({"embed": None}, model=model) as inner, lb.capture(model=model) as cap:
            y_nested = model(tokens)
        y_outer_again = model(tokens)  # the inner contexts' hooks are gone: the outer config runs again
    table = model.embed.embedding[...]
    h = (
        lb.qdot_general(table[tokens], model.fc.kernel[...], (((2,), (0,)), ((), ())), DC4)
        + model.fc.bias[...][None, None]
    )
    np.testing.assert_array_equal(y_nested, jnp.dot(h, table.T))
    np.testing.assert_array_equal(y_outer_again, y_q)
    assert inner.quantized == {"fc": "direct_cast(mxfp4)"} and inner.skipped == ["embed"]
    np.testing.assert_array_equal(cap["embed"]["x"].value, h)
    with lb.quantized({".*": DC4}, model=model), pytest.raises(ValueError, match="inside an active"):
        lb.quantize_nnx(model, {".*": DC4})


@pytest.mark.parametrize(
    "spec",
    [
        "int8_channel:scale_dtype=bfloat16",
        "fp(4,3):scale=fp32:scale_dtype=bfloat16:block_size=4",
        "mxint8:scale_dtype=bfloat16:block_size=4",
        "mxfp4:scale_dtype=bfloat16:block_size=4",
    ],
)
def test_bf16_scale_arithmetic_keeps_near_max_float32_blocks_finite(spec):
    """A finite amax beyond bf16's range (>= 0x7F7F8000 rounds to bf16 Inf) saturates at bf16's max instead of
    turning the block NaN or its scale to the minimum; the big element stays within 1 % (bf16 steps near 2^128
    are 2^120 ~ 0.4 %), the small ones, far below the block's step, go to zero."""
    x = np.array([[3.4e38, 1.0, -2.0, 0.5]], np.float32)
    y = np.asarray(lb.fake_quant(x, spec))
    assert np.all(np.isfinite(y)) and abs(y[0, 0] / 3.4e38 - 1) < 0.01
    np.testing.assert_array_equal(np.abs(y[0, 1:]), 0.0)


def test_exact_division_of_infinity_is_infinite():
    from lowbit_jax.rounding import div_exact

    q = div_exact(jnp.asarray([np.inf, -np.inf, 3.0, np.nan], jnp.float32), jnp.float32(127.0))
    np.testing.assert_array_equal(q, np.asarray([np.inf, -np.inf, np.float32(3.0) / np.float32(127.0), np.nan]))


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_fake_quant_forward_mode_is_straight_through(impl):
    """jvp / jacfwd / hessian work and agree with reverse mode: the derivative of fake_quant is the identity."""
    x = jnp.asarray(np.random.default_rng(3).standard_normal(32), jnp.float32)
    t = jnp.asarray(np.random.default_rng(4).standard_normal(32), jnp.float32)

    def fq(v):
        return lb.fake_quant(v, "mxfp4", impl=impl)

    y, y_dot = jax.jvp(fq, (x,), (t,))
    np.testing.assert_array_equal(y, fq(x))
    np.testing.assert_array_equal(y_dot, t)
    np.testing.assert_array_equal(jax.jacfwd(fq)(x), np.eye(32, dtype=np.float32))
    np.testing.assert_array_equal(jax.jacfwd(fq)(x), jax.jacrev(fq)(x))
    hess = jax.hessian(lambda v: jnp.sum(fq(v) ** 2))(x)  # d/dv 2 fq(v) = 2 I under the straight-through rule
    np.testing.assert_array_equal(hess, 2 * np.eye(32, dtype=np.float32))


def test_qdot_forward_mode_raises_a_lowbit_message_and_reverse_mode_works():
    x = jnp.asarray(np.random.default_rng(5).standard_normal((4, 32)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(6).standard_normal((32, 8)), jnp.float32)

    def f(v):
        return lb.qdot_general(v, w, (((1,), (0,)), ((), ())), lb.QDotConfig.train("mxfp4"))

    for forward in (lambda: jax.jvp(f, (x,), (x,)), lambda: jax.jacfwd(f)(x)):
        with pytest.raises(TypeError, match="no forward-mode derivative.*jax.grad"):
            forward()
    assert jax.jacrev(f)(x).shape == (4, 8, 4, 32)
    assert jax.hessian(lambda v: jnp.sum(f(v)))(x).shape == (4, 32, 4, 32)  # reverse over the custom VJP


def test_adaptive_choice_ignores_the_padding_of_a_partial_block():
    """A lookup-table candidate without 0 would be charged for the zeros that pad the last block: the last
    block's choices must equal those of its 5 data elements quantized on their own (block = the 5 elements)."""
    table = np.linspace(-1, 1, 16)
    cands = [lb.Format(f"l{i}", lb.lut(table + 0.03 * i), 32, scale="fp32") for i in range(2)]
    fmt = lb.adaptive(cands, name="two_tables")
    x = jnp.asarray(np.random.default_rng(7).standard_normal((3, 37)), jnp.float32)
    tail = lb.adaptive([c.replace(block_size=5) for c in cands], name="tail")
    np.testing.assert_array_equal(lb.block_choices(x, fmt)[:, 1], lb.block_choices(x[:, 32:], tail)[:, 0])
    np.testing.assert_array_equal(lb.fake_quant(x, fmt)[:, 32:], lb.fake_quant(x[:, 32:], tail))
    with pytest.raises(NotImplementedError, match="without 0"):
        lb.fake_quant(x, fmt, impl="pallas")
    np.testing.assert_array_equal(lb.fake_quant(x[:, :32], fmt, impl="pallas"), lb.fake_quant(x[:, :32], fmt))

"""qdot_general: forward = dequantize-then-dot, backward = the six-quantizer formula, exact when unquantized."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import lowbit_jax as lb
from lowbit_jax.gemm_dims import operand_axes
from lowbit_jax.qdot import QDotConfig, qdot_general
from lowbit_jax.qeinsum import einsum_dims, qeinsum

HI = lax.Precision.HIGHEST
SIX = dict(x_fwd="mxfp4", w_fwd="mxint8", dy_dx="nvfp4", w_dx="mxfp8", x_dw="mxint4", dy_dw="mxfp6")


def rand(shape, seed, dtype=jnp.float32, scale=1.0):
    """Gaussian test data from numpy (jax.random compiles once per shape, which dominates small tests)."""
    return jnp.asarray((scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32), dtype)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _dq(x, fmt, axis):
    return lb.dequantize(lb.quantize(x, fmt, axis))


def dq(x, fmt, axis):
    """Oracle: dequantize(quantize(x)) in float32 (identity for fmt None)."""
    x = jnp.asarray(x, jnp.float32)
    return x if fmt is None else _dq(x, fmt, axis)


@jax.jit
def dot(a, b):
    return jnp.matmul(a, b, precision=HI)


def vjp_at(fn, x, w, dy):
    """(fn(x, w), its VJP at cotangent dy), jitted."""

    @jax.jit
    def run(x, w, dy):
        y, vjp = jax.vjp(fn, x, w)
        return y, vjp(dy)

    return run(x, w, dy)


DN_2D = (((1,), (0,)), ((), ()))


@pytest.mark.parametrize("fmt", ["mxfp4", "mxint8", "nvfp4", "int8_channel"])
def test_forward_equals_dequantize_then_dot(fmt):
    x, w = rand((8, 64), 0, scale=3.0), rand((64, 24), 1)
    y = qdot_general(x, w, DN_2D, QDotConfig.direct_cast(fmt))
    np.testing.assert_allclose(y, dot(dq(x, fmt, 1), dq(w, fmt, 0)), rtol=1e-5, atol=1e-5)


def test_gradients_equal_six_quantizer_formula():
    x, w, dy = rand((48, 64), 0), rand((64, 32), 1), rand((48, 32), 2)
    cfg = QDotConfig(**SIX)
    y, (dx, dw) = vjp_at(lambda a, b: qdot_general(a, b, DN_2D, cfg), x, w, dy)
    f = cfg.formats()
    np.testing.assert_allclose(y, dot(dq(x, f["x_fwd"], 1), dq(w, f["w_fwd"], 0)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dot(dq(dy, f["dy_dx"], 1), dq(w, f["w_dx"], 1).T), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, dot(dq(x, f["x_dw"], 0).T, dq(dy, f["dy_dw"], 0)), rtol=1e-5, atol=1e-5)


def test_general_dims_forward_and_grads_use_merged_contracting_axes():
    # batch dim 0; X contracts dims (2, 3) with W dims (2, 1): blocks run along the merged (2, 3) axis.
    x, w, dy = rand((2, 6, 4, 8), 0), rand((2, 8, 4, 5), 1), rand((2, 6, 5), 2)
    dn = (((2, 3), (2, 1)), ((0,), (0,)))
    cfg = QDotConfig(**{k: lb.get_format(v, block_size=8) for k, v in SIX.items()})
    y, (dx, dw) = vjp_at(lambda a, b: qdot_general(a, b, dn, cfg), x, w, dy)
    f = cfg.formats()
    x_m = x.reshape(2, 6, 32)  # X is (b, t, [k1, k2]) -> (b, t, K)
    w_m = jnp.transpose(w, (0, 3, 2, 1)).reshape(2, 5, 32)  # W merged in dn order (k1 = W dim 2, k2 = W dim 1)
    ein = jax.jit(lambda s, a, b: jnp.einsum(s, a, b, precision=HI), static_argnums=0)
    np.testing.assert_allclose(y, ein("btk,bok->bto", dq(x_m, f["x_fwd"], 2), dq(w_m, f["w_fwd"], 2)), atol=1e-5)
    dx_m = ein("bto,bok->btk", dq(dy, f["dy_dx"], 2), dq(w_m, f["w_dx"], 1))
    np.testing.assert_allclose(dx, dx_m.reshape(x.shape), atol=1e-5)
    dw_m = ein("btk,bto->bok", dq(x_m, f["x_dw"], 1), dq(dy, f["dy_dw"], 1))
    np.testing.assert_allclose(dw, jnp.transpose(dw_m.reshape(2, 5, 4, 8), (0, 3, 2, 1)), atol=1e-5)


CASES = [
    ((3, 5), (5, 4), DN_2D),
    ((2, 3, 5), (5, 4), (((2,), (0,)), ((), ()))),
    ((2, 3, 5), (2, 4, 5), (((2,), (2,)), ((0,), (0,)))),  # batched, rhs contracting last
    ((2, 6, 3, 4), (2, 5, 3, 4), (((3,), (3,)), ((0, 2), (0, 2)))),  # attention scores 'bqhd,bkhd->bhqk'
    ((2, 3, 4, 5), (5, 4, 6, 7), (((3, 2), (0, 1)), ((), ()))),  # DenseGeneral-like, two contracting dims
    ((3, 4), (5,), (((), ()), ((), ()))),  # outer product: no contracting dim
]


@pytest.mark.parametrize(
    "shapes,dtype",
    [(c, jnp.float32) for c in CASES] + [(CASES[2], jnp.bfloat16), (CASES[4], jnp.bfloat16)],
    ids=[f"f32-{i}" for i in range(len(CASES))] + ["bf16-2", "bf16-4"],
)
def test_unquantized_equals_jax_grad_of_dot_general(shapes, dtype):
    ls, rs, dn = shapes
    x, w = rand(ls, 0, dtype), rand(rs, 1, dtype)
    c = rand(jax.eval_shape(lambda a, b: lax.dot_general(a, b, dn), x, w).shape, 2, jnp.float32)

    def loss(fn):
        return lambda a, b: jnp.sum(fn(a, b, dn).astype(jnp.float32) * c)

    ref = lambda a, b, d: lax.dot_general(a, b, d, precision=HI, preferred_element_type=jnp.float32).astype(dtype)
    y, y_ref = qdot_general(x, w, dn, QDotConfig()), lax.dot_general(x, w, dn)
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    got = jax.jit(jax.grad(loss(lambda a, b, d: qdot_general(a, b, d, QDotConfig())), (0, 1)))(x, w)
    want = jax.jit(jax.grad(loss(ref), (0, 1)))(x, w)
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(
        y.astype(jnp.float32), jax.jit(ref, static_argnums=2)(x, w, dn).astype(jnp.float32), rtol=tol, atol=tol
    )
    for g, r, a in zip(got, want, (x, w), strict=True):
        assert g.dtype == a.dtype and g.shape == a.shape
        np.testing.assert_allclose(g.astype(jnp.float32), r.astype(jnp.float32), rtol=tol, atol=tol)


def test_bf16_inputs_quantize_exactly_and_respect_preferred_element_type():
    x, w = rand((4, 64), 0, jnp.bfloat16), rand((64, 8), 1, jnp.bfloat16)
    cfg = QDotConfig.train("mxfp8")
    y = qdot_general(x, w, DN_2D, cfg)
    assert y.dtype == jnp.bfloat16
    y32 = qdot_general(x, w, DN_2D, cfg, preferred_element_type=jnp.float32)
    assert y32.dtype == jnp.float32
    np.testing.assert_allclose(y32, dot(dq(x, "mxfp8", 1), dq(w, "mxfp8", 0)), rtol=1e-6)
    gx, gw = jax.jit(jax.grad(lambda a, b: jnp.sum(qdot_general(a, b, DN_2D, cfg).astype(jnp.float32)), (0, 1)))(x, w)
    assert gx.dtype == gw.dtype == jnp.bfloat16


def test_direct_cast_backward_is_exact_straight_through():
    x, w = rand((16, 32), 0), rand((32, 8), 1)
    loss = lambda dot_fn: lambda a, b: jnp.sum(jnp.sin(dot_fn(a, b)))
    exact = lambda a, b: lax.dot_general(a, b, DN_2D, precision=HI)
    q = lambda a, b: qdot_general(a, b, DN_2D, QDotConfig.direct_cast("mxfp4"))
    y_q = q(x, w)
    dx, dw = jax.jit(jax.grad(loss(q), (0, 1)))(x, w)
    dy = jnp.cos(y_q)  # the cotangent reaching the GEMM: d sum(sin(y)) / dy at the quantized y
    np.testing.assert_allclose(dx, dot(dy, w.T), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dw, dot(x.T, dy), rtol=1e-5, atol=1e-6)
    assert not np.allclose(y_q, exact(x, w), atol=1e-3)


def test_stochastic_grads_need_a_key_and_are_seeded():
    x, w, dy = rand((32, 32), 0), rand((32, 32), 1), rand((32, 32), 2, scale=1e-3)
    cfg = QDotConfig.train("mxint4", stochastic_grads=True)
    qdot_general(x, w, DN_2D, cfg)  # the forward needs no key
    with pytest.raises(ValueError, match="needs a PRNG key"):
        jax.grad(lambda a: jnp.sum(qdot_general(a, w, DN_2D, cfg)))(x)

    @jax.jit
    def grads(key):
        return vjp_at(lambda a, b: qdot_general(a, b, DN_2D, cfg, key=key), x, w, dy)[1]

    g1, g1b, g2 = grads(jax.random.key(1)), grads(jax.random.key(1)), grads(jax.random.key(2))
    np.testing.assert_array_equal(g1[0], g1b[0])
    assert not np.array_equal(g1[0], g2[0]) and not np.array_equal(g1[1], g2[1])
    y1 = qdot_general(x, w, DN_2D, cfg, key=jax.random.key(1))
    np.testing.assert_array_equal(y1, qdot_general(x, w, DN_2D, cfg, key=jax.random.key(2)))  # forward is RNE
    # SR is unbiased: averaged over keys, the dW GEMM approaches Q(X)^T dY with dY unquantized.
    mean_dw = jax.vmap(grads)(jax.random.split(jax.random.key(9), 64))[1].mean(0)
    want = dot(dq(x, "mxint4", 0).T, dy)
    assert np.abs(mean_dw - want).mean() < 0.25 * np.abs(grads(jax.random.key(0))[1] - want).mean()


def test_rotation_is_applied_before_quantization_and_keeps_unquantized_products():
    x, w, key = rand((8, 64), 0), rand((64, 16), 1), jax.random.key(3)
    ident = QDotConfig.direct_cast("fp32", rotation=32)  # identity format: rotation alone, no rounding
    np.testing.assert_allclose(qdot_general(x, w, DN_2D, ident, key=key), dot(x, w), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(qdot_general(x, w, DN_2D, ident), dot(x, w), rtol=1e-5, atol=1e-5)  # seeded
    cfg = QDotConfig.direct_cast("mxint4", rotation=16)
    xr, wr = (
        lb.hadamard.rotate(x, 16, jax.random.fold_in(key, 0)),
        lb.hadamard.rotate(w, 16, jax.random.fold_in(key, 0), axis=0),
    )
    want = dot(dq(xr, "mxint4", 1), dq(wr, "mxint4", 0))
    np.testing.assert_allclose(qdot_general(x, w, DN_2D, cfg, key=key), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="does not divide"):
        qdot_general(rand((8, 48), 0), rand((48, 4), 1), DN_2D, QDotConfig.direct_cast("mxint8", rotation=32))


def test_config_validation_and_labels():
    assert QDotConfig.train("mxint8").label == "train(mxint8)"
    assert QDotConfig.direct_cast("nvfp4", rotation=16).label == "direct_cast(nvfp4)+rot16"
    assert QDotConfig.train("mxfp8") == QDotConfig.train(lb.get_format("mxfp8"))
    with pytest.raises(ValueError, match="unknown format"):
        QDotConfig.train("mxint9")
    with pytest.raises(ValueError, match="power of two"):
        QDotConfig(rotation=24)
    with pytest.raises(TypeError):
        QDotConfig(x_fwd=8)
    with pytest.raises(ValueError, match="floating"):
        QDotConfig(accum_dtype="int32")


def test_jit_and_operand_axes():
    x, w = rand((4, 32), 0), rand((32, 8), 1)
    f = jax.jit(lambda a, b: qdot_general(a, b, DN_2D, QDotConfig.train("mxfp4")))
    np.testing.assert_array_equal(f(x, w), qdot_general(x, w, DN_2D, QDotConfig.train("mxfp4")))
    assert operand_axes((((2,), (0,)), ((), ())), 3, 2) == {
        "x": {"fwd": (2,), "dw": (0, 1)},
        "w": {"fwd": (0,), "dx": (1,)},
        "dy": {"dx": (2,), "dw": (0, 1)},
    }


@pytest.mark.parametrize(
    "spec,ls,rs",
    [
        ("btd,dhk->bthk", (2, 3, 4), (4, 5, 6)),
        ("bhd,hdo->bo", (2, 3, 4), (3, 4, 5)),
        ("...d,df->...f", (2, 3, 4), (4, 5)),
        ("bqhd,bkhd->bhqk", (2, 3, 4, 5), (2, 6, 4, 5)),
        ("abc,cd->da", (2, 3, 4), (4, 5)),
    ],
)
def test_qeinsum_matches_einsum(spec, ls, rs):
    x, w = rand(ls, 0), rand(rs, 1)
    got = jax.jit(qeinsum, static_argnums=0)(spec, x, w)
    np.testing.assert_allclose(got, jnp.einsum(spec, x, w, precision=HI), rtol=1e-5, atol=1e-5)


def test_einsum_spec_errors():
    with pytest.raises(ValueError, match="explicit"):
        einsum_dims("ab,bc", 2, 2)
    with pytest.raises(ValueError, match="repeated"):
        einsum_dims("aa,ab->b", 2, 2)
    with pytest.raises(ValueError, match="ranks"):
        einsum_dims("ab,bc->ac", 3, 2)


def test_impl_pallas_matches_xla():
    """impl='pallas' (interpreted on CPU) gives the same GEMM as the XLA quantizer, bit for bit."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((16, 64)).astype(np.float32)
    w = rng.standard_normal((64, 16)).astype(np.float32)
    dims = (((1,), (0,)), ((), ()))
    y_xla = lb.qdot_general(x, w, dims, lb.QDotConfig.direct_cast("mxfp4"))
    y_pallas = lb.qdot_general(x, w, dims, lb.QDotConfig.direct_cast("mxfp4", impl="pallas"))
    np.testing.assert_array_equal(np.asarray(y_xla), np.asarray(y_pallas))
    with pytest.raises(ValueError, match="impl"):
        lb.QDotConfig(impl="cuda")

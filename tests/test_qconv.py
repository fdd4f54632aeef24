"""qconv_general_dilated (a convolution as patches . W through qdot_general) and the Conv interceptor hooks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

import lowbit_jax as lb
from lowbit_jax.qconv import qconv_general_dilated

HIGHEST = lax.Precision.HIGHEST
CASES = [  # x shape, w shape, dimension numbers, strides, padding, lhs dilation, rhs dilation
    ((2, 9, 9, 16), (3, 3, 16, 8), ("NHWC", "HWIO", "NHWC"), (1, 1), "SAME", None, None),
    ((2, 16, 9, 9), (8, 16, 3, 3), ("NCHW", "OIHW", "NCHW"), (2, 1), ((1, 0), (2, 2)), (1, 1), (2, 1)),
    ((3, 12, 5), (3, 5, 7), ("NWC", "WIO", "NWC"), (1,), "VALID", None, (2,)),
    ((1, 7, 7, 4), (2, 2, 4, 6), ("NHWC", "HWIO", "NHWC"), (1, 1), ((1, 1), (0, 1)), (2, 2), None),
]


def normal(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "/".join(c[2]))
def test_unquantized_qconv_is_lax_conv_with_gradients(case):
    """With no formats the GEMM route computes lax.conv_general_dilated (float32 rounding aside), gradients too."""
    xs, ws, dn, strides, pad, ld, rd = case
    x, w = normal(xs, 0), normal(ws, 1)
    conv = lambda a, b: lax.conv_general_dilated(a, b, strides, pad, ld, rd, dimension_numbers=dn, precision=HIGHEST)
    qconv = lambda a, b: qconv_general_dilated(a, b, strides, pad, ld, rd, dimension_numbers=dn)
    np.testing.assert_allclose(qconv(x, w), conv(x, w), rtol=1e-5, atol=1e-5)
    loss = lambda fn: jax.grad(lambda a, b: jnp.sum(fn(a, b) ** 2), argnums=(0, 1))
    for got, want in zip(loss(qconv)(x, w), loss(conv)(x, w), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * float(jnp.abs(want).max()))


def test_direct_cast_matches_explicit_windows():
    """Blocks run along (kh, kw, c) windows, channel innermost: the forward equals quantizing every window
    vector and every kernel column with fake_quant and multiplying in float64 (an explicit im2col in numpy)."""
    x, w = normal((2, 6, 6, 16), 2), normal((2, 2, 16, 32), 3)
    cfg = lb.QDotConfig.direct_cast("mxint4")
    got = qconv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), config=cfg)
    xn = np.asarray(x)
    windows = np.stack([xn[:, i : i + 2, j : j + 2, :].reshape(2, -1) for i in range(5) for j in range(5)], 1)
    xq = np.asarray(lb.fake_quant(jnp.asarray(windows), "mxint4"), np.float64)
    wq = np.asarray(lb.fake_quant(w.reshape(64, 32), "mxint4", axis=0), np.float64)
    want = (xq @ wq).reshape(2, 5, 5, 32)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_pointwise_conv_is_exactly_the_gemm_with_all_six_quantizers():
    """A 1x1 convolution is the GEMM over channels: forward, dX and dW equal qdot_general's bit for bit."""
    x, w, c = normal((2, 4, 4, 64), 4), normal((1, 1, 64, 32), 5), normal((2, 4, 4, 32), 6)
    cfg, key = lb.QDotConfig.train("mxfp8", stochastic_grads=True), jax.random.key(7)
    dn = (((1,), (0,)), ((), ()))

    def conv_loss(a, b):
        y = qconv_general_dilated(
            a, b, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), config=cfg, key=key
        )
        return jnp.sum(y * c)

    def gemm_loss(a, b):
        y = lb.qdot_general(a.reshape(-1, 64), b.reshape(64, 32), dn, cfg, key=key)
        return jnp.sum(y.reshape(2, 4, 4, 32) * c)

    got, want = jax.value_and_grad(conv_loss, (0, 1))(x, w), jax.value_and_grad(gemm_loss, (0, 1))(x, w)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(e))


@pytest.mark.parametrize("groups", [2, 8], ids=["2 groups", "depthwise"])
def test_grouped_convolutions_match_lax_and_quantize_per_group(groups):
    """feature_group_count: unquantized equals lax.conv with the same groups; quantized, group g's output equals
    the ungrouped qconv of group g's channels and kernels (blocks never cross a group)."""
    x, w = normal((2, 7, 7, 8), 0), normal((3, 3, 8 // groups, 16), 1)
    dn, kw = ("NHWC", "HWIO", "NHWC"), dict(feature_group_count=groups)
    want = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn, precision=HIGHEST, **kw)
    got = qconv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    cfg = lb.QDotConfig.direct_cast("mxint4")
    y = qconv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn, config=cfg, **kw)
    cg, og = 8 // groups, 16 // groups
    for g in range(groups):
        xg, wg = x[..., g * cg : (g + 1) * cg], w[..., g * og : (g + 1) * og]
        yg = qconv_general_dilated(xg, wg, (1, 1), "SAME", dimension_numbers=dn, config=cfg)
        np.testing.assert_allclose(y[..., g * og : (g + 1) * og], yg, rtol=1e-6, atol=1e-6)


def test_bad_group_counts_raise():
    x, w = normal((1, 5, 5, 4), 0), normal((3, 3, 2, 4), 1)
    dn = ("NHWC", "HWIO", "NHWC")
    with pytest.raises(NotImplementedError, match="batch_group_count"):
        qconv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn, feature_group_count=2, batch_group_count=2)
    with pytest.raises(ValueError, match="feature_group_count 3"):
        qconv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn, feature_group_count=3)


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Conv(32, (2, 2), padding="VALID", name="conv")(x)
        h = nn.ConvTranspose(8, (2, 2), name="up")(h)
        return nn.Dense(4, name="head")(h.mean((1, 2)))


class OneConv(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Conv(32, (2, 2), padding="VALID", name="conv")(x)


class NCNN(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(16, 32, (2, 2), padding="VALID", rngs=rngs)
        self.up = nnx.ConvTranspose(32, 8, (2, 2), rngs=rngs)
        self.head = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        return self.head(self.up(self.conv(x)).mean((1, 2)))


@pytest.mark.slow
def test_interceptor_quantizes_conv_and_reports_transposed_conv():
    """linen and NNX: Conv goes through qconv (same result as calling it by hand), ConvTranspose is listed as
    unsupported, capture leaves convolutions alone, and NNX hooks are restored."""
    x = normal((2, 6, 6, 16), 8)
    m = CNN()
    params = m.init(jax.random.key(0), x)
    one = OneConv()
    with lb.quantized([(".*", "direct_cast:mxint4")]) as report:
        h = one.apply({"params": {"conv": params["params"]["conv"]}}, x)
    assert report.quantized == {"conv": "direct_cast(mxint4)"}
    k, b = params["params"]["conv"]["kernel"], params["params"]["conv"]["bias"]
    cfg = lb.QDotConfig.direct_cast("mxint4")
    by_hand = qconv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), config=cfg)
    np.testing.assert_array_equal(np.asarray(h), np.asarray(by_hand + b[None, None, None, :]))
    with lb.quantized([(".*", "direct_cast:mxint4")]) as report:
        jax.jit(m.apply)(params, x)
    assert sorted(report.quantized) == ["conv", "head"] and report.unsupported == {"up": "ConvTranspose"}
    with lb.capture(".*") as cap:
        jax.jit(m.apply)(params, x)
    assert cap.report.quantized == {"head": "capture"}
    assert cap.report.unsupported == {"conv": "Conv (capture)", "up": "ConvTranspose"}

    n = NCNN(nnx.Rngs(0))
    original = n.conv.conv_general_dilated
    with lb.quantized([(".*", "train:mxint8")], model=n) as report:
        n(x)
    assert sorted(report.quantized) == ["conv", "head"] and report.unsupported == {"up": "ConvTranspose"}
    assert n.conv.conv_general_dilated is original
    with lb.capture(".*", model=n) as cap:
        n(x)
    assert cap.report.quantized == {"head": "capture"} and cap.report.unsupported["conv"] == "Conv (capture)"

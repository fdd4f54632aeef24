"""Interceptor: rules, linen interception, NNX surgery, per-layer keys, reports and tensor capture."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

import lowbit_jax as lb
from lowbit_jax.interceptor import layer_key, parse_rules
from lowbit_jax.qdot import QDotConfig, qdot_general
from lowbit_jax.qeinsum import qeinsum

D, HEADS, T, B = 32, 2, 4, 2
HD = D // HEADS
DN = (((1,), (0,)), ((), ()))
TRAIN8 = QDotConfig.train("mxint8")


@pytest.fixture(autouse=True)
def highest_matmul_precision():
    """qdot_general multiplies at HIGHEST precision; Flax's own layers and these models' einsums use the default,
    which is TF32 on a GPU. Compare like with like (no effect on a CPU)."""
    with jax.default_matmul_precision("highest"):
        yield


def data(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


# ------------------------------------------------------------------------------------------------ models
class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(64, name="fc1")(x))
        x = nn.relu(nn.Dense(32, name="fc2")(x))
        return nn.Dense(8, name="head")(x)


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm(name="ln1")(x)
        q = nn.DenseGeneral((HEADS, HD), name="query")(h)
        k = nn.DenseGeneral((HEADS, HD), name="key")(h)
        v = nn.Einsum((D, HEADS, HD), "btd,dhk->bthk", name="value")(h)
        a = jax.nn.softmax(jnp.einsum("bqhk,bshk->bhqs", q, k) / np.float32(np.sqrt(HD)))
        x = x + nn.DenseGeneral(D, axis=(-2, -1), name="out")(jnp.einsum("bhqs,bshk->bqhk", a, v))
        h = nn.LayerNorm(name="ln2")(x)
        return x + nn.Dense(D, name="down")(nn.gelu(nn.Dense(2 * D, name="up")(h)))


class Encoder(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(4, name="head")(Block(name="layer_0")(x))


class NMLP(nnx.Module):
    def __init__(self, rngs):
        self.fc1, self.fc2, self.head = (
            nnx.Linear(16, 64, rngs=rngs),
            nnx.Linear(64, 32, rngs=rngs),
            nnx.Linear(32, 8, rngs=rngs),
        )

    def __call__(self, x):
        return self.head(nnx.relu(self.fc2(nnx.relu(self.fc1(x)))))


class NBlock(nnx.Module):
    def __init__(self, rngs):
        self.query = nnx.LinearGeneral(D, (HEADS, HD), rngs=rngs)
        self.key = nnx.LinearGeneral(D, (HEADS, HD), rngs=rngs)
        self.value = nnx.Einsum("btd,dhk->bthk", (D, HEADS, HD), (HEADS, HD), rngs=rngs)
        self.out = nnx.LinearGeneral((HEADS, HD), D, axis=(-2, -1), rngs=rngs)
        self.up, self.down = nnx.Linear(D, 2 * D, rngs=rngs), nnx.Linear(2 * D, D, rngs=rngs)

    def __call__(self, x):
        q, k, v = self.query(x), self.key(x), self.value(x)
        a = jax.nn.softmax(jnp.einsum("bqhk,bshk->bhqs", q, k) / np.float32(np.sqrt(HD)))
        x = x + self.out(jnp.einsum("bhqs,bshk->bqhk", a, v))
        return x + self.down(nnx.gelu(self.up(x)))


class NEncoder(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.List([NBlock(rngs)])
        self.head = nnx.Linear(D, 4, rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


BLOCK_RULES = [
    (r".*head", None),
    (r".*/(query|key|value)", "direct_cast:mxfp8"),
    (r".*up", "skip"),
    (".*out", TRAIN8),
    (".*", ("direct_cast", "nvfp4")),
]
BLOCK_QUANTIZED = {
    "query": "direct_cast(mxfp8_e4m3)",
    "key": "direct_cast(mxfp8_e4m3)",
    "value": "direct_cast(mxfp8_e4m3)",
    "out": "train(mxint8)",
    "down": "direct_cast(nvfp4)",
}


# ------------------------------------------------------------------------------------------------ linen
def test_linen_mlp_coverage_and_equivalence_with_qdot_general():
    m, x = MLP(), data((8, 16))
    v = jax.jit(m.init)(jax.random.key(0), x)
    with lb.quantized([(r"head", None), (".*", TRAIN8)]) as report:
        y = jax.jit(m.apply)(v, x)
    assert report.quantized == {"fc1": "train(mxint8)", "fc2": "train(mxint8)"}
    assert report.skipped == ["head"]
    p = v["params"]
    h = jax.nn.relu(qdot_general(x, p["fc1"]["kernel"], DN, TRAIN8) + p["fc1"]["bias"][None])
    h = jax.nn.relu(qdot_general(h, p["fc2"]["kernel"], DN, TRAIN8) + p["fc2"]["bias"][None])
    want = lax.dot_general(h, p["head"]["kernel"], DN, precision="highest") + p["head"]["bias"][None]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_linen_block_coverage_identity_equivalence_and_training_step():
    m, x = Encoder(), data((B, T, D))
    v = jax.jit(m.init)(jax.random.key(0), x)
    with lb.quantized([(".*", QDotConfig())]) as report:  # unquantized routing: same function as Flax's own
        y_routed = jax.jit(m.apply)(v, x)
    assert len(report.quantized) == 7
    np.testing.assert_allclose(y_routed, jax.jit(m.apply)(v, x), rtol=1e-5, atol=1e-5)

    reports = []  # the report is filled while JAX traces; keep it out of the jitted outputs

    def loss(params):
        with lb.quantized(BLOCK_RULES) as rep:
            reports.append(rep)
            return jnp.mean(m.apply(params, x) ** 2)

    val, grads = jax.jit(jax.value_and_grad(loss))(v)
    rep = reports[0]
    assert rep.quantized == {f"layer_0/{k}": c for k, c in BLOCK_QUANTIZED.items()}
    assert sorted(rep.skipped) == ["head", "layer_0/up"]
    assert np.isfinite(val) and all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_linen_einsum_and_dense_general_match_quantized_ops():
    x = data((B, T, D))
    ein = nn.Einsum((D, HEADS, HD), "btd,dhk->bthk")
    dg = nn.DenseGeneral(D, axis=(-2, -1))
    ve, vd = jax.jit(ein.init)(jax.random.key(0), x), jax.jit(dg.init)(jax.random.key(1), x.reshape(B, T, HEADS, HD))
    cfg, key = QDotConfig.train("nvfp4", rotation=16), jax.random.key(4)
    with lb.quantized([(".*", cfg)], key=key):
        ye = ein.apply(ve, x)  # a top-level module has the path ""
    with lb.quantized([(".*", cfg)], key=key):
        yd = dg.apply(vd, x.reshape(B, T, HEADS, HD))
    key = layer_key(key, "")
    want_e = qeinsum("btd,dhk->bthk", x, ve["params"]["kernel"], cfg, key=key) + ve["params"]["bias"][None, None]
    np.testing.assert_allclose(ye, want_e, rtol=1e-5, atol=1e-5)
    kd = vd["params"]["kernel"]
    want_d = qdot_general(x.reshape(B, T, HEADS, HD), kd, (((2, 3), (0, 1)), ((), ())), cfg, key=key)
    np.testing.assert_allclose(yd, want_d + vd["params"]["bias"][None, None], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ NNX
class ScanBlock(nn.Module):
    @nn.compact
    def __call__(self, h, _):
        return jnp.tanh(nn.Dense(32, name="fc")(h)), None


class ScannedStack(nn.Module):
    remat: bool = False

    @nn.compact
    def __call__(self, x):
        block = nn.remat(ScanBlock) if self.remat else ScanBlock
        layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
        return layers(name="layers")(x, None)[0]


@pytest.mark.parametrize("remat", [False, True], ids=["scan", "scan+remat"])
def test_linen_interceptor_inside_scan_and_remat(remat):
    """nn.scan (params stacked on axis 0) and nn.remat: each step's Dense is quantized, bit-identical to doing it
    by hand with fake_quant, and gradients flow."""
    m, x = ScannedStack(remat), jax.random.normal(jax.random.key(1), (8, 32))
    params = m.init(jax.random.key(0), x)

    def apply(p, v):
        with lb.quantized([(".*", "direct_cast:mxint4")]) as report:
            return m.apply(p, v), report

    got = jax.jit(lambda p, v: apply(p, v)[0])(params, x)
    assert apply(params, x)[1].quantized == {"layers/fc": "direct_cast(mxint4)"}
    fc = params["params"]["layers"]["fc"]
    h = x
    for i in range(3):
        q = jnp.dot(lb.fake_quant(h, "mxint4"), lb.fake_quant(fc["kernel"][i], "mxint4", axis=0), precision="highest")
        h = jnp.tanh(q + fc["bias"][i][None, :])
    np.testing.assert_array_equal(np.asarray(got), np.asarray(h))
    grads = jax.jit(jax.grad(lambda p, v: jnp.sum(apply(p, v)[0])))(params, x)["params"]["layers"]["fc"]
    assert grads["kernel"].shape == (3, 32, 32) and bool(jnp.all(jnp.isfinite(grads["kernel"])))
    assert bool(jnp.all(jnp.abs(grads["kernel"]).max(axis=(1, 2)) > 0))  # every step's weights get a gradient


def test_nnx_context_surgery_coverage_equivalence_and_restore():
    m, x = NMLP(nnx.Rngs(0)), data((8, 16))
    with lb.quantized([(r"head", None), (".*", TRAIN8)], model=m) as report:
        y = nnx.jit(lambda m, x: m(x))(m, x)
    assert report.quantized == {"fc1": "train(mxint8)", "fc2": "train(mxint8)"} and report.skipped == ["head"]
    assert m.fc1.dot_general is lax.dot_general  # hooks restored on exit
    h = jax.nn.relu(qdot_general(x, m.fc1.kernel[...], DN, TRAIN8) + m.fc1.bias[None])
    h = jax.nn.relu(qdot_general(h, m.fc2.kernel[...], DN, TRAIN8) + m.fc2.bias[None])
    np.testing.assert_allclose(y, m.head(h), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_nnx_block_coverage_and_training_step_inside_nnx_jit():
    m, x = NEncoder(nnx.Rngs(0)), data((B, T, D))

    reports = []

    @nnx.jit
    def step(m, x, key):
        def loss(m):
            with lb.quantized(BLOCK_RULES + [(".*", None)], key=key, model=m) as rep:
                reports.append(rep)
                return jnp.mean(m(x) ** 2)

        return nnx.value_and_grad(loss)(m)

    val, grads = step(m, x, jax.random.key(1))
    assert reports[0].quantized == {f"layers/0/{k}": c for k, c in BLOCK_QUANTIZED.items()}
    assert sorted(reports[0].skipped) == ["head", "layers/0/up"]
    assert np.isfinite(val) and all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


@pytest.mark.slow
def test_quantize_nnx_permanent_with_keys_from_context():
    m, x = NMLP(nnx.Rngs(0)), data((8, 16))
    y_fp = m(x)
    report = lb.quantize_nnx(m, [(r"head", None), (".*", QDotConfig.train("mxint4", stochastic_grads=True))])
    assert sorted(report.quantized) == ["fc1", "fc2"]
    grad = nnx.jit(lambda m, k: _grads_with_key(m, x, k))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        nnx.grad(lambda m: jnp.sum(m(x)))(m)
    g1, g1b, g2 = grad(m, jax.random.key(1)), grad(m, jax.random.key(1)), grad(m, jax.random.key(2))
    np.testing.assert_array_equal(g1.fc1.kernel[...], g1b.fc1.kernel[...])
    assert not np.array_equal(g1.fc1.kernel[...], g2.fc1.kernel[...])
    assert not np.allclose(m(x), y_fp, atol=1e-3)  # forward now quantized, outside any context


def _grads_with_key(m, x, key):
    with lb.quantized(key=key):
        return nnx.grad(lambda m: jnp.sum(m(x)))(m)


# ------------------------------------------------------------------------------------------------ keys, rules
def test_layer_keys_are_deterministic_and_distinct():
    k = jax.random.key(0)
    kd = jax.random.key_data
    np.testing.assert_array_equal(kd(layer_key(k, "a/b")), kd(layer_key(k, "a/b")))
    assert not np.array_equal(kd(layer_key(k, "a/b")), kd(layer_key(k, "a/c")))
    assert not np.array_equal(kd(layer_key(k, "a/b", 0)), kd(layer_key(k, "a/b", 1)))


@pytest.mark.parametrize(
    "rules,match",
    [
        ([("(unclosed", TRAIN8)], "invalid regex"),
        ([(".*", "train:mxint9")], "unknown format"),
        ([(".*", "fast:mxint8")], "unknown preset"),
        ([(".*", "mxint8")], "rule value must be"),
        ([(".*", 3)], "rule value must be"),
        ([(".*", "capture")], "must give a QDotConfig"),
    ],
)
def test_bad_rules_fail_at_construction(rules, match):
    with pytest.raises(ValueError, match=match):
        with lb.quantized(rules):
            pass


def test_model_argument_must_be_nnx():
    with pytest.raises(TypeError, match="NNX"):
        with lb.quantized([(".*", TRAIN8)], model=MLP()):
            pass


def test_presets_and_first_match_wins():
    rules = parse_rules([("a/.*", ("direct_cast", "nvfp4")), (".*", "train:mxfp8"), (".*", None)])
    assert rules[0].config == QDotConfig.direct_cast("nvfp4") and rules[1].config == QDotConfig.train("mxfp8")
    with pytest.raises(ValueError, match="must give True"):
        with lb.capture([(".*", TRAIN8)]):
            pass


# ------------------------------------------------------------------------------------------------ capture
def test_capture_linen_records_x_w_dy_with_axes_under_jit_grad():
    m, x = MLP(), data((8, 16))
    v = jax.jit(m.init)(jax.random.key(0), x)
    c = data((8, 8), 1)
    grad_fn = jax.jit(jax.grad(lambda p: jnp.sum(m.apply(p, x) * c)))
    with lb.capture([(r"fc2", None), ".*"]) as cap:
        grad_fn(v)
    assert sorted(cap.paths) == ["fc1", "head"] and cap.report.skipped == ["fc2"]
    fc1, head = cap["fc1"], cap["head"]
    np.testing.assert_array_equal(fc1["x"].value, x)
    np.testing.assert_array_equal(fc1["w"].value, v["params"]["fc1"]["kernel"])
    np.testing.assert_allclose(head["dy"].value, c)  # d sum(y * c) / dy
    assert fc1["x"].axes == {"fwd": (1,), "dw": (0,)} and fc1["w"].axes == {"fwd": (0,), "dx": (1,)}
    assert head["dy"].axes == {"dx": (1,), "dw": (0,)}
    assert fc1["x"].matrix("dw").shape == (16, 8) and fc1["w"].matrix("dx").shape == (16, 64)
    n = len(cap.records)
    grad_fn(v)  # the compiled function still calls back, but the closed capture ignores it
    jax.effects_barrier()
    assert len(cap.records) == n == 6


def test_capture_nnx_block_merges_multi_dim_axes():
    m, x = NBlock(nnx.Rngs(0)), data((B, T, D))
    with lb.capture(model=m) as cap:
        nnx.jit(nnx.grad(lambda m: jnp.mean(m(x) ** 2)))(m)
    assert sorted(cap.paths) == ["down", "key", "out", "query", "up", "value"]
    out = cap["out"]
    assert out["x"].axes == {"fwd": (2, 3), "dw": (0, 1)} and out["x"].matrix("fwd").shape == (B * T, D)
    assert out["dy"].matrix("dw").shape == (D, B * T)
    assert cap["value"]["w"].axes == {"fwd": (0,), "dx": (1, 2)}
    assert m.out.dot_general is None and m.up.dot_general is lax.dot_general  # the constructors' defaults

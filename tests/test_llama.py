"""The Llama-style decoder: shapes, causality, GQA = MHA with repeated KV heads, RoPE relative positions, and the
interceptor quantizing every projection but the output head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lowbit_jax as lb
from lowbit_jax.models import llama

CFG = llama.LlamaConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=64)


@pytest.fixture(scope="module")
def params():
    return llama.init_params(CFG, jax.random.key(0))


def apply(cfg, params, x):
    return jax.jit(lambda p, x: llama.Llama(cfg).apply({"params": p}, x))(params, x)


def tokens(shape=(2, 16), seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, shape), jnp.int32)


def test_shapes_and_counts(params):
    logits = apply(CFG, params, tokens())
    assert logits.shape == (2, 16, 256) and logits.dtype == jnp.float32
    attn = 32 * 32 * 2 + 32 * 16 * 2  # q, o: D x D; k, v: D x (K * E) with K = 2, E = 8
    per_layer = attn + 3 * 32 * 64 + 2 * 32
    assert llama.n_params(params, ("embed", "lm_head")) == per_layer + 32
    assert llama.n_params(params) == per_layer + 32 + 2 * 256 * 32


def test_causal(params):
    x = tokens()
    y = apply(CFG, params, x)
    y2 = apply(CFG, params, x.at[:, 9].set((x[:, 9] + 1) % 256))
    np.testing.assert_array_equal(y[:, :9], y2[:, :9])
    assert float(jnp.abs(y[:, 9:] - y2[:, 9:]).max()) > 1e-3


def test_gqa_equals_mha_with_repeated_kv_heads(params):
    mha = llama.LlamaConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=4, ffn_dim=64)
    e = CFG.head_dim

    def repeat(kernel):  # (D, K * E) -> (D, H * E): query head h reads kv head h // (H / K)
        return jnp.repeat(kernel.reshape(32, 2, e), 2, axis=1).reshape(32, 4 * e)

    p = jax.tree.map(lambda a: a, params)
    for i in range(CFG.n_layers):
        attn = dict(p[f"layers_{i}"]["attn"])
        attn["k_proj"] = {"kernel": repeat(attn["k_proj"]["kernel"])}
        attn["v_proj"] = {"kernel": repeat(attn["v_proj"]["kernel"])}
        p[f"layers_{i}"] = {**p[f"layers_{i}"], "attn": attn}
    x = tokens()
    want = apply(CFG, params, x)
    np.testing.assert_allclose(apply(mha, p, x), want, rtol=1e-5, atol=1e-5)


def test_rope_depends_on_relative_position():
    cos, sin = llama.rope_tables(12, 8, 10000.0)
    rng = np.random.default_rng(1)
    q, k = (jnp.asarray(rng.standard_normal((1, 1, 1, 8)), jnp.float32) for _ in range(2))
    at = lambda x, p: llama.apply_rope(jnp.broadcast_to(x, (1, 12, 1, 8)), cos, sin)[0, p, 0]
    dots = [float(jnp.dot(at(q, m), at(k, m - 3))) for m in (3, 5, 11)]
    np.testing.assert_allclose(dots, dots[0], rtol=1e-5)
    np.testing.assert_allclose(at(q, 0), q[0, 0, 0])  # position 0 is not rotated


def test_interceptor_quantizes_all_but_the_head(params):
    x = tokens((2, 33))
    reports = []

    @jax.jit
    def quantized_loss(p, x):
        with lb.quantized(llama.rules(lb.QDotConfig.train("mxint8"))) as report:
            reports.append(report)  # filled while tracing
            return llama.loss_fn(p, CFG, x)

    loss_q, report = quantized_loss(params, x), reports[0]
    assert sorted(report.skipped) == ["lm_head"]
    names = {p.split("/")[-1] for p in report.quantized}
    assert len(report.quantized) == 7 * CFG.n_layers
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    loss = jax.jit(llama.loss_fn, static_argnums=1)(params, CFG, x)
    assert loss_q != loss and abs(float(loss_q - loss)) < 1e-2


def test_bfloat16_compute_dtype(params):
    cfg = llama.LlamaConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=64, dtype="bfloat16")
    y = apply(cfg, params, tokens())
    y32 = apply(CFG, params, tokens())
    assert y.dtype == jnp.float32 and float(jnp.abs(y - y32).max()) < 0.05


def test_bad_shapes():
    with pytest.raises(ValueError, match="divide"):
        llama.LlamaConfig(dim=30, n_heads=4)
    with pytest.raises(ValueError, match="even head"):
        llama.LlamaConfig(dim=12, n_heads=4, n_kv_heads=2)

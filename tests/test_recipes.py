"""Per-GEMM placement in QDotConfig (rotation, stochastic rounding, 2-D tiles per operand) and the recipes built on
it: every GEMM is checked against an oracle assembled from the public quantizer (lb.fake_quant), the public
rotation (lb.hadamard.rotate_with_signs) and a float32 dot, so a quantizer placed on the wrong operand or GEMM
moves a result by whole quantization steps, far beyond the dot's rounding (rtol 1e-5)."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import lowbit_jax as lb
from lowbit_jax import recipes
from lowbit_jax.interceptor import block_rules
from lowbit_jax.models import llama
from lowbit_jax.qdot import QDotConfig, Rotation, qdot_general

HI = lax.Precision.HIGHEST
DN_2D = (((1,), (0,)), ((), ()))  # y[t, f] = sum_d x[t, d] w[d, f]
TOL = dict(rtol=1e-5, atol=1e-5)


def rand(shape, seed, scale=1.0):
    return jnp.asarray((scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32))


def vjp_at(cfg, x, w, dy, key=None):
    """(y, dx, dw) of qdot_general(x, w) under `cfg` at cotangent dy."""

    @jax.jit
    def run(x, w, dy, key):
        y, vjp = jax.vjp(lambda a, b: qdot_general(a, b, DN_2D, cfg, key=key), x, w)
        return (y, *vjp(dy))

    return run(x, w, dy, key)


def mm(a_MxK, b_NxK):
    """a . b^T in float32 at HIGHEST precision."""
    return lax.dot_general(a_MxK, b_NxK, (((1,), (1,)), ((), ())), precision=HI)


def fq(x, fmt, axis=-1, key=None):
    return x if fmt is None else lb.fake_quant(x, fmt, axis, key=key)


def rot(x_MxK, signs, inverse=False):
    return lb.hadamard.rotate_with_signs(x_MxK, signs, inverse=inverse)


def slot_key(key, slot: int):
    """qdot_general's documented sub-key fold_in(key, slot)."""
    return jax.random.fold_in(key, slot)


X, W, DY = rand((64, 64), 0), rand((64, 48), 1), rand((64, 48), 2, scale=1e-2)


# ---------------------------------------------------------------------------------------------- placement
def test_nvidia_nvfp4_places_tiles_rotation_and_sr_as_the_recipe_says():
    cfg = recipes.nvidia_nvfp4().config
    key = jax.random.key(7)
    y, dx, dw = vjp_at(cfg, X, W, DY, key)
    nv, tile = lb.get_format("nvfp4"), lb.get_format("nvfp4_2d")
    signs = jnp.asarray(recipes.TE_WGRAD_SIGNS, jnp.float32)
    w_q = fq(W.T, tile, (-2, -1))  # the forward weight: 16x16 tiles over (out features, in features)
    np.testing.assert_allclose(y, mm(fq(X, nv), w_q), **TOL)
    # dX: SR on dY (slot 3), the weight is the forward one transposed, no rotation
    np.testing.assert_allclose(dx, mm(fq(DY, nv, key=slot_key(key, 3)), w_q.T), **TOL)
    # dW: X^T and dY^T rotated by TE's fixed signs along the token axis, dY^T rounded stochastically (slot 4)
    a = fq(rot(X.T, signs), nv)
    b = fq(rot(DY.T, signs), nv, key=slot_key(key, 4))
    np.testing.assert_allclose(dw, mm(a, b), **TOL)


def test_nvidia_nvfp4_gradients_are_stochastic_and_the_forward_is_not():
    cfg = recipes.nvidia_nvfp4().config
    y1, dx1, dw1 = vjp_at(cfg, X, W, DY, jax.random.key(1))
    y2, dx2, dw2 = vjp_at(cfg, X, W, DY, jax.random.key(2))
    np.testing.assert_array_equal(y1, y2)  # the forward rounds to nearest and its rotation-free
    assert not np.array_equal(dx1, dx2) and not np.array_equal(dw1, dw2)


def test_rotation_of_one_operand_is_undone_before_the_gemm():
    signs = jnp.asarray(np.random.default_rng(3).choice([-1.0, 1.0], 32), jnp.float32)
    cfg = QDotConfig.direct_cast("mxfp4", rot_fwd=Rotation(32, signs=tuple(signs.tolist()), only="w_fwd"))
    y, _, _ = vjp_at(cfg, X, W, DY)
    w_q = rot(fq(rot(W.T, signs), "mxfp4"), signs, inverse=True)  # Q(W R) R^T
    np.testing.assert_allclose(y, mm(fq(X, "mxfp4"), w_q), **TOL)


def test_per_operand_stochastic_rounding_uses_its_own_slot():
    cfg = QDotConfig(x_fwd="mxint4", w_fwd="mxint4", stochastic=("w_fwd",), sr_bits=None)
    key = jax.random.key(5)
    y, _, _ = vjp_at(cfg, X, W, DY, key)
    np.testing.assert_allclose(y, mm(fq(X, "mxint4"), fq(W.T, "mxint4", key=slot_key(key, 6))), **TOL)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        vjp_at(cfg, X, W, DY)


def test_shorthand_rotation_equals_per_gemm_rotations():
    key = jax.random.key(11)
    short = QDotConfig.train("mxfp4", rotation=16, rotate_grads=True)
    long = QDotConfig.train("mxfp4", rot_fwd=16, rot_dx=16, rot_dw=16)
    for got, want in zip(vjp_at(short, X, W, DY, key), vjp_at(long, X, W, DY, key), strict=True):
        np.testing.assert_array_equal(got, want)
    assert short.rotation_of("dx") == long.rot_dx == Rotation(16)


def test_seeded_signs_are_shared_and_keyed_signs_are_per_gemm():
    seeded = lb.qdot.rotation_signs(Rotation(16, signs=3), "fwd", jax.random.key(0))
    np.testing.assert_array_equal(seeded, lb.qdot.rotation_signs(Rotation(16, signs=3), "dw", jax.random.key(9)))
    a = lb.qdot.rotation_signs(Rotation(16), "fwd", jax.random.key(0))
    b = lb.qdot.rotation_signs(Rotation(16), "dw", jax.random.key(0))
    assert not np.array_equal(a, b)


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(rotation=16, rot_dw=16), "not both"),
        (dict(rot_fwd=Rotation(16, only="dy_dw")), "not an operand of the fwd GEMM"),
        (dict(stochastic=("x_bwd",)), "unknown operand"),
        (dict(sr_bits=8), "no operand rounds stochastically"),
        (dict(stochastic=("x_fwd",), sr_bits=25), "1..24"),
        (dict(stochastic=("x_fwd",), sr_bits={"w_fwd": 8}), "do not round stochastically"),
        (dict(eden=("dy_dx",)), "rotated on both operands"),
        (dict(accum_format="bfloat16"), "needs accum_block"),
    ],
)
def test_bad_placements_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QDotConfig.train("nvfp4", **kwargs)


def test_bad_rotations_raise():
    with pytest.raises(ValueError, match="power of two"):
        Rotation(12)
    with pytest.raises(ValueError, match="16 Hadamard signs|Hadamard signs"):
        Rotation(16, signs=(1.0,) * 8)
    with pytest.raises(ValueError, match=r"\+1/-1"):
        Rotation(2, signs=(1.0, 0.5))
    with pytest.raises(ValueError, match="2-D tile"):
        QDotConfig.train("nvfp4_2d", rot_fwd=16)


def test_labels_name_the_placement():
    assert QDotConfig.train("mxint8").label == "train(mxint8)"
    assert QDotConfig.train("mxint8", rot_dw=Rotation(16, signs=1)).label == "train(mxint8)+rot_dw16(seed=1)"
    cfg = QDotConfig.train("mxint8", stochastic=("x_fwd",), stochastic_grads=True, sr_bits={"x_fwd": 4})
    assert cfg.label == "train(mxint8)+sr(x_fwd,dy_dx,dy_dw)[x_fwd:4bit]"


# ---------------------------------------------------------------------------------------------- recipes
def test_block_rules_keep_the_first_and_last_blocks():
    rules = block_rules("skip", 6, first=1, last=2)
    paths = ["layers_0/attn/q_proj", "layers_1/mlp/up_proj", "layers_4/x", "model/layers_5/attn/o_proj", "layers_50/q"]
    kept = [p for p in paths if any(re.fullmatch(r, p) for r, _ in rules)]
    assert kept == ["layers_0/attn/q_proj", "layers_4/x", "model/layers_5/attn/o_proj"]
    with pytest.raises(ValueError, match="exceed"):
        block_rules("skip", 2, first=2, last=1)


def _report(rules, n_layers=3):
    cfg = llama.LlamaConfig(vocab_size=64, dim=32, n_layers=n_layers, n_heads=2, n_kv_heads=1, ffn_dim=64)
    params = llama.init_params(cfg, jax.random.key(0))
    tokens = jnp.zeros((2, 9), jnp.int32)
    with lb.quantized(rules, key=jax.random.key(1)) as report:
        jax.grad(lambda p: llama.loss_fn(p, cfg, tokens))(params)
    return report


def test_recipe_reports_which_layer_got_which_config():
    rules = recipes.paper_mxint8(n_blocks=3, last=1, high_precision="bf16")
    report = _report(rules)
    hp, main = rules.high_precision.label, rules.config.label
    assert report.quantized["layers_2/attn/q_proj"] == hp and report.quantized["lm_head"] == hp
    assert report.quantized["layers_0/mlp/down_proj"] == main and report.unused == []


def test_a_rule_that_decides_no_layer_is_reported():
    report = _report(recipes.paper_mxint8(keep=(recipes.HEAD, "layers_7/.*")))
    assert report.unused == ["layers_7/.*"]


def test_recipes_are_registered_and_documented():
    for name in recipes.list_recipes():
        rules = recipes.get_recipe(name)
        assert isinstance(rules, list) and rules.name == name and rules[-1] == (".*", rules.config)
        assert "arXiv" in rules.source or "TransformerEngine" in rules.source
        assert "keep:" in recipes.RECIPES[name].__doc__
    with pytest.raises(ValueError, match="unknown recipe"):
        recipes.get_recipe("nvfp4")
    with pytest.raises(ValueError, match="n_blocks"):
        recipes.nvidia_nvfp4(last=2)


def test_mxfp8_rceil_hybrid_puts_both_gradients_in_e5m2():
    cfg = recipes.mxfp8_rceil(grads="e5m2").config
    f = {k: v.name for k, v in cfg.formats().items()}
    assert f == dict(x_fwd="mxfp8_e4m3", w_fwd="mxfp8_e4m3", dy_dx="mxfp8_e5m2", w_dx="mxfp8_e4m3",
                     x_dw="mxfp8_e4m3", dy_dw="mxfp8_e5m2")  # fmt: skip
    assert recipes.mxfp8_rceil().config == recipes.paper_mxfp8().config  # the paper's Eq. 9 is RCEIL


def test_accumulator_emulation_runs_in_every_gemm():
    from lowbit_jax import accumulate

    cfg = QDotConfig.train("mxint8", accum_block=8, accum_format="bfloat16")
    y, dx, dw = vjp_at(cfg, X, W, DY)
    spec = accumulate.AccumSpec(8, "bfloat16")
    acc = lambda a, b: accumulate.accumulated_dot(a, b, 0, spec)
    np.testing.assert_array_equal(y, acc(fq(X, "mxint8"), fq(W.T, "mxint8")))
    np.testing.assert_array_equal(dx, acc(fq(DY, "mxint8"), fq(W, "mxint8")))
    np.testing.assert_array_equal(dw, acc(fq(X.T, "mxint8"), fq(DY.T, "mxint8")))
    y32, _, _ = vjp_at(QDotConfig.train("mxint8"), X, W, DY)
    assert not np.array_equal(y, y32)  # bf16 accumulation is visible
    assert cfg.label == "train(mxint8)+acc8_bfloat16"
    with pytest.raises(ValueError, match="leave accum_dtype float32"):
        QDotConfig.train("mxint8", accum_block=8, accum_dtype="bfloat16")


def test_quantize_operand_is_the_gemm_operand():
    cfg = recipes.nvidia_nvfp4().config
    key = jax.random.key(3)
    _, _, dw = vjp_at(cfg, X, W, DY, key)
    signs = jnp.asarray(recipes.TE_WGRAD_SIGNS, jnp.float32)
    a = lb.qdot.quantize_operand(X.T, cfg, "x_dw", key)  # in X's basis: Q(X^T R) R^T
    b = lb.qdot.quantize_operand(DY.T, cfg, "dy_dw", key)
    np.testing.assert_allclose(dw, mm(rot(a, signs), rot(b, signs)), **TOL)  # R^T R = I up to rounding
    np.testing.assert_array_equal(lb.qdot.quantize_operand(W.T, cfg, "w_fwd"), fq(W.T, "nvfp4_2d", (-2, -1)))
    np.testing.assert_array_equal(lb.qdot.quantize_operand(W, cfg, "w_dx"), fq(W.T, "nvfp4_2d", (-2, -1)).T)


def test_nvidia_nvfp4_takes_a_peer_numerics():
    cfg = recipes.nvidia_nvfp4(numerics="te").config
    assert {f.numerics for f in cfg.formats().values()} == {"te"}
    y, _, _ = vjp_at(cfg, X, W, DY, jax.random.key(0))
    te, te_tile = lb.get_format("nvfp4", numerics="te"), lb.get_format("nvfp4_2d", numerics="te")
    np.testing.assert_allclose(y, mm(fq(X, te), fq(W.T, te_tile, (-2, -1))), **TOL)
    with pytest.raises(ValueError, match="numerics"):
        recipes.nvidia_nvfp4(numerics="tensorflow")


def test_sr_bits_reach_the_operand_they_name():
    cfg = QDotConfig(x_fwd="mxint4", w_fwd="mxint4", stochastic=("x_fwd", "w_fwd"), sr_bits={"w_fwd": 2})
    key = jax.random.key(8)
    y, _, _ = vjp_at(cfg, X, W, DY, key)
    w_q = lb.fake_quant(W.T, "mxint4", key=slot_key(key, 6), sr_bits=2)
    np.testing.assert_allclose(y, mm(fq(X, "mxint4", key=slot_key(key, 5)), w_q), **TOL)
    assert cfg.sr_bits_of("w_fwd") == 2 and cfg.sr_bits_of("x_fwd") is None


def test_quartet2_nvfp4_places_ms_eden_on_the_rotated_backward_operands():
    from lowbit_jax import eden

    cfg = recipes.quartet2_nvfp4().config
    key = jax.random.key(4)
    W, DY = rand((64, 64), 1), rand((64, 64), 2, scale=1e-2)  # rotation 32 divides every contracting axis
    y, dx, dw = vjp_at(cfg, X, W, DY, key)
    nv = lb.get_format("nvfp4")
    np.testing.assert_allclose(y, mm(fq(X, nv), fq(W.T, nv)), **TOL)  # the forward: round to nearest, no rotation
    ms = lambda m, slot: eden.ms_eden_fake_quant(m, nv, slot_key(key, slot), group=32)
    s_dx = lb.qdot.rotation_signs(Rotation(32), "dx", key)  # fresh signs per GEMM and per step's key
    s_dw = lb.qdot.rotation_signs(Rotation(32), "dw", key)
    w_q, x_q = fq(W.T, nv).T, fq(X, nv)  # the backward GEMMs re-quantize the forward's Q(W) and Q(X)
    np.testing.assert_allclose(dx, mm(ms(rot(DY, s_dx), 3), ms(rot(w_q, s_dx), 7)), **TOL)
    np.testing.assert_allclose(dw, mm(ms(rot(x_q.T, s_dw), 8), ms(rot(DY.T, s_dw), 4)), **TOL)
    assert not np.array_equal(s_dx, lb.qdot.rotation_signs(Rotation(32), "dx", jax.random.key(5)))


def test_backward_inputs_forward_requantizes_the_forward_operands():
    cfg = QDotConfig(x_fwd="mxfp4", w_fwd="mxint4", w_dx="mxfp8", x_dw="mxint8", backward_inputs="forward")
    x16, w16, dy16 = (v.astype(jnp.bfloat16) for v in (X, W, DY))
    y, dx, dw = vjp_at(cfg, x16, w16, dy16)
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16  # the gradients keep the inputs' dtypes
    f32 = lambda v: v.astype(jnp.float32)
    x_q, w_q = fq(f32(x16), "mxfp4"), fq(f32(w16).T, "mxint4").T
    np.testing.assert_allclose(f32(dx), f32(mm(f32(dy16), fq(w_q, "mxfp8")).astype(jnp.bfloat16)), **TOL)
    np.testing.assert_allclose(f32(dw), f32(mm(fq(x_q.T, "mxint8"), f32(dy16).T).astype(jnp.bfloat16)), **TOL)
    _, dx_orig, _ = vjp_at(dataclasses.replace(cfg, backward_inputs="original"), x16, w16, dy16)
    assert not np.array_equal(f32(dx), f32(dx_orig))
    assert cfg.label.endswith("+bwd_from_fwd")
    with pytest.raises(ValueError, match="forward rotation"):
        QDotConfig.train("mxfp4", rot_fwd=16, backward_inputs="forward")
    with pytest.raises(ValueError, match="backward_inputs"):
        QDotConfig.train("mxfp4", backward_inputs="fwd")

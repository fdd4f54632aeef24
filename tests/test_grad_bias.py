"""Direct gradient-bias statistics: zero for identity formats, the asymmetric INT8 + bf16-scale bias on constructed
data (negative, and gone with symmetric clipping or float32 scale arithmetic)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lowbit_jax as lb
from analysis import grad_bias
from experiments import grad_bias as grad_bias_exp

BF16_INT8 = "int8_channel:block_size=32:scale_dtype=bfloat16:int_range="


def fmt(text):
    return grad_bias_exp.parse_case(text)[0]


def linear_loss(params, x):
    """sum(x @ W) / 2^10: dY is a power of two (quantized exactly), so dW = Q(X)^T dY carries Q(X)'s bias."""
    return jnp.sum(nn.Dense(16, use_bias=False, name="fc").apply({"params": params}, x)) * jnp.float32(2.0**-10)


def constructed(n_batches=32):
    params = {"kernel": jnp.asarray(np.random.default_rng(0).standard_normal((64, 16)), jnp.float32)}
    xs = [jnp.asarray(np.random.default_rng(b + 1).standard_normal((256, 64)), jnp.float32) for b in range(n_batches)]
    exact_fn = grad_bias.grad_fn(linear_loss, [(".*", lb.QDotConfig())])
    return params, xs, [grad_bias.flat_grads(exact_fn(params, x, None)) for x in xs]


def stats_for(config, params, xs, exact):
    q = grad_bias.grad_fn(linear_loss, [(".*", config)])
    return grad_bias.bias_statistics(exact, [[grad_bias.flat_grads(q(params, x, None))] for x in xs])


@pytest.fixture(scope="module")
def setup():
    return constructed()


def test_identity_formats_have_no_bias(setup):
    s = stats_for(lb.QDotConfig.train("fp32"), *setup)
    assert s.relative_bias == 0.0 and s.relative_error == 0.0 and s.mean_signed_error == 0.0 and s.cosine == 1.0


def test_asymmetric_bf16_scale_biases_gradients_down(setup):
    asym = stats_for(lb.QDotConfig.train(fmt(BF16_INT8 + "asymmetric")), *setup)
    sym = stats_for(lb.QDotConfig.train(fmt(BF16_INT8 + "symmetric")), *setup)
    f32 = stats_for(lb.QDotConfig.train(fmt("int8_channel:block_size=32:int_range=asymmetric")), *setup)
    assert asym.mean_signed_error < 0 and asym.mean_signed_error_z < -4
    assert abs(sym.mean_signed_error_z) < 3 and abs(f32.mean_signed_error_z) < 3
    assert asym.cosine > 0.999 and asym.samples == 32


def test_bias_statistics_on_known_errors():
    rng = np.random.default_rng(0)
    exact = [{"w": rng.standard_normal(1000)} for _ in range(16)]
    shifted = [[{"w": e["w"] - 0.01}] for e in exact]
    s = grad_bias.bias_statistics(exact, shifted)
    assert s.relative_bias == pytest.approx(0.01, rel=0.02) and s.mean_signed_error < 0 and s.bias_z > 1e6
    noisy = [[{"w": e["w"] + 0.01 * rng.standard_normal(1000)} for _ in range(4)] for e in exact]
    s = grad_bias.bias_statistics(exact, noisy)
    assert s.relative_error == pytest.approx(0.01, rel=0.05) and s.bias_z == pytest.approx(1.0, abs=0.2)
    assert abs(s.mean_signed_error_z) < 4 and set(s.per_layer) == {"w"}


def test_extra_code_fraction_on_gaussian_blocks():
    x = np.random.default_rng(0).standard_normal((4096, 256)).astype(np.float32)
    asym = grad_bias.operand_stats([x], fmt(BF16_INT8 + "asymmetric"))
    sym = grad_bias.operand_stats([x], fmt(BF16_INT8 + "symmetric"))
    assert 0.02 < asym.extreme_code_fraction < 0.5
    # Same x, same scales: each -128 code is one step s below sym's -127, so asym < sym exactly. Against zero,
    # asym's shift is about 2 standard errors per 256 rows (seeds 0-11 on 256 x 256: z -0.2 to -4.0, sym's z sd
    # 1.1); 4096 rows put it near -7.
    assert asym.signed_error < sym.signed_error
    assert asym.signed_error_z < -4 and abs(sym.signed_error_z) < 3
    for exact in ("mxint8:int_range=asymmetric", "int8_channel:block_size=32:int_range=asymmetric"):
        assert grad_bias.operand_stats([x], fmt(exact)).extra_code_blocks == 0  # float32 arithmetic: never -128
    assert grad_bias.operand_stats([x], fmt(BF16_INT8 + "symmetric")).extra_code_blocks == 0
    assert grad_bias.operand_stats([np.zeros((2, 64), np.float32)], fmt("mxint8")).blocks == 0


def test_ue8m0_exact_ceil_makes_asymmetric_identical():
    x = jnp.asarray(np.random.default_rng(2).standard_normal((64, 512)), jnp.float32)
    a = lb.fake_quant(x, lb.get_format("mxint8", int_range="asymmetric"))
    np.testing.assert_array_equal(a, lb.fake_quant(x, lb.get_format("mxint8")))


def test_operand_signed_error_z_is_calibrated():
    """Symmetric INT8 with float32 scales has no signed bias: over independent Gaussian draws its z-scores should
    scatter like a standard normal (30 draws: sample sd within 0.7-1.4, mean within +-0.6)."""
    rng = np.random.default_rng(3)
    z = [
        grad_bias.operand_stats([rng.standard_normal((64, 256)).astype(np.float32)], fmt("int8_channel:block_size=32"))
        for _ in range(30)
    ]
    z = np.array([s.signed_error_z for s in z])
    assert 0.7 < z.std(ddof=1) < 1.4 and abs(z.mean()) < 0.6
    ident = grad_bias.operand_stats([np.ones((4, 32), np.float32)], fmt("fp32"))
    assert ident.signed_error == ident.signed_error_se == ident.signed_error_z == 0.0


# ---------------------------------------------------------------------------------------------- recipes
def test_forward_only_keeps_the_forward_gemm(setup):
    nv = lb.recipes.nvidia_nvfp4().config
    fwd = grad_bias.forward_only(nv)
    assert fwd.formats() == {**dict.fromkeys(nv.formats()), "x_fwd": nv.x_fwd, "w_fwd": nv.w_fwd}
    assert fwd.rotation_of("dw") is None and not fwd.needs_key and nv.needs_key
    rot = grad_bias.forward_only(lb.QDotConfig.train("mxfp4", rotation=32, rotate_grads=True, stochastic=("x_fwd",)))
    assert rot.rotation_of("fwd") == lb.Rotation(32) and rot.rotation_of("dx") is None and rot.stochastic == ("x_fwd",)
    rules = grad_bias.forward_rules(lb.recipes.nvidia_nvfp4())
    assert [p for p, _ in rules] == [p for p, _ in lb.recipes.nvidia_nvfp4()] and rules[-1][1] == fwd
    # linear_loss's dY does not depend on the forward pass: with an exact backward the gradient is the exact one
    assert stats_for(grad_bias.forward_only(lb.QDotConfig.train("mxint4")), *setup).relative_error == 0.0
    assert stats_for(lb.QDotConfig.train("mxint4"), *setup).relative_error > 0.01


def test_operand_quantizer_matches_the_format_path():
    """A 1-D, round-to-nearest, unrotated operand of a QDotConfig quantizes as lb.fake_quant along the last axis:
    the per-matrix path gives the format path's statistics bit for bit (extra codes counted alike)."""
    rng = np.random.default_rng(4)
    mats = [rng.standard_normal((48, 64)).astype(np.float32) for _ in range(2)]
    for spec in ("nvfp4", BF16_INT8 + "asymmetric"):
        cfg = lb.QDotConfig.train(fmt(spec))
        quantizers = [grad_bias.OperandQuantizer(cfg, "x_fwd"), grad_bias.OperandQuantizer(cfg, "dy_dw")]
        assert grad_bias.operand_stats(mats, quantizers) == grad_bias.operand_stats(mats, fmt(spec))
    sr = lb.QDotConfig.train("nvfp4", stochastic_grads=True)
    assert grad_bias.OperandQuantizer(sr, "dy_dx").count_format is None  # SR codes are not lb.quantize's
    with pytest.raises(ValueError, match="one entry per matrix"):
        grad_bias.operand_stats_groups([mats], [[grad_bias.BlockQuantizer(fmt("nvfp4"))]])


def test_nvfp4_stochastic_rounding_pulls_block_maxima_toward_zero():
    """E[Q(x)] = x for MXFP4 SR (the UE8M0 ceil scale never clips), not for NVFP4: an E4M3 block scale that rounds
    below amax / 6 clips the block maximum at 6, which SR cannot round past (the dy:nvfp4+sr control's residual
    bias). 128 keys: the key-mean's s.e. is about 0.1 % of |x| at the 1024 maxima, the NVFP4 shift about -1 %."""
    x = jnp.asarray(np.random.default_rng(5).standard_normal((64, 256)), jnp.float32)
    keys = jax.random.split(jax.random.key(0), 128)
    for name, lo, hi in (("nvfp4", -0.02, -0.005), ("mxfp4", -0.003, 0.003)):
        f = fmt(name)
        mean = np.mean(np.asarray(jax.vmap(lambda k, f=f: lb.fake_quant(x, f, key=k))(keys), np.float64), axis=0)
        xv = np.asarray(x, np.float64)
        mag = np.abs(xv).reshape(64, -1, f.block_size)
        top = (mag == mag.max(axis=-1, keepdims=True)).reshape(xv.shape)
        shift = np.sum((mean - xv)[top] * np.sign(xv[top])) / np.sum(np.abs(xv[top]))
        assert lo < shift < hi, (name, shift)


TINY2 = dict(grad_bias_exp.TINY, n_layers=2, n_batches=2, sr_keys=2)


@pytest.fixture(scope="module")
def tiny_model():
    from analysis.lm import data as lm_data
    from analysis.lm import run as lm_run
    from lowbit_jax.models import llama

    cfg = grad_bias_exp.Config(cases=("fp32",), **TINY2)
    params = lm_run.replica(lm_run.init_replicas(cfg, (0,)))
    mcfg, data = cfg.model(), lm_data.load_text()
    batches = [lm_data.train_batch(data, 10_000 + b, cfg.batch_size, cfg.seq_len, 0) for b in range(2)]
    loss = lambda p, b: llama.loss_fn(p, mcfg, b)
    exact_fn = grad_bias.grad_fn(loss, llama.rules(lb.QDotConfig()))
    exact = [grad_bias.flat_grads(exact_fn(params, b, None)) for b in batches]
    return cfg, params, mcfg, batches, exact, grad_bias_exp.capture_matrices(params, loss, batches[0])


@pytest.mark.slow
def test_recipe_operand_stats_use_the_recipes_quantizers(tiny_model):
    *_, mats = tiny_model
    mats = [m for m in mats if m.path.endswith(("q_proj", "down_proj"))]  # 2 layers x 2 projections: faster compiles
    key = jax.random.key(7)
    by_kind = lambda ms: {k: [m.matrix for m in ms if m.kind == k] for k in ("x", "w", "dy")}
    # paper_mxint8 is train(mxint8) with the head unquantized: the format path's numbers; last=1 counts layers_0 only
    recipe = grad_bias_exp.recipe_operand_summary(mats, lb.recipes.paper_mxint8(), None)
    assert recipe == grad_bias_exp.operand_summary(by_kind(mats), fmt("mxint8"))
    first = [m for m in mats if m.path.startswith("layers_0/")]
    kept = grad_bias_exp.recipe_operand_summary(mats, lb.recipes.paper_mxint8(n_blocks=2, last=1), None)
    assert 0 < len(first) < len(mats) and kept == grad_bias_exp.operand_summary(by_kind(first), fmt("mxint8"))
    # SR on the two dY operands changes dY's signed error only
    rtn = lb.recipes.RecipeRules("rtn", lb.QDotConfig.train("nvfp4"), [lb.recipes.HEAD], None, "test")
    sr_cfg = lb.QDotConfig.train("nvfp4", stochastic_grads=True)
    sr = grad_bias_exp.recipe_operand_summary(
        mats, lb.recipes.RecipeRules("sr", sr_cfg, [lb.recipes.HEAD], None, ""), key
    )
    rtn = grad_bias_exp.recipe_operand_summary(mats, rtn, key)
    for k in ("x", "w"):
        assert sr["operand_signed_error"][k] == rtn["operand_signed_error"][k]
    assert sr["operand_signed_error"]["dy"] != rtn["operand_signed_error"]["dy"]
    # nvidia_nvfp4's weights are 16x16 nvfp4_2d tiles in both GEMMs (the dX GEMM's the forward ones transposed)
    nv = grad_bias_exp.recipe_operand_summary(mats, lb.recipes.nvidia_nvfp4(), key)
    tile = fmt("nvfp4_2d")
    ws = [m for m in mats if m.kind == "w"]
    tiled = [
        lb.fake_quant(m.matrix, tile, axis=(-2, -1))
        if m.role == "fwd"
        else lb.fake_quant(m.matrix.T, tile, axis=(-2, -1)).T
        for m in ws
    ]
    expect = sum(float(np.sum(np.asarray(q, np.float64) - m.matrix)) for q, m in zip(tiled, ws))
    expect /= sum(float(np.sum(np.abs(m.matrix.astype(np.float64)))) for m in ws)
    assert nv["operand_signed_error"]["w"] == pytest.approx(expect, rel=1e-6, abs=1e-12)
    one_d = grad_bias.operand_stats([m.matrix for m in ws], fmt("nvfp4")).signed_error
    assert nv["operand_signed_error"]["w"] != pytest.approx(one_d, rel=1e-3)


@pytest.mark.slow
def test_recipe_case_runs(tiny_model):
    cfg, params, mcfg, batches, exact, mats = tiny_model
    run = lambda c: grad_bias_exp.run_case(c, params, mcfg, batches, exact, mats, cfg)
    recipe, same = run("paper_mxint8"), run("mxint8")  # the same quantizers through both paths
    assert recipe["format"] == "paper_mxint8" and recipe["label"] == "train(mxint8)" and not recipe["stochastic"]
    assert recipe["scale"] is recipe["block_size"] is recipe["int_range"] is None
    for k in ("relative_bias", "mean_signed_error", "operand_signed_error", "per_layer", "forward", "backward"):
        assert recipe[k] == same[k]
    assert 0 < recipe["forward"]["relative_error"] and 0 < recipe["backward"]["relative_error"]
    control = run("dy:nvfp4+sr")  # forward, X and W exact: the forward share is nothing, dY's error is all
    assert control["forward"]["relative_error"] == 0.0 and control["backward"] == {
        k: v for k, v in control.items() if k in control["backward"]
    }
    assert control["operand_signed_error"]["x"] == control["operand_signed_error"]["w"] == 0.0
    assert control["operand_signed_error"]["dy"] != 0.0 and control["label"] == "dy:nvfp4+sr"
    assert control["stochastic"] and control["samples"] == 4 and 0.9 < control["cosine"] < 1.0  # 2 batches x 2 keys
    assert set(control["operand_signed_error_z"]) == {"x", "w", "dy"}

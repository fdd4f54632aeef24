"""The language-model experiments end to end on their tiny presets (clipping, grad_bias, direct_cast_lm).

Each runs as `python -m experiments.<name>` in a subprocess with LLVM optimisation off
(--xla_backend_optimization_level=0): the tiny runs are dominated by XLA compilation, which this makes about 40 %
cheaper without changing results.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from analysis.lm import run as lm_run
from analysis.lm import train as lm_train
from experiments import grad_bias

BF16_INT8 = "int8_channel:block_size=32:scale_dtype=bfloat16:int_range="
BF16_ASYM, BF16_SYM = BF16_INT8 + "asymmetric", BF16_INT8 + "symmetric"


def run_module(name: str, *args: str) -> str:
    env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-m", f"experiments.{name}", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_clipping_tiny(tmp_path):
    stdout = run_module("clipping", "--preset", "tiny", "--baseline", "false", "--out", str(tmp_path))
    saved = json.loads((tmp_path / "clipping.json").read_text())
    assert [(r["scale"], r["int_range"], r["block"]) for r in saved["rows"]] == [
        ("bf16", "asymmetric", "32"),
        ("bf16", "symmetric", "32"),
    ]
    assert all(len(r["val_loss"]) == 2 and np.isfinite(r["mean"]) for r in saved["rows"])
    (p,) = saved["paired"]
    d = np.subtract(saved["rows"][0]["val_loss"], saved["rows"][1]["val_loss"])
    np.testing.assert_allclose(p["asym_minus_sym"], d)
    assert isinstance(p["resolved"], bool) and saved["baseline"] is None
    assert "asym - sym" in stdout and (tmp_path / "clipping.png").stat().st_size > 0


def test_clipping_precisions():
    from experiments import clipping

    fmt = lm_train.parse_precision(clipping.precision("ue8m0", "channel", "asymmetric"))
    assert (fmt.scale, fmt.block_size, fmt.scale_dtype, fmt.elem.min) == ("ue8m0", "channel", "bfloat16", -128.0)
    fmt = lm_train.parse_precision(clipping.precision("bf16", "64", "symmetric"))
    assert (fmt.scale, fmt.block_size, fmt.scale_dtype, fmt.elem.min) == ("fp32", 64, "bfloat16", -127.0)


@pytest.mark.slow
def test_grad_bias_tiny(tmp_path):
    cases = f"fp32,{BF16_ASYM},{BF16_SYM},mxfp4+sr"
    stdout = run_module("grad_bias", "--tiny", "--cases", cases, "--out", str(tmp_path))
    saved = json.loads((tmp_path / "grad_bias.json").read_text())
    keys = {"format", "int_range", "scale_dtype", "stochastic", "relative_bias", "cosine", "extreme_code_fraction"}
    assert len(saved["cases"]) == 4 and all(keys <= set(c) for c in saved["cases"])
    ident, asym, sym, sr = saved["cases"]
    assert ident["relative_bias"] == 0.0 and ident["int_range"] is None and ident["format"] == "fp32"
    assert asym["int_range"] == "asymmetric" and asym["scale_dtype"] == "bfloat16" and asym["extreme_code_fraction"] > 0
    assert sym["extreme_code_fraction"] == 0.0
    # Both see the same captured operands and differ only where asym uses -128: each such code is one step s
    # below sym's -127. The sign of either error alone is noise at this size (it flips with --seed).
    assert all(asym["operand_signed_error"][k] <= sym["operand_signed_error"][k] for k in ("x", "w", "dy"))
    assert asym["operand_signed_error"]["x"] < sym["operand_signed_error"]["x"]
    assert set(asym["operand_signed_error_z"]) == {"x", "w", "dy"}
    assert sr["stochastic"] is True and sr["extreme_code_fraction"] == 0.0 and 0.9 < sr["cosine"] < 1.0
    assert set(saved["algorithm1"]) == {"bfloat16", "float16", "float32"}
    assert (tmp_path / "grad_bias.png").stat().st_size > 0 and "rel.bias" in stdout


def test_grad_bias_cases_parse():
    assert grad_bias.parse_case("mxfp8+sr")[1] is True
    assert all(grad_bias.parse_case(c) for c in grad_bias.DEFAULT_CASES)
    with pytest.raises(ValueError, match="identity control"):
        grad_bias.parse_case("none")


@pytest.mark.slow
def test_direct_cast_lm_tiny(tmp_path):
    cfg = lm_train.TrainConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64)
    params = lm_run.replica(lm_run.init_replicas(cfg, (0,)))
    params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 50  # a peaked output distribution
    lm_run.save_checkpoint(tmp_path / "ckpt", params, cfg.model(), {"precision": "none", "seq_len": 32})
    stdout = run_module(
        "direct_cast_lm", "--preset", "tiny", "--checkpoints", str(tmp_path / "ckpt"), "--out", str(tmp_path)
    )
    saved = json.loads((tmp_path / "direct_cast_lm.json").read_text())
    rows = {(r["format"], r["rotation"]): r for r in saved["results"]}
    assert set(rows) == {("mxint8", None), ("mxint8", 32), ("mxfp8", None), ("mxfp8", 32)}
    for r in rows.values():
        assert r["kl_per_token"] == pytest.approx(25 * r["kl_paper"]) and r["kl_paper"] > 0 and r["ppl"] > 1
    assert rows[("mxint8", None)]["kl_paper"] < rows[("mxfp8", None)]["kl_paper"]  # 8-bit INT keeps more signal
    wins = saved["wins"]
    assert [(w["pair"], w["rotation"]) for w in wins] == [("MXINT8/MXFP8", False), ("MXINT8/MXFP8", True)]
    assert all(w["int_wins"] + w["fp_wins"] <= 4 for w in wins)
    assert "INT wins" in stdout and (tmp_path / "direct_cast_lm.png").stat().st_size > 0

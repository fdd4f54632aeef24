"""The paper's studies on a local Hugging Face checkpoint: tensor_stats --model and direct_cast --model on a tiny
random Llama written by transformers (analysis.checkpoint.make_tiny_checkpoint), and their user errors."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import lowbit_jax as lb
from analysis import checkpoint
from experiments import adaptive, direct_cast, tensor_stats
from lowbit_jax.models import hf

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return checkpoint.make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_llama"), "llama")


@pytest.mark.parametrize("chunk", [checkpoint.CHUNK, 5], ids=["one-block", "blocks-of-5"])
def test_layer_by_layer_capture_equals_one_pass_over_all_layers(folder, chunk, monkeypatch):
    """Each yield holds exactly one decoder layer's X, W and dY, equal to a capture of the whole model at once.
    The two are different XLA programs (one differentiates every parameter and stores every activation, the other
    one layer's parameters with the others rematerialised, attention and loss in CHUNK blocks), whose fusions round
    reductions differently: W is
    identical, X and dY agree to 2e-6 of the tensor's largest magnitude (measured: at most 2.6e-7, 4 ulp of it)."""
    monkeypatch.setattr(checkpoint, "CHUNK", chunk)  # 5: attention and loss blocks of 5 over 16 tokens
    lm = hf.load_pretrained(folder)
    windows = checkpoint.text_windows(lm, None, 16, 2)
    per_layer = dict(checkpoint.capture_layers(lm, windows, [0, 1]))
    with lb.capture(".*_proj") as cap:
        jax.jit(jax.grad(lambda p: checkpoint.next_token_loss(lm, p, jax.numpy.asarray(windows))))(lm.params)
        jax.effects_barrier()
    whole = {(r.path, r.name): r.value for r in cap.records}
    for i, records in per_layer.items():
        assert {r.path for r in records} == set(checkpoint.layer_paths(lm, i))
        assert {r.name for r in records} == {"x", "w", "dy"}
        for r in records:
            want = whole[(r.path, r.name)]
            if r.name == "w":
                np.testing.assert_array_equal(r.value, want)
            else:
                np.testing.assert_allclose(r.value, want, rtol=0, atol=2e-6 * np.abs(want).max())


@pytest.mark.slow
def test_tensor_stats_on_a_checkpoint(folder, tmp_path):
    argv = ["--model", str(folder), "--batches", "2", "--sequences", "2", "--seq-len", "16", "--rotation", "16"]
    argv += ["--pairs", "mxint8/mxfp8,nvint4/nvfp4", "--blocks=-1,32,16", "--out", str(tmp_path)]
    result = tensor_stats.main(argv)
    layers, projections, batches = 2, len(hf.PROJECTIONS), 2
    assert result["model"] == {
        "name": folder.name,
        "family": "llama",
        "layers": layers,
        "dtype": "float32",
        "text": "pydoc_data",
    }
    assert result["n_tokens"] == 2 * 2 * 16
    assert result["n_tensors"] == dict.fromkeys(lb.qdot_config.OPERANDS, layers * projections * batches)
    saved = json.loads((tmp_path / "tensor_stats.json").read_text())
    assert set(saved["pairs"]["none"]) == {"MXINT8/MXFP8", "NVINT4/NVFP4"}
    assert 1 < saved["crest"]["none"]["all"]["32"]["median"] < np.sqrt(32)
    assert (tmp_path / "qsnr_vs_crest.png").stat().st_size > 0


@pytest.mark.slow
def test_direct_cast_on_a_checkpoint(folder, tmp_path):
    argv = ["--model", str(folder), "--passages", "4", "--batch", "2", "--seq-len", "16", "--adaptive", ""]
    argv += ["--pairs", "mxint8/mxfp8,mxint4/mxfp4", "--out", str(tmp_path)]
    result = direct_cast.main(argv)
    rows = {(r["format"], r["rotation"]): r for r in result["results"]}
    assert set(rows) == {(f, h) for f in ("mxint8", "mxfp8_e4m3", "mxint4", "mxfp4") for h in (None, 32)}
    # 8-bit formats drift far less than 4-bit ones, and every run is finite
    assert rows[("mxint8", None)]["kl_paper"] < rows[("mxint4", None)]["kl_paper"]
    assert all(np.isfinite(r["kl_paper"]) and r["kl_paper"] > 0 and r["ppl"] > 1 for r in rows.values())
    assert result["n_tokens"] == 4 * 16
    assert set(result["wins"]["hadamard"]) == {"MXINT8/MXFP8", "MXINT4/MXFP4"}
    assert (tmp_path / "direct_cast.png").stat().st_size > 0


@pytest.mark.slow
def test_adaptive_on_a_checkpoint(folder, tmp_path):
    """The per-block choice study on the checkpoint's operands; --capture narrows it to one projection."""
    argv = ["--model", str(folder), "--distributions", "gaussian", "--rows", "8", "--seq-len", "32"]
    argv += ["--sequences", "2", "--formats", "if4", "--capture", "layers_1/mlp/down_proj", "--out", str(tmp_path)]
    result = adaptive.main(argv)
    assert result["n_tensors"] == dict.fromkeys(lb.qdot_config.OPERANDS, 1)
    summary = result["real"]["none"]["all"]["if4"]
    assert summary["n_tensors"] == 6 and 0 < summary["frac_int"] < 1


def test_direct_cast_reference_is_the_unquantized_model(folder):
    """With identity formats (bf16 rounding of float32 weights and inputs is not the identity, fp32 is) the KL
    to the reference is exactly zero and the perplexity that of the float model."""
    lm = hf.load_pretrained(folder)
    windows = checkpoint.text_windows(lm, None, 16, 2)
    rows, float_ppl, _ = checkpoint.direct_cast(lm, windows, [("fp32", lb.get_format("fp32"), None)], chunk=2)
    assert rows[0]["kl_full"] == 0.0 and rows[0]["ppl"] == pytest.approx(float_ppl, rel=1e-6)


@pytest.mark.parametrize("module", [tensor_stats, direct_cast, adaptive], ids=lambda m: m.__name__.split(".")[-1])
def test_user_errors_are_one_line(module, folder, tmp_path, capsys):
    name = module.__name__
    cases = [
        (["--model", str(tmp_path / "none")], "no such folder"),
        (["--text", str(folder / "config.json")], "--text needs --model"),
        (["--model", str(folder), "--text", str(tmp_path / "none.txt")], "no such file"),
        (["--model", str(folder), "--devices", "64"], "64 devices asked for"),
    ]
    bad = tmp_path / "gpt2"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    cases.append((["--model", str(bad)], "model_type 'gpt2' is not supported"))
    short = tmp_path / "short.txt"
    short.write_text("too short")
    cases.append((["--model", str(folder), "--text", str(short)], "tokens;"))
    for argv, message in cases:
        with pytest.raises(SystemExit) as stop:
            module.main(argv + ["--out", str(tmp_path / "out")])
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"python -m {name}: error: ") and message in err, err


@pytest.mark.slow
def test_tensor_parallel_on_8_devices_matches_one(folder):
    """tests/hf_sharding_check.py in a process with 8 virtual CPU devices (XLA_FLAGS must precede JAX's start)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    script = pathlib.Path(__file__).with_name("hf_sharding_check.py")
    argv = [sys.executable, str(script), str(folder)]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stdout + out.stderr[-3000:]

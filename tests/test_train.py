"""Training plumbing: precision strings, schedule, data split and order, checkpoints, and experiments.train end to
end on 8 virtual CPU devices (data parallel) against one device, in a subprocess."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from analysis.lm import data as lm_data
from analysis.lm import run as lm_run
from analysis.lm import train as lm_train
from experiments import train
from lowbit_jax.models import llama


def test_parse_precision():
    assert lm_train.parse_precision("none") is None
    fmt = lm_train.parse_precision("mxint8")
    assert (fmt.block_size, fmt.scale, fmt.scale_rounding, fmt.elem.int_range) == (32, "ue8m0", "ceil", "symmetric")
    fmt = lm_train.parse_precision("int8_channel:block_size=64:scale_dtype=bfloat16:int_range=asymmetric")
    assert (fmt.block_size, fmt.scale_dtype, fmt.elem.min) == (64, "bfloat16", -128.0)
    assert lm_train.parse_precision("mxint8:block_size=channel").block_size == "channel"
    assert lm_train.slug("mxint8:block_size=64") == "mxint8_block_size-64"
    cfg = lm_train.qdot_config("mxfp8", stochastic_grads=True)
    assert set(cfg.formats().values()) == {lm_train.parse_precision("mxfp8")} and cfg.stochastic_grads
    for bad, msg in [("none:block_size=8", "no overrides"), ("mxint8:block_size", "key=value"), ("mxint9", "unknown")]:
        with pytest.raises(ValueError, match=msg):
            lm_train.parse_precision(bad)


def test_schedule_warmup_then_cosine_to_a_tenth():
    cfg = lm_train.TrainConfig(steps=100, warmup_steps=10, lr=1e-3)
    s = lm_train.lr_schedule(cfg)
    assert float(s(0)) == 0.0 and float(s(10)) == pytest.approx(1e-3)
    assert float(s(100)) == pytest.approx(1e-4) and float(s(55)) == pytest.approx(5.5e-4, rel=1e-3)


def test_data_split_and_order():
    data = lm_data.load_text()
    total = data.train.size + data.val.size
    assert data.val.size == pytest.approx(0.1 * total, abs=1) and total > 400_000
    assert data.train.max() < lm_data.VOCAB_SIZE and data.describe()["sha256"] == data.sha256
    a, b = lm_data.train_batch(data, 3, 4, 16), lm_data.train_batch(data, 3, 4, 16)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 17) and not np.array_equal(a, lm_data.train_batch(data, 4, 4, 16))
    w = lm_data.val_windows(data, 64, 5)
    np.testing.assert_array_equal(w[1, :3], data.val[64:67])  # non-overlapping, from the held-out split


def test_checkpoint_round_trip(tmp_path):
    cfg = lm_train.TrainConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64)
    params = lm_run.replica(lm_run.init_replicas(cfg, (3,)))
    lm_run.save_checkpoint(tmp_path, params, cfg.model(), {"precision": "none", "seq_len": 32})
    back, mcfg, meta = lm_run.load_checkpoint(tmp_path)
    assert mcfg == cfg.model() and meta["seq_len"] == 32
    assert llama.n_params(back) == llama.n_params(params)
    np.testing.assert_array_equal(
        back["layers_0"]["mlp"]["up_proj"]["kernel"], params["layers_0"]["mlp"]["up_proj"]["kernel"]
    )
    with pytest.raises(FileNotFoundError, match="train one first"):
        lm_run.load_checkpoint(tmp_path / "missing")


def test_bad_flags(capsys):
    with pytest.raises(SystemExit):
        train.main(["--batch-size", "6", "--devices", "4"])
    assert "multiple of --devices" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--precision", "mxint8:int_range=sideways"])
    assert "int_range" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_training_on_one_and_eight_devices(tmp_path):
    flags = (
        "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"  # compile-bound: skip LLVM opt
    )
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    script = pathlib.Path(__file__).with_name("train_dp_check.py")
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stdout[-3000:] + out.stderr[-3000:]
    saved = json.loads((tmp_path / "one" / "train.json").read_text())
    assert set(saved["runs"]) == {"none", "mxint8"} and saved["baseline_dtype"] == "float32"
    run = saved["runs"]["mxint8"]
    assert {"final_val_loss", "final_val_ppl", "final_train_loss_ema", "tokens_per_s", "curve"} <= set(run)
    assert run["final_val_ppl"] == pytest.approx(np.exp(run["final_val_loss"]))
    assert saved["runs"]["none"]["final_val_loss"] < np.log(256)  # it learned something in 12 steps
    rows = [json.loads(x) for x in (tmp_path / "one" / "mxint8" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["type"] == "eval"] == [6, 12]
    assert (tmp_path / "one" / "loss_curves.png").stat().st_size > 0
    params, mcfg, meta = lm_run.load_checkpoint(tmp_path / "one" / "none")
    assert meta["precision"] == "none" and mcfg.dim == 32

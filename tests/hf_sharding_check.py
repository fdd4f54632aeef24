"""load_pretrained on a (model=8) mesh of virtual CPU devices == one device (run by tests/test_hf_studies.py).

Needs XLA_FLAGS=--xla_force_host_platform_device_count=8 set before JAX starts, hence a separate process. Argument:
a checkpoint folder (analysis.checkpoint.make_tiny_checkpoint). Row-parallel o/down projections sum partial
products across devices, in another order than one device does: unquantized logits agree to float32 rounding
(2e-5 absolute on logits of magnitude ~1), and the direct-cast operands X and W agree to the same tolerance.
"""

import sys
import tempfile

import jax
import numpy as np

import lowbit_jax as lb
from analysis import checkpoint
from experiments import direct_cast
from lowbit_jax.models import hf


def main(folder: str) -> None:
    assert jax.device_count() == 8, jax.devices()
    mesh = hf.tensor_parallel_mesh(8)
    one, sharded = hf.load_pretrained(folder), hf.load_pretrained(folder, mesh=mesh)
    kernel = sharded.params["layers_0"]["mlp"]["up_proj"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "model"), kernel.sharding
    assert kernel.addressable_shards[0].data.shape == (kernel.shape[0], kernel.shape[1] // 8)
    windows = checkpoint.text_windows(one, None, 16, 4)
    tokens = windows[:, :-1]
    np.testing.assert_allclose(np.asarray(sharded.logits(tokens)), np.asarray(one.logits(tokens)), rtol=0, atol=2e-5)
    rules = checkpoint.lm_rules(lb.QDotConfig.direct_cast("mxint8"))
    with lb.quantized(rules) as report:
        q_sharded = np.asarray(sharded.logits(tokens))
    with lb.quantized(rules):
        q_one = np.asarray(one.logits(tokens))
    assert len(report.quantized) == one.config.n_layers * len(hf.PROJECTIONS), report.quantized
    assert np.abs(q_sharded - q_one).max() < 0.05 * np.abs(q_one).max(), np.abs(q_sharded - q_one).max()
    (_, rec_one), *_ = checkpoint.capture_layers(one, windows, [1])
    (_, rec_sharded), *_ = checkpoint.capture_layers(sharded, windows, [1])
    by_name = lambda records: sorted(records, key=lambda r: (r.path, r.name))  # arrival order varies
    for a, b in zip(by_name(rec_one), by_name(rec_sharded), strict=True):
        assert (a.path, a.name) == (b.path, b.name)
        np.testing.assert_allclose(b.value, a.value, rtol=0, atol=2e-5 * max(1.0, float(np.abs(a.value).max())))
    with tempfile.TemporaryDirectory() as out:  # the CLI path: --devices 8
        argv = ["--model", folder, "--devices", "8", "--passages", "2", "--batch", "2", "--seq-len", "16"]
        argv += ["--pairs", "mxint8/mxfp8", "--adaptive", "", "--rotate", "false", "--out", out]
        rows = direct_cast.main(argv)["results"]
        assert [r["format"] for r in rows] == ["mxint8", "mxfp8_e4m3"], rows
    print("OK")


if __name__ == "__main__":
    main(sys.argv[1])

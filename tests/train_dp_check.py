"""experiments.train on 8 virtual CPU devices (data parallel) matches one device (run by tests/test_train.py).

Needs XLA_FLAGS=--xla_force_host_platform_device_count=8 before JAX starts, hence a separate process.
Usage: python tests/train_dp_check.py OUT_DIR; writes OUT_DIR/one (none + mxint8, one device) and OUT_DIR/eight
(mxint8, 8 devices), then compares the mxint8 losses and final parameters.
"""

import json
import sys
from pathlib import Path

import jax
import numpy as np

from analysis.lm import run as lm_run
from experiments import train


def losses(folder: Path) -> np.ndarray:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return np.array(
        [r["loss"] for r in rows if r["type"] == "train"] + [r["val_loss"] for r in rows if r["type"] == "eval"]
    )


def main(out: Path):
    assert jax.device_count() == 8, jax.devices()
    train.main(["--preset", "tiny", "--precision", "none,mxint8", "--devices", "1", "--out", str(out / "one")])
    train.main(["--preset", "tiny", "--precision", "mxint8", "--devices", "8", "--out", str(out / "eight")])
    a, b = losses(out / "one" / "mxint8"), losses(out / "eight" / "mxint8")
    assert a.shape == b.shape and np.allclose(a, b, rtol=2e-4, atol=0), np.abs(a - b).max()
    pa, _, _ = lm_run.load_checkpoint(out / "one" / "mxint8")
    pb, _, _ = lm_run.load_checkpoint(out / "eight" / "mxint8")
    err = max(
        float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb))
    )
    assert err < 1e-3, err
    print(f"max loss difference {np.abs(a - b).max():.3g}, max parameter difference {err:.3g}")
    print("OK")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

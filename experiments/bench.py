"""Fake-quant throughput of every named format against a device copy measured in the same run.

    python -m experiments.bench                      # 4096x4096 float32 on the CPU, about 30 s
    python -m experiments.bench --device gpu         # 8192x8192 float32 and bfloat16 on a GPU
    python -m experiments.bench --formats mxfp4,nvfp4 --size 2048 --dtypes float32,bfloat16

Each row times `jit(fake_quant)` (median of --repeats runs after a warm-up) and reports GB/s as
(bytes read + bytes written) / time, and the ratio quant_time / copy_time against `jit(jnp.copy)` on the same
array in the same run. Targets on the 2-core CPU (issue 2): ratio <= 1.6 for MX formats, <= 2.0 for NV
formats (they read the tensor twice: tensor amax, then blocks).

Output (--out, default results/bench/): bench.json = {"machine": str, "rows": [{"format", "impl", "dtype",
"size", "ms", "gbps", "ratio_to_copy"}]}, bench.csv with the same rows.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time

import jax
import jax.numpy as jnp

import lowbit_jax as lb
from experiments import common


@dataclasses.dataclass(frozen=True)
class Config:
    formats: tuple[str, ...] = tuple(f for f in lb.list_formats() if f not in ("bf16", "fp32"))
    dtypes: tuple[str, ...] = ("float32",)
    size: int = 4096
    repeats: int = 15
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self):
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"--device must be cpu or gpu, got {self.device!r}")
        if self.size <= 0 or self.repeats <= 0:
            raise ValueError("--size and --repeats must be positive")
        for name in self.formats:
            lb.get_format(name)
        for d in self.dtypes:
            if d not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"--dtypes takes float32, bfloat16, float16; got {d!r}")


PRESETS = {
    "tiny": Config(formats=("mxfp8", "mxint4", "nvfp4"), size=256, repeats=2),
    "gpu": Config(dtypes=("float32", "bfloat16"), size=8192, device="gpu", repeats=30),
}


def median_seconds(fn, x, repeats: int) -> float:
    """Median wall time of fn(x) over `repeats` runs, after one warm-up (compile) run."""
    jax.block_until_ready(fn(x))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(x))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_rows(cfg: Config) -> list[dict]:
    """One row per (dtype, format) plus the copy baseline per dtype."""
    device = jax.devices(cfg.device)[0]
    rows = []
    copy = jax.jit(jnp.copy)
    jobs = [(d, f) for d in cfg.dtypes for f in ("copy", *cfg.formats)]
    for dtype, name in common.progress(jobs, desc="bench", unit="case"):
        key = jax.random.key(cfg.seed)
        x = jax.device_put(jax.random.normal(key, (cfg.size, cfg.size), jnp.float32).astype(dtype), device)
        fn = copy if name == "copy" else jax.jit(lambda v, n=name: lb.fake_quant(v, n))
        seconds = median_seconds(fn, x, cfg.repeats)
        if name == "copy":
            copy_seconds = seconds
        rows.append(
            {
                "format": name,
                "impl": "xla",
                "dtype": dtype,
                "size": cfg.size,
                "ms": seconds * 1e3,
                "gbps": 2 * x.nbytes / seconds / 1e9,
                "ratio_to_copy": seconds / copy_seconds,
            }
        )
    return rows


def main(argv=None) -> dict:
    cfg, out = common.parse_config(Config, argv, __doc__, PRESETS)
    if cfg.device == "gpu" and not any(d.platform == "gpu" for d in jax.devices()):
        sys.exit("--device gpu: no GPU is visible to JAX on this machine")
    rows = bench_rows(cfg)
    result = {"machine": common.machine_description(), "config": cfg, "rows": rows}
    folder = common.output_dir("bench", out)
    common.write_json(folder / "bench.json", result)
    common.write_csv(folder / "bench.csv", rows)
    print(f"\n{result['machine']}\n")
    table = [(r["format"], r["impl"], r["dtype"], r["ms"], r["gbps"], r["ratio_to_copy"]) for r in rows]
    print(common.format_table(["format", "impl", "dtype", "ms", "GB/s", "ratio"], table, ".2f"))
    print(f"\nwrote {folder}/bench.json and bench.csv")
    return result


if __name__ == "__main__":
    main()

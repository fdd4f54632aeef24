"""Fake-quant throughput of every named format against a device copy measured in the same run.

    python -m experiments.bench                      # 4096x4096 float32 on the CPU, about 30 s
    python -m experiments.bench --formats mxfp4,nvfp4 --size 2048 --dtypes float32,bfloat16
    python -m experiments.bench --preset gpu         # GPU: 8192x8192 float32 and bfloat16, Pallas vs XLA vs copy

Each row times `jit(fake_quant)` (median over --repeats rounds of one batch of --batch back-to-back calls, after
a warm-up; the GPU preset queues 10 calls per batch so that dispatch overlaps the device work; each round times
every case of a dtype in turn, and a ratio is the median over rounds of the ratio within a round) and reports GB/s as
(bytes read + bytes written) / time, and the ratios of its time to two baselines timed on the same array in the
same run: `jit(jnp.copy)` and `naive`, the minimal single-rule MXINT8 in plain jnp (analysis.timing.naive_mxint8:
block amax, a power-of-two scale from exponent bits, round, clip, rescale; a yardstick that is not bit-exact for
NaN, Inf or subnormal blocks). Targets on the 2-core CPU: time / copy <= 1.6 for MX formats, <= 2.0 for NV formats
(they read the tensor twice: tensor amax, then blocks); time / naive <= 1.15 for MX, <= 1.35 for NV, <= 1.5 for
per-channel formats (docs/benchmarks.md). --impls: xla (the core), pallas (the kernel on
its default GPU backend, Triton); off a GPU the Pallas kernels only run interpreted
(slow: use a small --size). GPU goal (docs/benchmarks.md): Pallas >= 80 % of copy GB/s and faster than XLA.

Output (--out, default results/bench/): bench.json = {"machine": str, "rows": [{"format", "impl", "dtype",
"size", "ms", "gbps", "ratio_to_copy", "ratio_to_naive", "error"}]} (the baselines are the rows of format "copy"
and "naive"), bench.csv with the same rows; a row whose kernel failed to compile has NaN timings (null in JSON) and
the error's first line. bench.png: GB/s per format and implementation, one panel per dtype, the device copy's GB/s
dashed and the naive MXINT8's dotted.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

import lowbit_jax as lb
from analysis import bench_plots, plotting
from analysis.timing import bench_input, gbps, interleaved_seconds, naive_mxint8, quant_fn
from experiments import common

IMPLS = ("xla", "pallas")  # the core; the Pallas kernel on its default backend (Triton on a GPU)
BASELINES = {"copy": jax.jit(jnp.copy), "naive": jax.jit(naive_mxint8)}  # timed first, on the same array


@dataclasses.dataclass(frozen=True)
class Config:
    formats: tuple[str, ...] = tuple(f for f in lb.list_formats() if f not in ("bf16", "fp32"))  # format specs
    dtypes: tuple[str, ...] = ("float32",)  # input dtypes: float32, bfloat16, float16
    impls: tuple[str, ...] = ("xla",)  # implementations: xla (the core), pallas (the kernel)
    size: int = 4096  # the input is size x size
    repeats: int = 15  # timed batches; the median is reported
    batch: int = 1  # calls queued back to back per timed batch
    device: str = "cpu"  # cpu or gpu
    seed: int = 0  # random seed of the input

    def __post_init__(self):
        object.__setattr__(self, "formats", common.lower_all(self.formats))  # row names as list_formats()
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"--device must be cpu or gpu, got {self.device!r}")
        if min(self.size, self.repeats, self.batch) <= 0:
            raise ValueError("--size, --repeats and --batch must be positive")
        for name in self.formats:
            lb.get_format(name)
        for d in self.dtypes:
            if d not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"--dtypes takes float32, bfloat16, float16; got {d!r}")
        for impl in self.impls:
            if impl not in IMPLS:
                raise ValueError(f"--impls takes {', '.join(IMPLS)}; got {impl!r}")


PRESETS = {
    "tiny": Config(formats=("mxfp8", "mxint4", "nvfp4"), size=256, repeats=2),
    "gpu": Config(
        dtypes=("float32", "bfloat16"), impls=("xla", "pallas"), size=8192, device="gpu", repeats=15, batch=10
    ),
}


def bench_rows(cfg: Config) -> list[dict]:
    """One row per (dtype, format, impl) after the two baselines per dtype (copy, then naive)."""
    device = jax.devices(cfg.device)[0]
    rows = []
    for dtype in cfg.dtypes:  # one input per dtype, shared by its cases, timed in interleaved rounds
        x = bench_input(cfg.size, dtype, cfg.seed, device)
        jobs = [(b, b) for b in BASELINES] + [(f, i) for f in cfg.formats for i in cfg.impls]
        cases = [(BASELINES[name] if impl == name else quant_fn(name, impl), x) for name, impl in jobs]
        timed = interleaved_seconds(cases, cfg.repeats, cfg.batch)
        base = {b: np.asarray(timed[k][0]) for k, b in enumerate(BASELINES)}
        for (name, impl), (times, error) in zip(jobs, timed, strict=True):
            seconds = statistics.median(times) if times else float("nan")
            row = {"format": name, "impl": impl, "dtype": dtype, "size": cfg.size, "ms": seconds * 1e3}
            row |= {"gbps": gbps(x, seconds), "error": error}
            for b, b_times in base.items():  # the median over rounds of the ratio within a round
                ok = times and b_times.size
                row[f"ratio_to_{b}"] = float(np.median(np.asarray(times) / b_times)) if ok else float("nan")
            rows.append(row)
            if cfg.device == "gpu":  # printed as each dtype ends: a timeout guard keeps the dtypes already done
                print(f"{dtype} {name} {impl}: {row['gbps']:.1f} GB/s {error}", flush=True)
    return rows


def comparison(rows: list[dict]) -> tuple[list[str], list[tuple]]:
    """Per (dtype, format): GB/s of copy and of each impl, and each Pallas impl's % of copy and speed-up over XLA."""
    by = {(r["dtype"], r["format"], r["impl"]): r["gbps"] for r in rows}
    impls = list(dict.fromkeys(r["impl"] for r in rows if r["impl"] not in BASELINES))
    pallas = [i for i in impls if i != "xla"]
    headers = ["dtype", "format", "copy"] + impls + [f"{p} %copy" for p in pallas]
    headers += [f"{p} / xla" for p in pallas if "xla" in impls]
    table = []
    for dtype, fmt in dict.fromkeys((r["dtype"], r["format"]) for r in rows if r["impl"] not in BASELINES):
        copy = by[(dtype, "copy", "copy")]
        cells = [by.get((dtype, fmt, i), float("nan")) for i in impls]
        cells += [100 * by[(dtype, fmt, p)] / copy for p in pallas]
        cells += [by[(dtype, fmt, p)] / by[(dtype, fmt, "xla")] for p in pallas if "xla" in impls]
        table.append((dtype, fmt, copy, *cells))
    return headers, table


def main(argv=None) -> dict:
    cfg, out = common.parse_config(Config, argv, __doc__, PRESETS)
    if cfg.device == "gpu" and not any(d.platform == "gpu" for d in jax.devices()):
        sys.exit("--device gpu: no GPU is visible to JAX on this machine")
    result, folder = common.save_rows("bench", "bench", out, cfg, bench_rows(cfg))
    rows = result["rows"]
    keys = ("format", "impl", "dtype", "ms", "gbps", "ratio_to_copy", "ratio_to_naive")
    table = [tuple(r[k] for k in keys) for r in rows]
    print(common.format_table(["format", "impl", "dtype", "ms", "GB/s", "/ copy", "/ naive"], table, ".2f"))
    if len(cfg.impls) > 1 or cfg.impls != ("xla",):
        print("\nGB/s side by side (same array, same run)\n")
        print(common.format_table(*comparison(rows), ".1f"))
    common.print_failures(rows, ("format", "impl", "dtype"))
    plotting.save(bench_plots.bench_figure(rows, result["machine"]), folder / "bench.png")
    print(f"\nwrote {folder}/bench.json, bench.csv and bench.png")
    return result


if __name__ == "__main__":
    main()

"""Fake-quant throughput of every named format against a device copy measured in the same run.

    python -m experiments.bench                      # 4096x4096 float32 on the CPU, about 30 s
    python -m experiments.bench --formats mxfp4,nvfp4 --size 2048 --dtypes float32,bfloat16
    python -m experiments.bench --preset gpu         # GPU: 8192x8192 float32 and bfloat16, Pallas vs XLA vs copy

Each row times `jit(fake_quant)` (median over --repeats batches of --batch back-to-back calls, after a warm-up;
the GPU preset queues 10 calls per batch so that dispatch overlaps the device work) and reports GB/s as
(bytes read + bytes written) / time, and the ratio quant_time / copy_time against `jit(jnp.copy)` on the same
array in the same run. Targets on the 2-core CPU: ratio <= 1.6 for MX formats, <= 2.0 for NV
formats (they read the tensor twice: tensor amax, then blocks). --impls: xla (the core), pallas (the kernel on
its default GPU backend, Triton); off a GPU the Pallas kernels only run interpreted
(slow: use a small --size). GPU goal (docs/benchmarks.md): Pallas >= 80 % of copy GB/s and faster than XLA.

Output (--out, default results/bench/): bench.json = {"machine": str, "rows": [{"format", "impl", "dtype",
"size", "ms", "gbps", "ratio_to_copy", "error"}]}, bench.csv with the same rows; a row whose kernel failed to
compile has NaN timings (null in JSON) and the error's first line. bench.png: GB/s per format and implementation,
one panel per dtype, the device copy's GB/s dashed.
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp

import lowbit_jax as lb
from analysis import bench_plots, plotting
from analysis.timing import bench_input, gbps, quant_fn, time_case
from experiments import common

IMPLS = ("xla", "pallas")  # the core; the Pallas kernel on its default backend (Triton on a GPU)


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
    """One row per (dtype, format, impl) plus the copy baseline per dtype."""
    device = jax.devices(cfg.device)[0]
    rows, inputs = [], {}
    jobs = []
    for d in cfg.dtypes:
        jobs += [(d, "copy", "xla")] + [(d, f, i) for f in cfg.formats for i in cfg.impls]
    for dtype, name, impl in common.progress(jobs, desc="bench", unit="case"):
        if dtype not in inputs:  # one input per dtype, shared by its cases
            inputs[dtype] = bench_input(cfg.size, dtype, cfg.seed, device)
        x = inputs[dtype]
        fn = jax.jit(jnp.copy) if name == "copy" else quant_fn(name, impl)
        seconds, error = time_case(fn, x, cfg.repeats, cfg.batch)
        if name == "copy":
            copy_seconds = seconds
        rows.append(
            {
                "format": name,
                "impl": "copy" if name == "copy" else impl,
                "dtype": dtype,
                "size": cfg.size,
                "ms": seconds * 1e3,
                "gbps": gbps(x, seconds),
                "ratio_to_copy": seconds / copy_seconds,
                "error": error,
            }
        )
        if cfg.device == "gpu":  # live record: a timeout guard must not lose the rows measured so far
            print(f"{dtype} {name} {rows[-1]['impl']}: {rows[-1]['gbps']:.1f} GB/s {error}", flush=True)
    return rows


def comparison(rows: list[dict]) -> tuple[list[str], list[tuple]]:
    """Per (dtype, format): GB/s of copy and of each impl, and each Pallas impl's % of copy and speed-up over XLA."""
    by = {(r["dtype"], r["format"], r["impl"]): r["gbps"] for r in rows}
    impls = list(dict.fromkeys(r["impl"] for r in rows if r["impl"] != "copy"))
    pallas = [i for i in impls if i != "xla"]
    headers = ["dtype", "format", "copy"] + impls + [f"{p} %copy" for p in pallas]
    headers += [f"{p} / xla" for p in pallas if "xla" in impls]
    table = []
    for dtype, fmt in dict.fromkeys((r["dtype"], r["format"]) for r in rows if r["impl"] != "copy"):
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
    table = [(r["format"], r["impl"], r["dtype"], r["ms"], r["gbps"], r["ratio_to_copy"]) for r in rows]
    print(common.format_table(["format", "impl", "dtype", "ms", "GB/s", "ratio"], table, ".2f"))
    if len(cfg.impls) > 1 or cfg.impls != ("xla",):
        print("\nGB/s side by side (same array, same run)\n")
        print(common.format_table(*comparison(rows), ".1f"))
    common.print_failures(rows, ("format", "impl", "dtype"))
    plotting.save(bench_plots.bench_figure(rows, result["machine"]), folder / "bench.png")
    print(f"\nwrote {folder}/bench.json, bench.csv and bench.png")
    return result


if __name__ == "__main__":
    main()

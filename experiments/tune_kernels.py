"""Tile sweep of the Pallas fake-quant kernel on a GPU: which `Tiles` gives the most GB/s per format and dtype.

    python -m experiments.tune_kernels --preset gpu        # about 1 to 2 minutes on an H100 (compiles dominate)
    python -m experiments.tune_kernels --preset tiny       # the CPU (interpret mode): checks the plumbing only

For each dtype and format, times `kernels.fake_quant(impl="pallas")` under every candidate tiling (blocked
formats: blocks per grid step x Triton warps; per-channel formats: elements per grid step x warps, one whole
row per tile), next to the XLA reference and a device copy of the same array measured in the same run, with
`analysis.timing.median_seconds`. The defaults in `lowbit_jax.kernels.pallas_quantize.Tiles` were chosen from this
sweep's output (docs/benchmarks.md); rerun it on a new GPU before trusting them there.

Output (--out, default results/tune_kernels/): tune.json = {"machine", "config", "rows": [{"dtype", "format",
"tiles", "ms", "gbps", "pct_copy", "error"}]} and tune.csv with the same rows; tune.png: GB/s of every tiling
(the best darker), the XLA reference and the device copy, one panel per dtype; a summary table of the best
tiling per (dtype, format) is printed last.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

import lowbit_jax as lb
from analysis import bench_plots, plotting
from analysis.timing import bench_input, gbps, quant_fn, time_case
from experiments import common
from lowbit_jax.kernels.pallas_quantize import Tiles


@dataclasses.dataclass(frozen=True)
class Config:
    formats: tuple[str, ...] = ("mxfp8_e4m3", "mxint8", "nvfp4", "int8_channel")  # format specs
    dtypes: tuple[str, ...] = ("float32", "bfloat16")  # input dtypes
    blocks: tuple[int, ...] = (128, 256, 512)  # blocks per grid step (blocked formats); 1024 spills on an H100
    row_elems: tuple[int, ...] = (8192, 16384)  # elements per grid step (per-channel: at least one whole row)
    warps: tuple[int, ...] = (4, 8)  # Triton warps per program
    size: int = 8192  # the input is size x size
    repeats: int = 10  # timed batches; the median is reported
    batch: int = 10  # calls queued back to back per timed batch

    def __post_init__(self):
        object.__setattr__(self, "formats", common.lower_all(self.formats))  # row names as list_formats()
        for name in self.formats:
            lb.get_format(name)
        if min(self.size, self.repeats, self.batch, *self.blocks, *self.row_elems, *self.warps) <= 0:
            raise ValueError("sizes, tile counts, warps, repeats and batch must be positive")


PRESETS = {
    "gpu": Config(),
    "tiny": Config(
        formats=("mxint8", "int8_channel"),
        dtypes=("float32",),
        blocks=(16,),
        row_elems=(256,),
        warps=(4,),
        size=64,
        repeats=1,
        batch=1,
    ),
}


def candidates(fmt: lb.Format, cfg: Config) -> list[Tiles]:
    """The tilings to try for one format."""
    if isinstance(fmt.block_size, int):
        return [Tiles(blocks=b, num_warps=w) for b in cfg.blocks for w in cfg.warps]
    return [Tiles(rows=1, cols=e, num_warps=w) for e in cfg.row_elems for w in cfg.warps]


def label(name: str, tiles: Tiles | str) -> str:
    if isinstance(tiles, str):
        return tiles
    fmt = lb.get_format(name)
    size = f"blocks={tiles.blocks}" if isinstance(fmt.block_size, int) else f"elems={tiles.rows * tiles.cols}"
    return f"{size} warps={tiles.num_warps}"


def sweep(cfg: Config) -> list[dict]:
    """One row per (dtype, format, tiling), an 'xla' row per (dtype, format) and a 'copy' row per dtype."""
    jobs = []
    for dtype in cfg.dtypes:
        jobs.append((dtype, "copy", "copy"))
        for name in cfg.formats:
            jobs += [(dtype, name, t) for t in ["xla", *candidates(lb.get_format(name), cfg)]]
    rows, copy_s, inputs = [], {}, {}
    for dtype, name, tiles in common.progress(jobs, desc="tune", unit="case"):
        if dtype not in inputs:  # one input per dtype, shared by its cases
            inputs[dtype] = bench_input(cfg.size, dtype, seed=0)
        x = inputs[dtype]
        if tiles == "copy":
            fn = jax.jit(jnp.copy)
        else:
            fn = quant_fn(name, "xla") if tiles == "xla" else quant_fn(name, "pallas", tiles)
        seconds, error = time_case(fn, x, cfg.repeats, cfg.batch)  # a tiling Triton rejects: NaN + error
        if tiles == "copy":
            copy_s[dtype] = seconds
        rows.append(
            {
                "dtype": dtype,
                "format": name,
                "tiles": label(name, tiles),
                "ms": seconds * 1e3,
                "gbps": gbps(x, seconds),
                "pct_copy": 100 * copy_s[dtype] / seconds,
                "error": error,
            }
        )
        print(f"{dtype} {name} {rows[-1]['tiles']}: {rows[-1]['gbps']:.1f} GB/s {error}", flush=True)
    return rows


def best_table(rows: list[dict]) -> list[tuple]:
    """Per (dtype, format): copy and XLA GB/s, the best tiling, its GB/s, % of copy and speed-up over XLA."""
    out = []
    for dtype, name in dict.fromkeys((r["dtype"], r["format"]) for r in rows if r["tiles"] != "copy"):
        mine = [r for r in rows if (r["dtype"], r["format"]) == (dtype, name)]
        xla = next(r["gbps"] for r in mine if r["tiles"] == "xla")
        copy = next(r["gbps"] for r in rows if (r["dtype"], r["tiles"]) == (dtype, "copy"))
        tried = [r for r in mine if r["tiles"] not in ("copy", "xla") and r["gbps"] == r["gbps"]]
        best = max(tried, key=lambda r: r["gbps"]) if tried else None
        if best is None:
            out.append((dtype, name, copy, xla, "none compiled", float("nan"), float("nan"), float("nan")))
        else:
            out.append((dtype, name, copy, xla, best["tiles"], best["gbps"], best["pct_copy"], best["gbps"] / xla))
    return out


def main(argv=None) -> dict:
    cfg, out = common.parse_config(Config, argv, __doc__, PRESETS)
    result, folder = common.save_rows("tune_kernels", "tune", out, cfg, sweep(cfg))
    rows = result["rows"]
    print(
        common.format_table(
            ["dtype", "format", "tiles", "ms", "GB/s", "% copy"],
            [(r["dtype"], r["format"], r["tiles"], r["ms"], r["gbps"], r["pct_copy"]) for r in rows],
            ".2f",
        )
    )
    print("\nbest tiling per format (GB/s = (bytes read + written) / time)\n")
    headers = ["dtype", "format", "copy", "xla", "best tiles", "pallas", "% copy", "/ xla"]
    print(common.format_table(headers, best_table(rows), ".1f"))
    common.print_failures(rows, ("dtype", "format", "tiles"))
    plotting.save(bench_plots.tune_figure(rows, result["machine"]), folder / "tune.png")
    print(f"\nwrote {folder}/tune.json, tune.csv and tune.png")
    return result


if __name__ == "__main__":
    main()

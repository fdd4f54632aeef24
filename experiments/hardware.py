"""Energy and area of block-scaled MAC units: the paper's Table 5 from the Table 6 cell-count model, and how much the
ratios depend on the (unpublished) standard-cell factors.

    python -m experiments.hardware                          # Table 5 + sensitivity sweep, about 1 second
    python -m experiments.hardware --int-scheme none --fp-scheme none   # Table 7's no-reuse variants
    python -m experiments.hardware --single-throughput slot  # 4-bit single-format units at Blackwell's 2 MACs/slot
    python -m experiments.hardware --random-span 4 --random-samples 50000 --seed 1
    python -m experiments.hardware --const-bits 12          # adaptive formats' mode constants at 12 bits
    python -m experiments.hardware --preset tiny            # well under a second; what the test suite runs

The model (analysis.hardware; arXiv 2510.25602 §6) counts cells per "slot" (one 8-bit MAC or two <= 4-bit MACs per
cycle) for MXFP8, MXINT8, NVFP4, NVINT4 and the mixed MXFP8+NVFP4 (FP reuse) and MXINT8+NVINT4 (INT reuse scheme 2)
units, weighs them with default relative cell factors chosen from standard-cell reasoning (not fitted to the paper),
and normalises single formats to MXFP8 and mixed units to MXFP8+NVFP4 as in Table 5. Single-format units deliver
one MAC per cycle each (Table 5's "equal throughput"; --single-throughput slot gives the 4-bit ones two). The
sweep scales one cell's area and energy factors by sweep_min..sweep_max at a time, and draws every factor
log-uniformly in [1/random_span, random_span] random_samples times. The "any" range is where a ratio can land for
any positive cell factors at all (analysis.hardware.reachable): a paper value outside it cannot come from these
cell counts, whatever the library. The adaptive formats (--adaptive: IF4/IF6, MXIF4/6/8, NVFP4 Four Over Six) are
costed per MAC under both of analysis.hardware's datapaths, "mux" (a lane per candidate pair) and "unified" (one
lane decoding both codes, as the published IF4 MAC RTL), relative to MXFP8 like the single formats; the
selection itself happens in the quantizer, which the model does not cost.

Output (--out, default results/hardware/):
  hardware.json  stable keys:
    energy, area      {name: ratio}   names MXFP8, MXINT8, NVFP4, NVINT4, MXFP8+NVFP4, MXINT8+NVINT4
    paper             {"energy": {name: ratio}, "area": {name: ratio}}   Table 5 as printed
    schemes           {"INT none" | "INT reuse1" | "INT reuse2" | "FP none" | "FP reuse": {"energy", "area"}}
                      mixed units of every Table 7 scheme, relative to FP reuse
    cells_per_slot    {name: {cell: count}}
    reachable         {name: {"lo", "hi"}}   the ratio's range over all positive cell factors (hi may be Infinity)
    paper_fit         {metric: {name | "together": r or null}}   the smallest r such that cell factors within x/÷ r
                      of the defaults give the paper's ratio to +-0.005 (null: no positive factors do)
    factors           {"area": {cell: A}, "energy": {cell: E}, "toggle": {cell: tau}}   the defaults used
    adaptive          {format: {"mux" | "unified": {"energy", "area"}, "candidates": {label: {"energy", "area"}}}}
                      per MAC, relative to MXFP8 (one MAC per cycle unless --single-throughput slot)
    sensitivity       {"scales": [..], "one_at_a_time": {cell: {metric: {name: [ratio per scale]}}},
                       "random": {metric: {name: {"min", "p05", "median", "p95", "max"}},
                                  "int_cheaper": {metric: {"MXINT8<MXFP8" | "NVINT4<NVFP4" |
                                                           "MXINT8+NVINT4<MXFP8+NVFP4": fraction of draws}}}}
    config
  hardware.csv     metric, name, model, paper
  breakdown.csv    name, sub_block, one column per cell, area, energy   (per slot, relative units; the Table 5
                   units, then every adaptive format as "<FORMAT> (MUX)" / "<FORMAT> (UNIFIED)")
  sensitivity.csv  cell, scale, metric, name, ratio
  hardware.png     ratio against each cell factor's scale, random 5-95 % band, paper value dashed
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

import lowbit_jax as lb
from analysis import hardware as hw
from analysis import plotting
from experiments import common

PAPER = {  # Table 5 of arXiv 2510.25602 as printed
    "energy": {"MXFP8": 1.0, "MXINT8": 0.63, "NVFP4": 0.55, "NVINT4": 0.34, "MXFP8+NVFP4": 1.0, "MXINT8+NVINT4": 0.75},
    "area": {"MXFP8": 1.0, "MXINT8": 0.79, "NVFP4": 0.54, "NVINT4": 0.38, "MXFP8+NVFP4": 1.0, "MXINT8+NVINT4": 0.66},
}
METRICS = ("energy", "area")
INT_FP = (("MXINT8", "MXFP8"), ("NVINT4", "NVFP4"), ("MXINT8+NVINT4", "MXFP8+NVFP4"))
SWEPT = ("MXINT8", "NVFP4", "NVINT4", "MXINT8+NVINT4")  # the others are 1 by definition
ADAPTIVE = ("if4", "nvfp4_4over6", "mxif4", "mxif6", "mxif8", "if6")


@dataclasses.dataclass(frozen=True)
class Config:
    psum_bits: int = 24  # cap on the aligner / partial-sum width (paper Eq. 44)
    throughput_ratio: int = 2  # <= 4-bit MACs per 8-bit MAC slot (Table 7)
    single_throughput: str = "mac"  # single-format units: mac (one MAC per cycle) or slot (as mixed units)
    int_scheme: str = "reuse2"  # INT mixed unit (Table 7): none, reuse1 or reuse2
    fp_scheme: str = "reuse"  # FP mixed unit (Table 7): none or reuse
    sweep_min: float = 0.5  # smallest scale of one cell factor in the sensitivity sweep
    sweep_max: float = 2.0  # largest scale of one cell factor in the sensitivity sweep
    sweep_points: int = 17  # scales per cell factor, log-spaced
    random_samples: int = 20000  # random draws of all cell factors together
    random_span: float = 2.0  # random factors are log-uniform in [1 / span, span] x the defaults
    adaptive: tuple[str, ...] = ADAPTIVE  # adaptive formats costed per MAC (any case)
    const_bits: int | None = None  # bits q of the adaptive formats' mode constants (none = the accumulator's 24)
    seed: int = 0  # random seed of the random draws

    def __post_init__(self):
        object.__setattr__(self, "adaptive", common.lower_all(self.adaptive))  # JSON keys as list_formats()
        hw.paper_units(self.params())  # validates psum_bits, throughput_ratio, the schemes and their combination
        for name in self.adaptive:
            if not lb.get_format(name).is_adaptive:
                raise ValueError(f"--adaptive takes adaptive formats (if4, mxif4, ...); {name} is not one")
            hw.format_unit(name, self.params())
        if not 0 < self.sweep_min < 1 < self.sweep_max or self.sweep_points < 2:
            raise ValueError("--sweep-min < 1 < --sweep-max (both positive) and --sweep-points >= 2 are required")
        if self.random_samples < 1 or self.random_span <= 1:
            raise ValueError("--random-samples must be positive and --random-span above 1")

    def params(self) -> hw.HardwareParams:
        return hw.HardwareParams(
            psum_bits=self.psum_bits,
            throughput_ratio=self.throughput_ratio,
            single_throughput=self.single_throughput,
            int_scheme=self.int_scheme,
            fp_scheme=self.fp_scheme,
            const_bits=self.const_bits,
        )


PRESETS = {"tiny": Config(sweep_points=3, random_samples=64)}


def scheme_costs(p: hw.HardwareParams, lib: hw.CellLibrary) -> dict[str, dict[str, float]]:
    """Mixed units of every Table 7 scheme, energy and area relative to the FP reuse unit (NaN: not buildable with
    these parameters, e.g. INT reuse scheme 2 needs throughput_ratio 2)."""
    units = {f"INT {s}": ("mxint8", "nvint4", {"int_scheme": s}) for s in hw.INT_SCHEMES}
    units |= {f"FP {s}": ("mxfp8", "nvfp4", {"fp_scheme": s}) for s in hw.FP_SCHEMES}
    costs = {}
    for key, (a, b, override) in units.items():
        q = dataclasses.replace(p, **override)
        try:
            costs[key] = hw.unit_cost(hw.mixed_unit(a, b, q), lib, q)
        except ValueError:
            costs[key] = (float("nan"), float("nan"))
    ref_area, ref_energy = costs["FP reuse"]
    return {k: {"energy": e / ref_energy, "area": a / ref_area} for k, (a, e) in costs.items()}


def sensitivity(cfg: Config, lib: hw.CellLibrary) -> tuple[np.ndarray, dict, dict]:
    """(scales, one-at-a-time {cell: {metric: [scales, names]}}, random {metric: [samples, names]}).

    One at a time: one cell's area and energy factors times each scale. Random: every area and energy factor times
    an independent log-uniform draw in [1/random_span, random_span]."""
    totals, (area, energy) = hw.unit_totals(cfg.params()), hw.factor_vectors(lib)
    scales = np.geomspace(cfg.sweep_min, cfg.sweep_max, cfg.sweep_points)
    oat = {}
    for i, g in enumerate(hw.CELLS):
        mult = np.where(np.arange(len(hw.CELLS)) == i, scales[:, None], 1.0)  # [scales, cells]
        oat[g] = hw.ratios(area * mult, energy * mult, totals)
    rng, half = np.random.default_rng(cfg.seed), np.log(cfg.random_span)
    draw = lambda: np.exp(rng.uniform(-half, half, (cfg.random_samples, len(hw.CELLS))))
    return scales, oat, hw.ratios(area * draw(), energy * draw(), totals)


def paper_fit(cells: dict, lib: hw.CellLibrary) -> dict[str, dict[str, float | None]]:
    """For each metric, how far (x/÷ r) the cell factors must move from `lib` to give each paper ratio of SWEPT,
    and all of them together (analysis.hardware.closest_factors); None where no positive factors do."""
    defaults = dict(zip(("area", "energy"), hw.factor_vectors(lib), strict=True))
    groups = {n: (n,) for n in SWEPT} | {"together": SWEPT}
    out = {}
    for m in METRICS:
        fits = {k: hw.closest_factors(cells, defaults[m], {n: PAPER[m][n] for n in g}) for k, g in groups.items()}
        out[m] = {k: None if fit is None else fit[0] for k, fit in fits.items()}
    return out


def _summaries(rnd: dict) -> dict:
    qs = {"min": 0, "p05": 5, "median": 50, "p95": 95, "max": 100}
    out = {
        m: {n: {k: float(np.percentile(rnd[m][:, i], q)) for k, q in qs.items()} for i, n in enumerate(hw.NAMES)}
        for m in METRICS
    }
    col = {n: i for i, n in enumerate(hw.NAMES)}
    out["int_cheaper"] = {  # fraction of draws in which the INT unit costs less than its FP counterpart
        m: {f"{a}<{b}": float(np.mean(rnd[m][:, col[a]] < rnd[m][:, col[b]])) for a, b in INT_FP} for m in METRICS
    }
    return out


def adaptive_costs(cfg: Config, lib: hw.CellLibrary) -> dict[str, dict]:
    """Per adaptive format: energy and area per MAC under each datapath model and of each candidate alone,
    relative to MXFP8's."""
    p = cfg.params()
    ref_area, ref_energy = hw.cost_per_mac("mxfp8", lib, p)
    rel = lambda fmt, q: dict(zip(("area", "energy"), hw.cost_per_mac(fmt, lib, q), strict=True))
    out = {}
    for name in cfg.adaptive:
        fmt = lb.get_format(name)
        entry = {}
        for model in hw.ADAPTIVE_MODELS:
            c = rel(fmt, dataclasses.replace(p, adaptive_model=model))
            entry[model] = {"energy": c["energy"] / ref_energy, "area": c["area"] / ref_area}
        cands = {c.label: rel(c, p) for c in fmt.candidates}
        entry["candidates"] = {
            k: {"energy": v["energy"] / ref_energy, "area": v["area"] / ref_area} for k, v in cands.items()
        }
        out[name] = entry
    return out


def _units(cfg: Config) -> list[tuple[str, hw.Unit, hw.HardwareParams]]:
    """(name, unit, params) of the Table 5 units, then of every adaptive format under each datapath model."""
    p = cfg.params()
    units = [(name, unit, p) for name, unit in hw.paper_units(p).items()]
    for name in cfg.adaptive:
        for model in hw.ADAPTIVE_MODELS:
            q = dataclasses.replace(p, adaptive_model=model)
            units.append((f"{lb.get_format(name).label} ({model})".upper(), hw.format_unit(name, q), q))
    return units


def _breakdown_rows(cfg: Config, lib: hw.CellLibrary) -> list[dict]:
    rows = []
    for name, unit, p in _units(cfg):
        for sub, cells in hw.unit_cells(unit, p).items():
            area, energy = hw.cost(cells, lib)
            rows.append({"name": name, "sub_block": sub, **{g: cells.get(g, 0.0) for g in hw.CELLS}})
            rows[-1] |= {"area": area, "energy": energy}
    return rows


def print_summary(result: dict, cfg: Config) -> None:
    singles = {
        "mac": "single formats at one MAC per cycle",
        "slot": f"4-bit singles at {cfg.throughput_ratio} MACs/cycle",
    }
    headers = ["", *hw.NAMES]
    rows = []
    for m in METRICS:
        rows.append([f"{m} (model)", *(f"{result[m][n]:.2f}x" for n in hw.NAMES)])
        rows.append([f"{m} (paper)", *(f"{PAPER[m][n]:.2f}x" for n in hw.NAMES)])
    print(
        f"\nTable 5 ({singles[cfg.single_throughput]}; "
        f"INT {cfg.int_scheme}, FP {cfg.fp_scheme}; singles / MXFP8, mixed / MXFP8+NVFP4):"
    )
    print(common.format_table(headers, rows))
    print("\nTable 7 mixed units, relative to FP reuse:")
    print(
        common.format_table(
            ["scheme", "energy", "area"], [(k, v["energy"], v["area"]) for k, v in result["schemes"].items()]
        )
    )
    rnd = result["sensitivity"]["random"]
    oat = result["sensitivity"]["one_at_a_time"]
    lo, hi = result["sensitivity"]["scales"][0], result["sensitivity"]["scales"][-1]
    rows = []
    for m in METRICS:
        for n in SWEPT:
            one = [v for cell in oat.values() for v in cell[m][n]]
            s = rnd[m][n]
            reach = result["reachable"][n]
            flag = "" if reach["lo"] <= PAPER[m][n] <= reach["hi"] else " (out of reach)"
            rows.append(
                (m, n, result[m][n], min(one), max(one), s["p05"], s["p95"], reach["lo"], reach["hi"])
                + (f"{PAPER[m][n]:.3f}{flag}",)
            )
    print(
        f"\nSensitivity: one cell factor x [{lo:.2g}, {hi:.2g}] at a time; all factors log-uniform in "
        f"[1/{cfg.random_span:g}, {cfg.random_span:g}] ({cfg.random_samples} draws); any positive factors:"
    )
    heads = ["metric", "name", "default", "1-at-a-time lo", "hi", "random p05", "p95", "any lo", "any hi", "paper"]
    print(common.format_table(heads, rows, ".3f"))
    fit = result["paper_fit"]
    print("\nCell-factor change (x/÷ r from the defaults) needed to give the paper's ratio +-0.005 ('-': none can):")
    keys = [*SWEPT, "together"]
    rows = [(m, *("-" if fit[m][k] is None else f"{fit[m][k]:.2f}" for k in keys)) for m in METRICS]
    print(common.format_table(["metric", *keys], rows))
    cheaper = rnd["int_cheaper"]
    print("INT cheaper than its FP counterpart, share of random draws:")
    for m in METRICS:
        print(f"  {m:6s} " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in cheaper[m].items()))
    if result["adaptive"]:
        q = cfg.params().constant_bits
        print(f"\nAdaptive formats per MAC, relative to MXFP8 (mode constants at {q} bits); each candidate alone:")
        rows = []
        for name, entry in result["adaptive"].items():
            alone = ", ".join(f"{k} {v['area']:.3f}/{v['energy']:.3f}" for k, v in entry["candidates"].items())
            models = [f"{entry[m]['area']:.3f}/{entry[m]['energy']:.3f}" for m in hw.ADAPTIVE_MODELS]
            rows.append((name, *models, alone))
        heads = ["format", *(f"{m} area/energy" for m in hw.ADAPTIVE_MODELS), "candidates area/energy"]
        print(common.format_table(heads, rows))


def main(argv=None) -> dict:
    cfg, out = common.parse_config(Config, argv, __doc__, PRESETS)
    t0 = time.perf_counter()
    p, lib = cfg.params(), hw.CellLibrary()
    table = hw.table5(lib, p)
    scales, oat, rnd = sensitivity(cfg, lib)
    cells = hw.unit_totals(p)
    result = {
        **table,
        "paper": PAPER,
        "schemes": scheme_costs(p, lib),
        "cells_per_slot": cells,
        "reachable": {n: {"lo": lo, "hi": hi} for n, (lo, hi) in hw.reachable(cells).items()},
        "paper_fit": paper_fit(cells, lib),
        "factors": {"area": dict(lib.area), "energy": dict(lib.energy), "toggle": dict(lib.toggle)},
        "adaptive": adaptive_costs(cfg, lib),
        "sensitivity": {
            "scales": scales.tolist(),
            "one_at_a_time": {
                g: {m: {n: r[m][:, i].tolist() for i, n in enumerate(hw.NAMES)} for m in METRICS}
                for g, r in oat.items()
            },
            "random": _summaries(rnd),
        },
        "config": cfg,
    }
    folder = common.output_dir("hardware", out)
    common.write_json(folder / "hardware.json", result)
    common.write_csv(
        folder / "hardware.csv",
        [{"metric": m, "name": n, "model": table[m][n], "paper": PAPER[m][n]} for m in METRICS for n in hw.NAMES],
    )
    common.write_csv(folder / "breakdown.csv", _breakdown_rows(cfg, lib))
    common.write_csv(
        folder / "sensitivity.csv",
        [
            {"cell": g, "scale": float(s), "metric": m, "name": n, "ratio": ratio}
            for g, by_metric in result["sensitivity"]["one_at_a_time"].items()
            for m, by_name in by_metric.items()
            for n, values in by_name.items()
            for s, ratio in zip(scales, values)
        ],
    )
    curves = {m: {n: {g: oat[g][m][:, hw.NAMES.index(n)] for g in hw.CELLS} for n in SWEPT} for m in METRICS}
    bands = {m: {n: (v["p05"], v["p95"]) for n, v in result["sensitivity"]["random"][m].items()} for m in METRICS}
    plotting.save(plotting.hardware_sensitivity_figure(scales, curves, bands, PAPER, SWEPT), folder / "hardware.png")
    print_summary(result, cfg)
    print(
        f"\nwrote {folder}/hardware.json, hardware.csv, breakdown.csv, sensitivity.csv, hardware.png "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return result


if __name__ == "__main__":
    main()

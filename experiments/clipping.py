"""Symmetric clipping ablation (paper Table 10, scaled down): INT8 training with asymmetric [-128, 127] vs symmetric
[-127, 127] codes, bf16-arithmetic FP32-style scales vs UE8M0 scales, per-channel and blocks 256/128/64/32.

    python -m experiments.clipping                    # 20 configurations x 3 seeds + baseline: 54 min on 2 loaded CPUs
    python -m experiments.clipping --seeds 0,1,2,3,4 --blocks 256,32 --scales bf16
    python -m experiments.clipping --ue8m0-scale-dtype float32   # exact scale arithmetic (asym == sym by design)
    python -m experiments.clipping --preset tiny      # seconds; what the test suite runs

Scales: "bf16" is int8_channel with scale_dtype=bfloat16 (s = amax / 127 and x / s evaluated in bf16, the paper's
"BF16 scale"); "ue8m0" is mxint8 (power-of-two ceil scale) with scale_dtype=--ue8m0-scale-dtype, bfloat16 by
default as in the authors' code (log2 of the scale in bf16 can undo the ceil; docs/formats.md); with float32
the ceil guarantees |x| / s <= 127, so -128 never occurs and asymmetric == symmetric bit for bit. All six GEMM
operands are quantized (experiments.train); every configuration trains the same seeds (initialisations, vmapped
together) on the same batches, so asym - sym is a paired difference.

Output (--out, default results/clipping/):
  clipping.json  stable keys:
    rows     [{"scale", "int_range", "block", "precision", "val_loss": [per seed], "mean", "std"}]
    paired   [{"scale", "block", "asym_minus_sym": [per seed], "mean", "std", "resolved": bool}]
    baseline {"precision": "none", "val_loss": [per seed], "mean", "std"}
    seed_spread  mean over configurations of the std across seeds
    paper_table10, seeds, config, machine
  clipping.csv   one row per configuration and seed;  clipping.png  loss vs block size, paired differences
A paired difference is "resolved" when |mean| > 2 standard errors (std / sqrt(seeds)).
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from analysis import plotting
from analysis.lm import data as lm_data
from analysis.lm import run as lm_run
from analysis.lm import train as lm_train
from experiments import common

PAPER_TABLE10 = {  # final loss, 145M model, 20B tokens; columns bf16-asym, bf16-sym, ue8m0-asym, ue8m0-sym
    "channel": (3.2544, 3.2560, 3.3602, 3.4307),
    "256": (3.1340, 3.1307, 3.1628, 3.1574),
    "128": (3.1309, 3.1289, 3.1353, 3.1326),
    "64": (3.1312, 3.1269, 3.1312, 3.1288),
    "32": (3.1354, 3.1251, 3.1299, 3.1269),
}
RANGES = ("asymmetric", "symmetric")


def precision(scale: str, block: str, int_range: str, ue8m0_dtype: str = "bfloat16") -> str:
    """The precision string of one Table 10 cell."""
    if scale == "bf16":
        return f"int8_channel:block_size={block}:scale_dtype=bfloat16:int_range={int_range}"
    return f"mxint8:block_size={block}:scale_dtype={ue8m0_dtype}:int_range={int_range}"


@dataclasses.dataclass(frozen=True)
class Config(lm_train.SmallTrainConfig):
    steps: int = 300
    warmup_steps: int = 15
    eval_every: int = 300
    log_every: int = 25
    seeds: tuple[int, ...] = (0, 1, 2)  # initialisation seeds, trained together (vmapped)
    blocks: tuple[str, ...] = ("channel", "256", "128", "64", "32")  # block sizes or channel (per channel)
    scales: tuple[str, ...] = ("bf16", "ue8m0")  # scale types: bf16 (int8_channel) and/or ue8m0 (mxint8)
    ue8m0_scale_dtype: str = "bfloat16"  # arithmetic of the UE8M0 scale: bfloat16 or float32
    baseline: bool = True  # also train the unquantized baseline

    def __post_init__(self):
        super().__post_init__()
        for name in ("blocks", "scales"):
            object.__setattr__(self, name, common.lower_all(getattr(self, name)))
        object.__setattr__(self, "ue8m0_scale_dtype", self.ue8m0_scale_dtype.strip().lower())
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("--seeds needs distinct seeds")
        if set(self.scales) - {"bf16", "ue8m0"} or self.ue8m0_scale_dtype not in ("float32", "bfloat16"):
            raise ValueError("--scales takes bf16 and/or ue8m0; --ue8m0-scale-dtype float32 or bfloat16")
        for s in self.scales:
            for b in self.blocks:
                lm_train.parse_precision(precision(s, b, "symmetric", self.ue8m0_scale_dtype))


TINY = dict(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, seq_len=32, batch_size=8, steps=8)
TINY |= dict(warmup_steps=2, eval_every=8, eval_windows=16, log_every=4, seeds=(0, 1), blocks=("32",))
PRESETS = {"tiny": Config(scales=("bf16",), **TINY)}


def _stats(values) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}


def paired(rows: list[dict], n_seeds: int) -> list[dict]:
    """asym - sym per seed for every (scale, block), with mean, std and whether |mean| > 2 standard errors."""
    by = {(r["scale"], r["block"], r["int_range"]): np.asarray(r["val_loss"]) for r in rows}
    out = []
    for scale, block, rng in by:
        if rng != "asymmetric" or (scale, block, "symmetric") not in by:
            continue
        d = by[(scale, block, "asymmetric")] - by[(scale, block, "symmetric")]
        st = _stats(d)
        resolved = n_seeds > 1 and abs(st["mean"]) > 2 * st["std"] / math.sqrt(n_seeds)
        out.append({"scale": scale, "block": block, "asym_minus_sym": d.tolist(), **st, "resolved": bool(resolved)})
    return out


def verdicts(result: dict) -> list[str]:
    """Plain sentences: is each asym-sym difference larger than the noise?"""
    spread = result["seed_spread"]
    lines = []
    for p in result["paired"]:
        size = "resolved (|mean| > 2 s.e.)" if p["resolved"] else "NOT resolved: within the noise"
        cmp = "smaller" if abs(p["mean"]) < spread else "larger"
        lines.append(
            f"{p['scale']:>5} block {p['block']:>7}: asym - sym = {p['mean']:+.4f} +- {p['std']:.4f} "
            f"(std over seeds); {size}; {cmp} than the seed spread {spread:.4f}"
        )
    if len(lines) > 1:
        lines.append(f"({len(lines)} comparisons at 2 s.e.: about {len(lines) / 20:.1f} 'resolved' by chance alone)")
    return lines


def main(argv=None) -> dict:
    cfg, out = common.parse_config(Config, argv, __doc__, PRESETS)
    folder = common.output_dir("clipping", out)
    data, t0 = lm_data.load_text(), time.perf_counter()
    cells = [(s, b, r) for s in cfg.scales for b in cfg.blocks for r in RANGES]
    rows, csv_rows = [], []
    for i, (scale, block, rng) in enumerate(cells):
        prec = precision(scale, block, rng, cfg.ue8m0_scale_dtype)
        res = lm_run.run(
            cfg,
            prec,
            cfg.seeds,
            data,
            desc=f"[{i + 1}/{len(cells)}] {scale} {block} {rng[:4]}",
            progress=common.progress,
        )
        vals = res.final("val_loss").tolist()
        rows.append({"scale": scale, "int_range": rng, "block": block, "precision": prec, "val_loss": vals})
        rows[-1] |= _stats(vals)
        csv_rows += [
            {"scale": scale, "int_range": rng, "block": block, "seed": s, "val_loss": v}
            for s, v in zip(cfg.seeds, vals)
        ]
    baseline = None
    if cfg.baseline:
        vals = (
            lm_run.run(cfg, "none", cfg.seeds, data, desc="baseline none", progress=common.progress)
            .final("val_loss")
            .tolist()
        )
        baseline = {"precision": "none", "val_loss": vals, **_stats(vals)}
    result = {
        "rows": rows,
        "paired": paired(rows, len(cfg.seeds)),
        "baseline": baseline,
        "seed_spread": float(np.mean([r["std"] for r in rows])) if rows else 0.0,
        "paper_table10": PAPER_TABLE10,
        "seeds": list(cfg.seeds),
        "config": cfg,
        "machine": common.machine_description(),
        "seconds": time.perf_counter() - t0,
    }
    common.write_json(folder / "clipping.json", result)
    common.write_csv(folder / "clipping.csv", csv_rows)
    plotting.save(plotting.clipping_figure(rows, result["paired"], baseline, list(cfg.blocks)), folder / "clipping.png")
    print_summary(result, cfg)
    return result


def print_summary(result: dict, cfg: Config) -> None:
    table = []
    for r in result["rows"]:
        paper = PAPER_TABLE10.get(r["block"])
        col = {("bf16", "asymmetric"): 0, ("bf16", "symmetric"): 1, ("ue8m0", "asymmetric"): 2}
        ref = paper[col.get((r["scale"], r["int_range"]), 3)] if paper else "-"
        table.append((r["scale"], r["int_range"], r["block"], r["mean"], r["std"], ref))
    print(f"\nfinal validation loss over seeds {list(cfg.seeds)} (paper: 145M model, 20B tokens):")
    print(common.format_table(["scale", "range", "block", "mean", "std", "paper"], table, ".4f"))
    if result["baseline"]:
        b = result["baseline"]
        print(f"unquantized baseline: {b['mean']:.4f} +- {b['std']:.4f}")
    print("\n" + "\n".join(verdicts(result)))
    print(f"\nwrote clipping.json, clipping.csv, clipping.png ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()

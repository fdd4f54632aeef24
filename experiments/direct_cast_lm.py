"""Direct-cast inference of a trained unquantized LM checkpoint in each of the paper's 8 formats, with and without
Hadamard rotation: KL to the float model over its top-25 tokens (x 10^6), perplexity, INT/FP win counts (Table 3).

    python -m experiments.direct_cast_lm                  # results/train/none: about 5 min on 2 loaded CPUs
    python -m experiments.direct_cast_lm --checkpoints results/train/none,results/train_seed1/none
    python -m experiments.direct_cast_lm --preset tiny --checkpoints DIR   # seconds; what the test suite runs

Protocol (arXiv 2510.25602 §5.2): every Dense GEMM but the output head quantizes its forward operands X (along
hidden) and W (along in-features) in the same format (QDotConfig.direct_cast); embeddings, attention products and
norms stay float. Rotation: a random Hadamard of size h = the format's block size (32 MX, 16 NV) applied to both
operands along the contracting axis (per-layer signs). KL(P_float || Q_quant) over the float model's top-25 tokens,
renormalised: "kl_paper" = 10^6 x mean / 25 (the paper's PyTorch 'mean' reduction), "kl_per_token" = 10^6 x mean
(25 x larger), "kl_full" = 10^6 x mean full-vocabulary KL. Perplexity = exp(mean NLL). The float reference is the
float32 model on CPU (the paper's is BF16). Win counts: the paper counts 12 models; here every validation window
(and every checkpoint) is a unit, the format with the lower per-window mean KL wins.

Output (--out, default results/direct_cast_lm/):
  direct_cast_lm.json  stable keys:
    results  [{"checkpoint", "format", "rotation" (null or h), "kl_paper", "kl_per_token", "kl_full", "ppl"}]
    float_ppl {checkpoint: ppl};  wins [{"pair", "rotation": bool, "int_wins", "fp_wins", "units"}]
    paper_table3, config, machine
  direct_cast_lm.csv (the results rows);  direct_cast_lm.png (KL per format, with/without rotation)
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import jax
import numpy as np

import lowbit_jax as lb
from analysis import divergence, plotting
from analysis.lm import data as lm_data
from analysis.lm import run as lm_run
from experiments import common
from lowbit_jax.models import llama

PAIRS = (("mxint8", "mxfp8"), ("mxint6", "mxfp6"), ("mxint4", "mxfp4"), ("nvint4", "nvfp4"))
PAPER_TABLE3 = {  # INT wins / FP wins over 12 models: original, with Hadamard rotation
    "MXINT8/MXFP8": ((12, 0), (12, 0)),
    "MXINT6/MXFP6": ((0, 12), (1, 11)),
    "MXINT4/MXFP4": ((0, 12), (0, 12)),
    "NVINT4/NVFP4": ((0, 12), (12, 0)),
}


def rotation_of(fmt: lb.Format) -> int:
    """The paper's rotation size: the format's block size."""
    return fmt.block_size if isinstance(fmt.block_size, int) else 32


@dataclasses.dataclass(frozen=True)
class Config:
    checkpoints: tuple[str, ...] = ("results/train/none",)  # checkpoint folders written by experiments.train
    formats: tuple[str, ...] = tuple(f for p in PAIRS for f in p)  # format specs (any case)
    rotate: bool = True  # also run every format with a Hadamard rotation of its block size
    seq_len: int = 0  # tokens per validation window (0 = the checkpoint's training length)
    windows: int = 0  # validation windows evaluated (0 = all)
    chunk: int = 32  # validation windows per forward pass
    top_k: int = divergence.PAPER_TOP_K  # tokens of the float model's top-k over which the KL is taken

    def __post_init__(self):
        object.__setattr__(self, "formats", common.lower_all(self.formats))  # PAIRS and the figure compare names
        for f in self.formats:
            lb.get_format(f)
        if not self.checkpoints or self.seq_len < 0 or self.windows < 0 or self.chunk < 1 or self.top_k < 1:
            raise ValueError("need --checkpoints, --seq-len/--windows >= 0, --chunk/--top-k >= 1")
        for f in self.formats if self.rotate else ():
            h = rotation_of(lb.get_format(f))
            try:
                lb.hadamard.check_size(h)
            except ValueError:
                raise ValueError(
                    f"--formats {f}: block size {h} has no Hadamard rotation of its size (a power of two); "
                    "choose such a block size or --rotate false"
                ) from None

    def check_paths(self) -> None:
        """FileNotFoundError naming the first --checkpoints folder without a checkpoint (before any work)."""
        for path in self.checkpoints:
            common.require_checkpoint(path, "--checkpoints")


PRESETS = {"tiny": Config(formats=("mxint8", "mxfp8"), windows=4, chunk=4, seq_len=32)}


def logits_fn(mcfg: llama.LlamaConfig, qconfig: lb.QDotConfig | None):
    """jit(params, windows (N, T + 1)) -> logits (N, T, V) with the GEMMs quantized per `qconfig`."""
    rules = llama.rules(qconfig) if qconfig is not None else []

    def f(params, windows):
        with lb.quantized(rules):
            return llama.Llama(mcfg).apply({"params": params}, windows[:, :-1])

    return jax.jit(f)


_window_metrics = jax.jit(divergence.window_metrics, static_argnames="k")


def evaluate(params, mcfg, chunks, ref_logits, qconfig, top_k: int) -> dict[str, np.ndarray]:
    """Per-window top-k KL, full KL and NLL of the model under `qconfig` against the float logits."""
    f = logits_fn(mcfg, qconfig)
    parts = [_window_metrics(r, f(params, c), c[:, 1:], top_k) for c, r in zip(chunks, ref_logits)]
    return {name: np.concatenate([np.asarray(p[i]) for p in parts]) for i, name in enumerate(divergence.WINDOW)}


def run_checkpoint(path: str, cfg: Config, data: lm_data.TextData) -> tuple[list[dict], float, dict]:
    """All formats (with and without rotation) on one checkpoint: rows, float ppl and per-window KL by key."""
    params, mcfg, meta = lm_run.load_checkpoint(Path(path))
    seq = cfg.seq_len or int(meta.get("seq_len", 128))
    w = lm_data.val_windows(data, seq, cfg.windows)
    chunks = [w[i : i + cfg.chunk] for i in range(0, w.shape[0], cfg.chunk)]
    ref_fn = logits_fn(mcfg, None)
    ref_logits = [ref_fn(params, c) for c in chunks]
    float_nll = evaluate(params, mcfg, chunks, ref_logits, None, cfg.top_k)["nll"]
    rows, per_window = [], {}
    variants = [(f, r) for f in cfg.formats for r in ((False, True) if cfg.rotate else (False,))]
    for name, rot in common.progress(variants, desc=Path(path).name, unit="cfg"):
        fmt = lb.get_format(name)
        h = rotation_of(fmt) if rot else None
        m = evaluate(params, mcfg, chunks, ref_logits, lb.QDotConfig.direct_cast(fmt, rotation=h), cfg.top_k)
        per_window[(name, rot)] = m["kl"]
        rows.append(
            {
                "checkpoint": path,
                "format": name,
                "rotation": h,
                "kl_paper": 1e6 * float(m["kl"].mean()) / cfg.top_k,
                "kl_per_token": 1e6 * float(m["kl"].mean()),
                "kl_full": 1e6 * float(m["kl_full"].mean()),
                "ppl": math.exp(float(m["nll"].mean())),
            }
        )
    return rows, math.exp(float(float_nll.mean())), per_window


def win_counts(per_window: list[dict], formats, rotate: bool) -> list[dict]:
    """INT vs FP wins per pair (and rotation) over every window of every checkpoint (lower KL wins)."""
    out = []
    for a, b in PAIRS:
        for rot in (False, True) if rotate else (False,):
            if a not in formats or b not in formats:
                continue
            ki = np.concatenate([pw[(a, rot)] for pw in per_window])
            kf = np.concatenate([pw[(b, rot)] for pw in per_window])
            pair = f"{a.upper()}/{b.upper()}"
            out.append(
                {"pair": pair, "rotation": rot, "int_wins": int(np.sum(ki < kf)), "fp_wins": int(np.sum(kf < ki))}
            )
            out[-1]["units"] = f"{ki.size} windows x checkpoints"
    return out


def main(argv=None) -> dict:
    cfg, out = common.parse_config(Config, argv, __doc__, PRESETS)
    folder, t0 = common.output_dir("direct_cast_lm", out), time.perf_counter()
    data = lm_data.load_text()
    rows, float_ppl, per_window = [], {}, []
    for path in cfg.checkpoints:
        r, ppl, pw = run_checkpoint(path, cfg, data)
        rows, float_ppl[path], per_window = rows + r, ppl, per_window + [pw]
    result = {
        "results": rows,
        "float_ppl": float_ppl,
        "wins": win_counts(per_window, cfg.formats, cfg.rotate),
        "paper_table3": PAPER_TABLE3,
        "config": cfg,
        "machine": common.machine_description(),
        "seconds": time.perf_counter() - t0,
    }
    common.write_json(folder / "direct_cast_lm.json", result)
    common.write_csv(folder / "direct_cast_lm.csv", rows)
    plotting.save(plotting.direct_cast_lm_figure(rows, list(cfg.formats)), folder / "direct_cast_lm.png")
    print_summary(result)
    return result


def print_summary(result: dict) -> None:
    table = [
        (r["format"], r["rotation"] or "-", r["kl_paper"], r["kl_per_token"], r["kl_full"], r["ppl"])
        for r in result["results"]
    ]
    print("\nfloat perplexity: " + ", ".join(f"{k}: {v:.4f}" for k, v in result["float_ppl"].items()))
    print(common.format_table(["format", "rot", "KL paper x1e6", "KL/token x1e6", "KL full x1e6", "ppl"], table, ".4g"))
    wins = []
    for w in result["wins"]:
        paper = result["paper_table3"].get(w["pair"], ((None, None), (None, None)))[int(w["rotation"])]
        wins.append(
            (w["pair"], "yes" if w["rotation"] else "no", w["int_wins"], w["fp_wins"], f"{paper[0]}/{paper[1]}")
        )
    print("\nINT/FP wins over windows (paper: over 12 models):")
    print(common.format_table(["pair", "rotation", "INT wins", "FP wins", "paper INT/FP"], wins))
    print(f"\nwrote direct_cast_lm.json, .csv, .png ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()

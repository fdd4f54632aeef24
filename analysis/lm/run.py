"""The training loop (several seeds at once, metrics as JSONL, progress bar) and msgpack checkpoints.

Metrics lines (JSONL): {"type": "train", "seed", "step", "loss", "loss_ema", "lr", "grad_norm", "tokens_per_s"}
every log_every steps and {"type": "eval", "seed", "step", "val_loss", "val_ppl"} every eval_every steps and at
the end. `loss_ema` is the paper's smoothing (coefficient 0.9). Checkpoint folder: checkpoint.msgpack (the
parameters, flax.serialization) and model.json ({"model": LlamaConfig fields, "meta": {...}}).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from analysis.lm import data as lm_data
from analysis.lm import train as lm_train
from lowbit_jax.models import llama

EMA = 0.9


@dataclass(eq=False)
class RunResult:
    """Logged rows and the final replica-stacked parameters of one precision."""

    precision: str
    seeds: tuple[int, ...]
    train: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    params: object = None
    seconds: float = 0.0
    tokens_per_s: float = 0.0

    def final(self, key: str = "val_loss") -> np.ndarray:
        """Per-seed values of `key` at the last evaluation (val_loss, val_ppl) or the last train row (loss_ema)."""
        rows = self.evals if key.startswith("val") else self.train
        last = max(r["step"] for r in rows)
        return np.array([next(r[key] for r in rows if r["step"] == last and r["seed"] == s) for s in self.seeds])


def init_replicas(cfg: lm_train.TrainConfig, seeds) -> dict:
    """Parameters for every seed, stacked along a leading replica axis."""
    keys = jnp.stack([jax.random.key(s) for s in seeds])
    mcfg = cfg.model()
    return jax.jit(jax.vmap(lambda k: llama.Llama(mcfg).init(k, jnp.zeros((1, 8), jnp.int32))["params"]))(keys)


def replica(params, i: int = 0):
    """The parameters of replica i (host numpy arrays)."""
    return jax.tree.map(lambda a: np.asarray(a)[i], params)


def eval_chunks(data: lm_data.TextData, cfg: lm_train.TrainConfig) -> list[np.ndarray]:
    """Validation windows in chunks of batch_size: a remainder that does not fill a chunk is left out; fewer windows
    than one chunk are repeated to fill it (tiny configurations)."""
    w = lm_data.val_windows(data, cfg.seq_len, cfg.eval_windows)
    n = max(1, w.shape[0] // cfg.batch_size) * cfg.batch_size
    w = w[:n] if w.shape[0] >= n else np.resize(w, (n, w.shape[1]))
    return [w[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]


def _emit(sink, rows: list[dict], row: dict) -> None:
    rows.append(row)
    if sink is not None:
        sink.write(json.dumps(row) + "\n")
        sink.flush()


def _evaluate(result: RunResult, evaluate, params, chunks, step: int, sink) -> np.ndarray:
    total = sum(np.asarray(evaluate(params, c), np.float64) for c in chunks)
    val = total / sum(c.shape[0] * (c.shape[1] - 1) for c in chunks)
    for s, v in zip(result.seeds, val):
        row = {"type": "eval", "seed": s, "step": step, "val_loss": float(v), "val_ppl": float(math.exp(v))}
        _emit(sink, result.evals, row)
    return val


def run(
    cfg: lm_train.TrainConfig,
    precision: str,
    seeds: tuple[int, ...],
    data: lm_data.TextData,
    *,
    devices: int = 1,
    metrics_path: Path | None = None,
    desc: str = "",
    progress: Callable | None = None,
) -> RunResult:
    """Train one precision for every seed (same data order), evaluating on the validation split. `progress` wraps
    the step range in a progress bar (progress(steps, desc=..., unit="step"), e.g. tqdm; None: no bar). ValueError
    if the data's ids do not fit the model's vocabulary or its splits are shorter than a window."""
    if cfg.model().vocab_size < data.vocab_size:
        raise ValueError(
            f"the model's vocabulary {cfg.model().vocab_size} is smaller than the data's {data.vocab_size}"
        )
    lm_data.require_windows(data, cfg.seq_len)
    rules = lm_train.precision_rules(precision, cfg.n_layers, cfg.stochastic_grads)
    opt = lm_train.optimizer(cfg)
    mesh = lm_train.data_mesh(devices)
    step, evaluate = lm_train.compile_fns(lm_train.make_step(cfg, rules, opt), lm_train.make_eval(cfg, rules), mesh)
    params = init_replicas(cfg, seeds)
    opt_state = jax.vmap(opt.init)(params)
    base_keys = jnp.stack([jax.random.key(s) for s in seeds])
    chunks, schedule = eval_chunks(data, cfg), lm_train.lr_schedule(cfg)
    result, ema = RunResult(precision, tuple(seeds)), None
    sink = metrics_path.open("w") if metrics_path is not None else None
    float(schedule(0))  # its eager ops compile on first use: not inside the timed steps (0.7 s on a GPU)
    t_start, t_log, tokens, t_eval = time.perf_counter(), None, 0, 0.0
    steps = range(cfg.steps)
    bar = steps if progress is None else progress(steps, desc=desc or precision, unit="step")
    try:
        for i in bar:
            batch = lm_data.train_batch(data, i, cfg.batch_size, cfg.seq_len, cfg.data_seed)
            keys = jax.vmap(lambda k, i=i: jax.random.fold_in(k, i))(base_keys)
            params, opt_state, loss, gnorm = step(params, opt_state, batch, keys)
            loss, gnorm = np.asarray(loss, np.float64), np.asarray(gnorm, np.float64)
            ema = loss if ema is None else EMA * ema + (1 - EMA) * loss
            if t_log is None:  # the first step includes compilation: time from its end
                t_log, tokens = time.perf_counter(), 0
            else:
                tokens += cfg.batch_size * cfg.seq_len * len(seeds)
            tps = tokens / max(time.perf_counter() - t_log - t_eval, 1e-9)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{float(ema.mean()):.4f}", tok_s=f"{tps:.0f}")
            if (i + 1) % cfg.log_every == 0 or i + 1 == cfg.steps:
                for s, v, e, g in zip(seeds, loss, ema, gnorm):
                    row = {"type": "train", "seed": s, "step": i + 1, "loss": float(v), "loss_ema": float(e)}
                    row |= {"lr": float(schedule(i)), "grad_norm": float(g), "tokens_per_s": tps}
                    _emit(sink, result.train, row)
            if (i + 1) % cfg.eval_every == 0 or i + 1 == cfg.steps:
                t0 = time.perf_counter()
                _evaluate(result, evaluate, params, chunks, i + 1, sink)
                t_eval += time.perf_counter() - t0 if t_log is not None else 0.0
    finally:
        if sink is not None:
            sink.close()
    result.params, result.seconds = params, time.perf_counter() - t_start
    result.tokens_per_s = tokens / max(time.perf_counter() - (t_log or t_start) - t_eval, 1e-9)
    return result


# ---------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(folder: Path, params, mcfg: llama.LlamaConfig, meta: dict) -> Path:
    """Write checkpoint.msgpack and model.json into `folder`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "checkpoint.msgpack").write_bytes(flax.serialization.to_bytes(jax.device_get(params)))
    (folder / "model.json").write_text(json.dumps({"model": mcfg.to_dict(), "meta": meta}, indent=2) + "\n")
    return folder


def load_checkpoint(folder: Path) -> tuple[dict, llama.LlamaConfig, dict]:
    """(params, model config, meta) from a folder written by save_checkpoint."""
    folder = Path(folder)
    if not (folder / "checkpoint.msgpack").exists():
        raise FileNotFoundError(
            f"no checkpoint.msgpack in {folder}: train one first, e.g. python -m experiments.train --precision none"
        )
    info = json.loads((folder / "model.json").read_text())
    params = flax.serialization.msgpack_restore((folder / "checkpoint.msgpack").read_bytes())
    params = jax.tree.map(jnp.asarray, params)
    return params, llama.LlamaConfig(**info["model"]), info.get("meta", {})

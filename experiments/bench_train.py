"""Training-step time per precision against the unquantized step measured in the same run.

    python -m experiments.bench_train                  # none, mxint8, mxfp8, nvfp4 at experiments.train's default
    python -m experiments.bench_train --precision none,mxint8,nvidia_nvfp4 --repeats 10
    python -m experiments.bench_train --preset gpu     # d_model 1024 on a GPU, bfloat16 baseline

Each precision string is one of analysis.lm.train's (none, a format spec trained on all six GEMM operands, or a
recipe). Every precision's jitted step (forward, backward, AdamW update; one seed, experiments.train's model,
batch and optimizer) is compiled and run once, then timed in --repeats interleaved rounds, each round running
--steps steps of every precision in turn on the same batch; a precision's ratio is the median over rounds of its
time / the unquantized time of the same round, so that a slow spell of a shared machine hits both alike. Target on
the 2-core CPU at the default configuration: MXINT8 and MXFP8 steps <= 1.5x the unquantized step
(docs/benchmarks.md).

Output (--out, default results/bench_train/): bench_train.json = {"machine", "config", "rows": [{"precision",
"label", "ms_per_step", "tokens_per_s", "ratio_to_none"}]}, bench_train.csv with the same rows.
"""

from __future__ import annotations

import dataclasses
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from analysis.lm import data as lm_data
from analysis.lm import run as lm_run
from analysis.lm import train as lm_train
from analysis.timing import interleaved_seconds
from experiments import common

BASELINE = "none"


@dataclasses.dataclass(frozen=True)
class Config(lm_train.TrainConfig):
    precision: tuple[str, ...] = ("none", "mxint8", "mxfp8", "nvfp4")  # the first must be 'none' (the baseline)
    repeats: int = 7  # timed rounds; the median ratio is reported
    steps_per_round: int = 2  # steps of each precision per round

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "precision", common.lower_all(self.precision))  # row names in one spelling
        if not self.precision or self.precision[0] != BASELINE:
            raise ValueError("--precision must start with 'none': every ratio is to the unquantized step")
        for p in self.precision:
            lm_train.check_precision(p, self.n_layers)
        if min(self.repeats, self.steps_per_round) < 1:
            raise ValueError("--repeats and --steps-per-round must be positive")


GPU = dict(dim=1024, n_layers=4, n_heads=16, n_kv_heads=4, ffn_dim=4096, seq_len=1024, batch_size=8)
PRESETS = {
    "tiny": Config(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, seq_len=32, batch_size=4, repeats=2),
    "gpu": Config(**GPU, repeats=10),
}


def step_case(cfg: Config, precision: str, batch, key):
    """(fn, state) timing `steps_per_round` steps of one precision from fresh replicated parameters."""
    rules = lm_train.precision_rules(precision, cfg.n_layers)
    opt = lm_train.optimizer(cfg)
    step = jax.jit(lm_train.make_step(cfg, rules, opt), donate_argnums=(0, 1))
    params = lm_run.init_replicas(cfg, (0,))
    state = {"params": params, "opt": jax.vmap(opt.init)(params)}
    keys = key[None]

    def run(_):
        loss = None
        for _ in range(cfg.steps_per_round):
            state["params"], state["opt"], loss, _g = step(state["params"], state["opt"], batch, keys)
        return loss

    return run


def bench_rows(cfg: Config) -> list[dict]:
    """One row per precision, the baseline first."""
    data = lm_data.load_text()
    cfg = lm_train.for_data(cfg, data)
    batch = jnp.asarray(lm_data.train_batch(data, 0, cfg.batch_size, cfg.seq_len, cfg.data_seed))
    cases = [(step_case(cfg, p, batch, jax.random.key(1)), None) for p in cfg.precision]
    timed = interleaved_seconds(cases, cfg.repeats, 1)
    base = np.asarray(timed[0][0])
    rows = []
    for p, (times, error) in zip(cfg.precision, timed, strict=True):
        ms = statistics.median(times) / cfg.steps_per_round * 1e3 if times else float("nan")
        rules = lm_train.precision_rules(p, cfg.n_layers)
        label = "none" if rules is None else getattr(rules, "name", None) or rules[-1][1].label
        row = {"precision": p, "label": label, "ms_per_step": ms, "error": error}
        row["tokens_per_s"] = cfg.batch_size * cfg.seq_len / (ms / 1e3) if times else float("nan")
        row["ratio_to_none"] = float(np.median(np.asarray(times) / base)) if times and base.size else float("nan")
        rows.append(row)
    return rows


def main(argv=None) -> dict:
    cfg, out = common.parse_config(Config, argv, __doc__, PRESETS)
    result, folder = common.save_rows("bench_train", "bench_train", out, cfg, bench_rows(cfg))
    keys = ("precision", "ms_per_step", "tokens_per_s", "ratio_to_none")
    table = [tuple(r[k] for k in keys) for r in result["rows"]]
    print(f"{result['machine']}; {cfg.batch_size} x {cfg.seq_len} tokens per step, model dim {cfg.dim}")
    print(common.format_table(["precision", "ms / step", "tokens/s", "/ none"], table, ".2f"))
    common.print_failures(result["rows"], ("precision",))
    print(f"\nwrote {folder}/bench_train.json and bench_train.csv")
    return result


if __name__ == "__main__":
    main()

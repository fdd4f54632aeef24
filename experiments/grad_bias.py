"""Direct gradient-bias measurement: exact vs six-operand-quantized gradients of the same Llama parameters on the
same real-text batches, for asymmetric/symmetric INT with bf16/float32 scale arithmetic, MX/NV 8- and 4-bit
formats and stochastic rounding (paper section 3.2 and App. D.2 infer the bias from loss curves only).

    python -m experiments.grad_bias                  # 19 cases, 8 batches, 4 SR keys: about 10 min on 2 CPU cores
    python -m experiments.grad_bias --checkpoint results/train/none   # gradients of a trained model
    python -m experiments.grad_bias --tiny           # under a minute (alias of --preset tiny); the test suite's run

Parameters: --checkpoint DIR (from experiments.train), else a fresh model trained unquantized for --pretrain-steps.
Cases: precision strings of analysis.lm.train ("name:key=value...") with an optional "+sr" (stochastic rounding of
the two dY operands, averaged over --sr-keys keys per batch). Statistics (analysis.grad_bias.BiasStats): bias =
mean over batches and keys of g_hat - g; relative_bias = ||bias|| / rms ||g||, noise_floor its standard error
(bias_z = ratio: about 1 or less means no detectable bias), cosine, mean_signed_error = mean(bias) / mean|g| with its
z-score. Operands (captured X, W, dY of every quantized layer on the first batch, each blocked along both of its
GEMM axes): extreme_code_fraction = blocks holding the extra code -2^(b-1) / non-zero blocks, and
operand_signed_error = sum(Q(x) - x) / sum|x| per operand kind (x, w, dy): negative means values pushed downwards;
operand_signed_error_z: the same in standard errors, rows of the operand matrices taken as independent samples.

Output (--out, default results/grad_bias/):
  grad_bias.json  stable keys:
    cases  [{"case", "format", "label", "int_range" (null for FP), "scale", "scale_dtype", "block_size",
             "stochastic", "relative_bias", "relative_error", "noise_floor", "bias_z", "cosine",
             "mean_signed_error", "mean_signed_error_z", "extreme_code_fraction",
             "operand_signed_error": {"x", "w", "dy"}, "operand_signed_error_z": {"x", "w", "dy"},
             "per_layer": {path: {...}}}]
    algorithm1 {"bfloat16", "float16", "float32"} (paper Table 11 fractions), params_source, config, machine
  grad_bias.csv  one row per case (no per-layer data);  grad_bias.png  bias vs noise floor, signed errors
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import jax
import numpy as np

import lowbit_jax as lb
from analysis import grad_bias, plotting
from analysis.lm import data as lm_data
from analysis.lm import run as lm_run
from analysis.lm import train as lm_train
from experiments import common
from lowbit_jax.models import llama

BF16_INT8 = "int8_channel:block_size=32:scale_dtype=bfloat16"
F32_INT8 = "int8_channel:block_size=32"
DEFAULT_CASES = (
    "fp32",
    f"{BF16_INT8}:int_range=asymmetric",
    f"{BF16_INT8}:int_range=symmetric",
    f"{F32_INT8}:int_range=asymmetric",
    f"{F32_INT8}:int_range=symmetric",
    "mxint8:scale_dtype=bfloat16:int_range=asymmetric",
    "mxint8:scale_dtype=bfloat16:int_range=symmetric",
    "mxint8:int_range=asymmetric",
    "mxint8",
    "mxfp8",
    "mxint4",
    "mxfp4",
    "nvint4",
    "nvfp4",
    f"{BF16_INT8}:int_range=asymmetric+sr",
    "mxint8+sr",
    "mxfp8+sr",
    "mxfp4+sr",
    "nvfp4+sr",
)
ROLES = {"x": ("fwd", "dw"), "w": ("fwd", "dx"), "dy": ("dx", "dw")}


def parse_case(text: str) -> tuple[lb.Format, bool]:
    """'precision[+sr]' (any case) -> (format, stochastic)."""
    text = text.strip()
    base, sr = (text[: -len("+sr")], True) if text.lower().endswith("+sr") else (text, False)
    fmt = lm_train.parse_precision(base)
    if fmt is None:
        raise ValueError(f"case {text!r}: 'none' has nothing to measure; use 'fp32' as the identity control")
    return fmt, sr


@dataclasses.dataclass(frozen=True)
class Config(lm_train.SmallTrainConfig):
    eval_windows: int = 64
    pretrain_steps: int = 150  # unquantized training steps of the fresh model (no --checkpoint; 0 = none)
    cases: tuple[str, ...] = DEFAULT_CASES  # precision specs, +sr for stochastic rounding of dY
    n_batches: int = 8  # real-text batches averaged (>= 2)
    sr_keys: int = 4  # stochastic-rounding keys per batch (+sr cases)
    checkpoint: str = ""  # checkpoint folder from experiments.train ('' = a fresh model, --pretrain-steps)
    seed: int = 0  # seed of the fresh model and the stochastic-rounding keys

    def __post_init__(self):
        super().__post_init__()
        for c in self.cases:
            parse_case(c)
        if self.n_batches < 2 or self.sr_keys < 1 or self.pretrain_steps < 0:
            raise ValueError("--n-batches must be >= 2 (the bias needs a standard error), --sr-keys >= 1")

    def check_paths(self) -> None:
        """FileNotFoundError if --checkpoint names a folder without a checkpoint (before any work)."""
        if self.checkpoint:
            common.require_checkpoint(self.checkpoint, "--checkpoint")


TINY = dict(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, seq_len=32, batch_size=4, pretrain_steps=0)
TINY |= dict(n_batches=2, sr_keys=2)
TINY_CASES = ("fp32", f"{BF16_INT8}:int_range=asymmetric", f"{BF16_INT8}:int_range=symmetric", "mxfp4+sr")
PRESETS = {"tiny": Config(cases=TINY_CASES, **TINY)}


def model_params(cfg: Config, data: lm_data.TextData) -> tuple[dict, llama.LlamaConfig, str]:
    """(params, model config, description): from --checkpoint, else trained unquantized for --pretrain-steps."""
    if cfg.checkpoint:
        params, mcfg, meta = lm_run.load_checkpoint(Path(cfg.checkpoint))
        return params, mcfg, f"checkpoint {cfg.checkpoint} ({meta.get('precision')}, {meta.get('steps')} steps)"
    source = f"fresh model (seed {cfg.seed}), {cfg.pretrain_steps} unquantized training steps"
    if cfg.pretrain_steps == 0:
        return lm_run.replica(lm_run.init_replicas(cfg, (cfg.seed,))), cfg.model(), source
    warm = max(1, cfg.pretrain_steps // 20)
    pre = dataclasses.replace(cfg, steps=cfg.pretrain_steps, warmup_steps=warm, eval_every=cfg.pretrain_steps)
    res = lm_run.run(pre, "none", (cfg.seed,), data, desc="pretrain (unquantized)", progress=common.progress)
    return lm_run.replica(res.params), cfg.model(), source


def capture_operands(params, loss, batch) -> dict[str, list[np.ndarray]]:
    """The X, W and dY operands of every quantizable layer on one batch (unquantized model), as the (rows, K)
    matrices of both of their GEMM roles, grouped by kind."""
    with lb.capture(llama.rules(True)) as cap:
        jax.jit(jax.grad(loss))(params, batch)
    mats = {k: [] for k in ROLES}
    for tensors in cap.tensors.values():
        for name, t in tensors.items():
            mats[name] += [t.matrix(role) for role in ROLES[name]]
    return mats


def operand_summary(mats: dict[str, list[np.ndarray]], fmt: lb.Format) -> dict:
    """extreme_code_fraction over all operands and the signed error per kind."""
    stats = dict(zip(mats, grad_bias.operand_stats_groups(list(mats.values()), fmt)))
    hits, blocks = sum(s.extra_code_blocks for s in stats.values()), sum(s.blocks for s in stats.values())
    return {
        "extreme_code_fraction": hits / blocks if blocks else 0.0,
        "operand_signed_error": {k: s.signed_error for k, s in stats.items()},
        "operand_signed_error_z": {k: s.signed_error_z for k, s in stats.items()},
    }


def run_case(text: str, params, mcfg, batches, exact, operands, cfg: Config) -> dict:
    """All statistics of one case."""
    fmt, sr = parse_case(text)
    loss = lambda p, b: llama.loss_fn(p, mcfg, b)
    qfn = grad_bias.grad_fn(loss, llama.rules(lb.QDotConfig.train(fmt, stochastic_grads=sr)), stochastic=sr)
    keys = [
        jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed + 1), b), cfg.sr_keys) for b in range(len(batches))
    ]
    quantized = [
        [grad_bias.flat_grads(qfn(params, batch, k)) for k in (keys[b] if sr else keys[b][:1])]
        for b, batch in enumerate(batches)
    ]
    stats = grad_bias.bias_statistics(exact, quantized)
    elem = fmt.elem
    return {
        "case": text,
        "format": fmt.name,
        "label": fmt.label + ("+sr" if sr else ""),
        "int_range": elem.int_range if elem is not None and elem.kind == "int" else None,
        "scale": fmt.scale,
        "scale_dtype": fmt.scale_dtype,
        "block_size": fmt.block_size,
        "stochastic": sr,
        **dataclasses.asdict(stats),
        **operand_summary(operands, fmt),
    }


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = ["--preset=tiny" if a == "--tiny" else a for a in argv]  # --tiny: the spelling of --preset tiny
    cfg, out = common.parse_config(Config, argv, __doc__, PRESETS)
    folder, t0 = common.output_dir("grad_bias", out), time.perf_counter()
    data = lm_data.load_text()
    params, mcfg, source = model_params(cfg, data)
    batches = [
        lm_data.train_batch(data, 10_000 + b, cfg.batch_size, cfg.seq_len, cfg.data_seed) for b in range(cfg.n_batches)
    ]
    loss = lambda p, b: llama.loss_fn(p, mcfg, b)
    exact_fn = grad_bias.grad_fn(loss, llama.rules(lb.QDotConfig()))  # the same GEMMs, no quantizer
    exact = [grad_bias.flat_grads(exact_fn(params, b, None)) for b in batches]
    operands = capture_operands(params, loss, batches[0])
    cases = [
        run_case(c, params, mcfg, batches, exact, operands, cfg)
        for c in common.progress(cfg.cases, desc="cases", unit="case")
    ]
    result = {
        "cases": cases,
        "algorithm1": grad_bias.overflow_probe(jax.random.key(cfg.seed), (1024, 1024)),
        "params_source": source,
        "config": cfg,
        "machine": common.machine_description(),
        "seconds": time.perf_counter() - t0,
    }
    common.write_json(folder / "grad_bias.json", result)
    common.write_csv(folder / "grad_bias.csv", [{k: v for k, v in c.items() if not isinstance(v, dict)} for c in cases])
    plotting.save(plotting.grad_bias_figure(cases), folder / "grad_bias.png")
    print_summary(result)
    return result


def print_summary(result: dict) -> None:
    rows = [
        (
            c["label"],
            c["relative_bias"],
            c["noise_floor"],
            c["bias_z"],
            c["cosine"],
            c["mean_signed_error"],
            c["mean_signed_error_z"],
            100 * c["extreme_code_fraction"],
            c["operand_signed_error"]["dy"],
            c["operand_signed_error_z"]["dy"],
        )
        for c in result["cases"]
    ]
    headers = ["case", "rel.bias", "floor", "z", "cosine", "signed", "signed z", "extra code %", "dY signed", "dY z"]
    print(f"\nparameters: {result['params_source']}")
    print(common.format_table(headers, rows, ".3g"))
    print(f"\nwrote grad_bias.json, grad_bias.csv, grad_bias.png ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()

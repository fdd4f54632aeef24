"""Direct gradient-bias measurement: exact vs six-operand-quantized gradients of the same Llama parameters on the
same real-text batches, for asymmetric/symmetric INT with bf16/float32 scale arithmetic, MX/NV 8- and 4-bit
formats and stochastic rounding (paper section 3.2 and App. D.2 infer the bias from loss curves only).

    python -m experiments.grad_bias                  # 19 cases, 8 batches, 4 SR keys: about 10 min on 2 CPU cores
    python -m experiments.grad_bias --checkpoint results/train/none   # gradients of a trained model
    python -m experiments.grad_bias --tiny           # under a minute (alias of --preset tiny); the test suite's run
    python -m experiments.grad_bias --preset recipes --n-batches 96 --sr-keys 2   # RECIPE_CASES: about 15 min
    python -m experiments.grad_bias --cases fp32,nvidia_nvfp4,mxfp8_rceil:grads=e5m2 --sr-keys 8   # chosen recipes

Parameters: --checkpoint DIR (from experiments.train), else a fresh model trained unquantized for --pretrain-steps.
Cases: format precision strings of analysis.lm.train ("name:key=value...") with an optional "+sr" (stochastic
rounding of the two dY operands, averaged over --sr-keys keys per batch), "dy:precision[+sr]" (only the two dY
operands quantized: a backward-bias control, unbiased exactly for dy:mxfp4+sr, see case_config), or recipe
precision strings of lowbit_jax.recipes ("nvidia_nvfp4", "nvidia_nvfp4:last=1", "mxfp8_rceil:grads=e5m2",
"quartet2_nvfp4"; see lm_train.is_recipe): the recipe's own rules place every quantizer (kept layers in high
precision), and gradients are averaged over --sr-keys keys when the recipe rounds stochastically or with MS-EDEN.
RECIPE_CASES (--preset recipes) lists fp32 (the identity control), the 4-bit baselines nvfp4 and nvfp4+sr, the
controls dy:mxfp4+sr and dy:nvfp4+sr, and every recipe (quartet2_nvfp4 once lowbit_jax.eden exists).
Statistics (analysis.grad_bias.BiasStats): bias = mean over batches and keys of g_hat - g; relative_bias =
||bias|| / rms ||g||, noise_floor its standard error (bias_z = ratio: about 1 or less means no detectable bias),
cosine, mean_signed_error = mean(bias) / mean|g| with its z-score. Operands (captured X, W, dY of every quantized
layer on the first batch, each blocked along both of its GEMM axes): extreme_code_fraction = blocks holding the
extra code -2^(b-1) / non-zero blocks, and operand_signed_error = sum(Q(x) - x) / sum|x| per operand kind (x, w,
dy): negative means values pushed downwards; operand_signed_error_z: the same in standard errors, rows of the
operand matrices taken as independent samples.
Format cases quantize the operands there with round-to-nearest (a +sr case repeats its RTN numbers); recipe and
dy: cases use each operand's own rounding.
Forward / backward split: g_fwd is the gradient with only the forward GEMM's quantizers (the backward GEMMs exact,
analysis.grad_bias.forward_only); "forward" holds the statistics of g_fwd against g (what quantizing the forward
pass does to the gradient), "backward" those of g_hat against g_fwd (what the backward quantizers add: an unbiased
backward estimator reads bias_z about 1 and |mean_signed_error_z| < 2 there; dy:mxfp4+sr is that control).
For a recipe the operand statistics cover only the layers it quantizes with rules.config, and each operand role
(x_fwd, x_dw, w_fwd, w_dx, dy_dx, dy_dw) is quantized as that layer's GEMM quantizes it (lb.qdot.quantize_operand:
rotation undone, stochastic rounding and MS-EDEN with the layer's key from the first batch's first key, 2-D tiles).

Output (--out, default results/grad_bias/):
  grad_bias.json  stable keys:
    cases  [{"case", "format" (a recipe's name), "label" (the format's, or the recipe's QDotConfig label),
             "int_range" (null for FP and recipes), "scale", "scale_dtype", "block_size" (null for recipes),
             "stochastic" (+sr, or a recipe that needs a key), "relative_bias", "relative_error", "noise_floor",
             "bias_z", "cosine", "mean_signed_error", "mean_signed_error_z", "extreme_code_fraction",
             "operand_signed_error": {"x", "w", "dy"}, "operand_signed_error_z": {"x", "w", "dy"},
             "per_layer": {path: {...}},
             "forward", "backward": {"relative_bias", "relative_error", "noise_floor", "bias_z", "cosine",
                                     "mean_signed_error", "mean_signed_error_z", "samples"}}]
    algorithm1 {"bfloat16", "float16", "float32"} (paper Table 11 fractions), params_source, config, machine
  grad_bias.csv  one row per case (no per-layer data);  grad_bias.png  bias vs noise floor, signed errors
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import time
import zlib
from pathlib import Path

import jax
import numpy as np

import lowbit_jax as lb
from analysis import grad_bias, plotting
from analysis.lm import data as lm_data
from analysis.lm import run as lm_run
from analysis.lm import train as lm_train
from experiments import common
from lowbit_jax import interceptor
from lowbit_jax.models import llama
from lowbit_jax.qdot_config import GEMMS

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
# The recipe comparison (--preset recipes): the identity control, the 4-bit format baselines, two backward controls
# (SR on dY alone: MXFP4, unbiased exactly, and NVFP4), then every recipe. quartet2_nvfp4 needs lowbit_jax.eden
# (MS-EDEN); it joins the preset once that module exists.
HAS_EDEN = importlib.util.find_spec("lowbit_jax.eden") is not None
RECIPE_CASES = (
    "fp32",
    "nvfp4",
    "nvfp4+sr",
    "dy:mxfp4+sr",
    "dy:nvfp4+sr",
    "paper_mxint8",
    "paper_mxfp8",
    "mxfp8_rceil",
    "mxfp8_rceil:grads=e5m2",
)
RECIPE_CASES += ("nvidia_nvfp4",) + (("quartet2_nvfp4",) if HAS_EDEN else ())
ROLES = {"x": ("fwd", "dw"), "w": ("fwd", "dx"), "dy": ("dx", "dw")}


def parse_case(text: str) -> tuple[lb.Format, bool]:
    """'precision[+sr]' (any case) -> (format, stochastic); for a format case (a recipe is checked by
    lm_train.check_precision)."""
    text = text.strip()
    base, sr = (text[: -len("+sr")], True) if text.lower().endswith("+sr") else (text, False)
    fmt = lm_train.parse_precision(base)
    if fmt is None:
        raise ValueError(f"case {text!r}: 'none' has nothing to measure; use 'fp32' as the identity control")
    return fmt, sr


DY_ONLY = "dy:"  # case prefix: only the two dY operands quantized (the backward-bias control)


def case_config(text: str) -> tuple[lb.QDotConfig, lb.Format, bool]:
    """(config, format, stochastic) of a format case: 'precision[+sr]' quantizes all six operands (+sr: SR on both
    dY operands); 'dy:precision[+sr]' only the two dY operands, the forward GEMM and the backward X and W exact.
    The backward is linear in dY, so 'dy:<fmt>+sr' is unbiased exactly when the format's SR is: for MX formats
    (UE8M0 ceil scale, no element clips), not for NV formats, whose E4M3 block scale can round below amax / Qmax so
    that the block maximum clips and SR pulls it toward zero (tests/test_grad_bias.py measures both)."""
    text = text.strip()
    dy_only = text.lower().startswith(DY_ONLY)
    fmt, sr = parse_case(text[len(DY_ONLY) :] if dy_only else text)
    if dy_only:
        return lb.QDotConfig(dy_dx=fmt, dy_dw=fmt, stochastic_grads=sr), fmt, sr
    return lb.QDotConfig.train(fmt, stochastic_grads=sr), fmt, sr


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
            lm_train.check_precision(c, self.n_layers) if lm_train.is_recipe(c) else case_config(c)
        if self.n_batches < 2 or self.sr_keys < 1 or self.pretrain_steps < 0:
            raise ValueError("--n-batches must be >= 2 (the bias needs a standard error), --sr-keys >= 1")

    def check_paths(self) -> None:
        """FileNotFoundError if --checkpoint names a folder without a checkpoint (before any work)."""
        if self.checkpoint:
            common.require_checkpoint(self.checkpoint, "--checkpoint")


TINY = dict(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, seq_len=32, batch_size=4, pretrain_steps=0)
TINY |= dict(n_batches=2, sr_keys=2)
TINY_CASES = ("fp32", f"{BF16_INT8}:int_range=asymmetric", f"{BF16_INT8}:int_range=symmetric", "mxfp4+sr")
PRESETS = {"tiny": Config(cases=TINY_CASES, **TINY), "recipes": Config(cases=RECIPE_CASES)}


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


@dataclasses.dataclass(frozen=True)
class OperandMatrix:
    """One captured operand in one GEMM role: layer path and call, kind (x, w, dy), role (fwd, dx, dw) and its
    canonical (rows, K) matrix in that GEMM."""

    path: str
    call: int
    kind: str
    role: str
    matrix: np.ndarray

    @property
    def operand(self) -> str:
        """The QDotConfig operand name, e.g. 'x_dw'."""
        return f"{self.kind}_{self.role}"


def capture_matrices(params, loss, batch) -> list[OperandMatrix]:
    """The X, W and dY operands of every quantizable layer on one batch (unquantized model), as the (rows, K)
    matrices of both of their GEMM roles (ROLES)."""
    with lb.capture(llama.rules(True)) as cap:
        jax.jit(jax.grad(loss))(params, batch)
    return [
        OperandMatrix(path, t.call, name, role, t.matrix(role))
        for path, tensors in cap.tensors.items()
        for name, t in tensors.items()
        for role in ROLES[name]
    ]


def capture_operands(params, loss, batch) -> dict[str, list[np.ndarray]]:
    """The matrices of capture_matrices grouped by kind (x, w, dy)."""
    return _by_kind(capture_matrices(params, loss, batch), lambda m: m.matrix)


def _by_kind(mats: list[OperandMatrix], value) -> dict[str, list]:
    out: dict[str, list] = {k: [] for k in ROLES}
    for m in mats:
        out[m.kind].append(value(m))
    return out


def _summary(stats: dict[str, grad_bias.OperandStats]) -> dict:
    hits, blocks = sum(s.extra_code_blocks for s in stats.values()), sum(s.blocks for s in stats.values())
    return {
        "extreme_code_fraction": hits / blocks if blocks else 0.0,
        "operand_signed_error": {k: s.signed_error for k, s in stats.items()},
        "operand_signed_error_z": {k: s.signed_error_z for k, s in stats.items()},
    }


def operand_summary(mats: dict[str, list[np.ndarray]], fmt: lb.Format) -> dict:
    """extreme_code_fraction over all operands and the signed error per kind."""
    return _summary(dict(zip(mats, grad_bias.operand_stats_groups(list(mats.values()), fmt))))


def layer_config(config: lb.QDotConfig, path: str, call: int, key) -> tuple[lb.QDotConfig, jax.Array | None]:
    """The config and key that lb.quantized(rules, key=key) hands the GEMMs of layer `path` (call `call`): the
    per-layer key, or without a key a per-layer Hadamard seed for key-drawn rotations (lowbit_jax.interceptor)."""
    if key is not None:
        return config, interceptor.layer_key(key, path, call)
    if any((r := config.rotation_of(g)) is not None and r.signs == "key" for g in GEMMS):
        config = dataclasses.replace(config, rotation_seed=zlib.crc32(f"{path}#{call}".encode()) & 0x7FFFFFFF)
    return config, None


def recipe_operand_summary(mats: list[OperandMatrix], rules: list, key, config: lb.QDotConfig | None = None) -> dict:
    """operand_summary for a recipe (or any rules): only the layers that `rules` quantize with `config` (default
    rules.config, a RecipeRules' own; not the kept head or high-precision blocks), each operand quantized as that
    layer's GEMM quantizes it (OperandQuantizer, with the layer's key derived from `key` as lb.quantized derives it;
    None for configs that need none)."""
    config = rules.config if config is None else config
    parsed = interceptor.parse_rules(rules)
    chosen = [m for m in mats if interceptor.match(parsed, m.path) is config]
    if not chosen:
        raise ValueError(f"no captured layer runs the config {config.label}")
    bound = {m.path: layer_config(config, m.path, m.call, key) for m in chosen}
    groups = _by_kind(chosen, lambda m: m.matrix)
    quantizers = _by_kind(chosen, lambda m: grad_bias.OperandQuantizer(bound[m.path][0], m.operand))
    keys = _by_kind(chosen, lambda m: bound[m.path][1])
    stats = grad_bias.operand_stats_groups(list(groups.values()), list(quantizers.values()), list(keys.values()))
    return _summary(dict(zip(groups, stats)))


def sr_keys(cfg: Config, n_batches: int) -> list[jax.Array]:
    """Per batch, cfg.sr_keys keys for stochastic cases (formats with +sr, recipes that need a key)."""
    return [
        jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed + 1), b), cfg.sr_keys) for b in range(n_batches)
    ]


def run_case(text: str, params, mcfg, batches, exact, operands: list[OperandMatrix], cfg: Config) -> dict:
    """All statistics of one case: a format ('precision[+sr]') or a recipe precision string."""
    if lm_train.is_recipe(text):
        return run_recipe_case(text, params, mcfg, batches, exact, operands, cfg)
    qcfg, fmt, sr = case_config(text)
    rules, keys = llama.rules(qcfg), sr_keys(cfg, len(batches))
    dy_only = text.strip().lower().startswith(DY_ONLY)
    if dy_only:  # x and w enter their GEMMs exact: the per-operand path (the format path quantizes all three)
        ops = recipe_operand_summary(operands, rules, keys[0][0] if sr else None, qcfg)
    else:
        ops = operand_summary(_by_kind(operands, lambda m: m.matrix), fmt)
    elem = fmt.elem
    return {
        "case": text,
        "format": fmt.name,
        "label": DY_ONLY * dy_only + fmt.label + ("+sr" if sr else ""),
        "int_range": elem.int_range if elem is not None and elem.kind == "int" else None,
        "scale": fmt.scale,
        "scale_dtype": fmt.scale_dtype,
        "block_size": fmt.block_size,
        "stochastic": sr,
        **gradient_stats(rules, params, mcfg, batches, exact, keys),
        **ops,
    }


def run_recipe_case(text: str, params, mcfg, batches, exact, operands: list[OperandMatrix], cfg: Config) -> dict:
    """A recipe case: gradients under the recipe's rules (averaged over --sr-keys keys when it needs a key), operand
    statistics with the recipe's own quantizers on the layers it quantizes (key: the first batch's first key)."""
    rules = lm_train.recipe_rules(text, mcfg.n_layers)
    stochastic = lm_train.needs_key(rules)
    keys = sr_keys(cfg, len(batches))
    return {
        "case": text,
        "format": rules.name,
        "label": rules.config.label,
        "int_range": None,
        "scale": None,
        "scale_dtype": None,
        "block_size": None,
        "stochastic": stochastic,
        **gradient_stats(rules, params, mcfg, batches, exact, keys),
        **recipe_operand_summary(operands, rules, keys[0][0] if stochastic else None),
    }


def _loss(mcfg):
    return lambda p, b: llama.loss_fn(p, mcfg, b)


def _grads(rules: list, params, mcfg, batches, keys) -> list[list[dict]]:
    """Per batch, the gradients under `rules`: one per key when they need a key, else one."""
    stochastic = lm_train.needs_key(rules)
    qfn = grad_bias.grad_fn(_loss(mcfg), rules, stochastic=stochastic)
    return [
        [grad_bias.flat_grads(qfn(params, batch, k)) for k in (keys[b] if stochastic else keys[b][:1])]
        for b, batch in enumerate(batches)
    ]


def gradient_stats(rules: list, params, mcfg, batches, exact, keys) -> dict:
    """BiasStats of the gradients under `rules` against the exact ones (top-level keys), and the split into the
    forward pass's share ("forward": the gradient with only the forward quantizers, grad_bias.forward_rules,
    against exact) and the backward quantizers' share ("backward": the full gradient against that reference; for
    a forward pass that needs a key, the reference uses each batch's first key). Both without per_layer."""
    quantized = _grads(rules, params, mcfg, batches, keys)
    reference = [row[0] for row in _grads(grad_bias.forward_rules(rules), params, mcfg, batches, keys)]
    brief = lambda s: {k: v for k, v in dataclasses.asdict(s).items() if k != "per_layer"}
    return {
        **dataclasses.asdict(grad_bias.bias_statistics(exact, quantized)),
        "forward": brief(grad_bias.bias_statistics(exact, [[r] for r in reference])),
        "backward": brief(grad_bias.bias_statistics(reference, quantized)),
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
    loss = _loss(mcfg)
    exact_fn = grad_bias.grad_fn(loss, llama.rules(lb.QDotConfig()))  # the same GEMMs, no quantizer
    exact = [grad_bias.flat_grads(exact_fn(params, b, None)) for b in batches]
    operands = capture_matrices(params, loss, batches[0])
    if not HAS_EDEN and cfg.cases == RECIPE_CASES:
        print("quartet2_nvfp4 left out: lowbit_jax.eden (MS-EDEN) is not available yet")
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
    plotting.save(plotting.grad_bias_figure([{**c, "label": display_name(c)} for c in cases]), folder / "grad_bias.png")
    print_summary(result)
    return result


def display_name(case: dict) -> str:
    """A row's name in tables and plots: the format label, or a recipe's case text (its config label is long)."""
    return case["case"] if lm_train.is_recipe(case["case"]) else case["label"]


def print_summary(result: dict) -> None:
    rows = [
        (
            display_name(c),
            c["relative_bias"],
            c["noise_floor"],
            c["bias_z"],
            c["cosine"],
            c["mean_signed_error"],
            c["mean_signed_error_z"],
            100 * c["extreme_code_fraction"],
            c["operand_signed_error"]["dy"],
            c["operand_signed_error_z"]["dy"],
            c["operand_signed_error_z"]["x"],
            c["operand_signed_error_z"]["w"],
            c["backward"]["bias_z"],
            c["backward"]["mean_signed_error_z"],
        )
        for c in result["cases"]
    ]
    headers = [
        "case",
        "rel.bias",
        "floor",
        "z",
        "cosine",
        "signed",
        "signed z",
        "extra code %",
        "dY signed",
        "dY z",
        "X z",
        "W z",
        "bwd z",
        "bwd signed z",
    ]
    print(f"\nparameters: {result['params_source']}")
    print(common.format_table(headers, rows, ".3g"))
    print(f"\nwrote grad_bias.json, grad_bias.csv, grad_bias.png ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()

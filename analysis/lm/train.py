"""Training core shared by the language-model experiments: config, precision strings, optimizer, vmapped steps.

Several seeds train at once: parameters carry a leading replica axis and the step is vmapped over it, while all
replicas see the same batch (same data order). Data parallelism: batches are sharded over a 1-D ('data',) mesh of
`devices` devices, parameters and optimizer state are replicated (GSPMD inserts the gradient all-reduce).
Precision strings: "none"; a lowbit_jax format name with ':'-separated overrides, e.g. "mxint8",
"int8_channel:block_size=32:scale_dtype=bfloat16:int_range=asymmetric" (all six GEMM operands in that format);
or a recipe of lb.recipes with ':'-separated options, e.g. "nvidia_nvfp4", "nvidia_nvfp4:last=1",
"mxfp8_rceil:grads=e5m2" (first / last count the model's blocks: n_blocks is the model's n_layers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import lowbit_jax as lb
from analysis.lm import data as lm_data
from lowbit_jax.models import llama


@dataclass(frozen=True)
class TrainConfig:
    """Model shape, data and optimizer settings of one training run (AdamW, warmup then cosine to min_lr_ratio)."""

    dim: int = 192  # model width
    n_layers: int = 4  # transformer layers
    n_heads: int = 6  # attention heads
    n_kv_heads: int = 2  # key/value heads (grouped-query attention)
    ffn_dim: int = 512  # SwiGLU hidden width
    seq_len: int = 128  # tokens per training window
    batch_size: int = 16  # windows per step
    steps: int = 600  # optimizer steps
    lr: float = 2e-3  # peak learning rate
    warmup_steps: int = 30  # linear warmup steps
    min_lr_ratio: float = 0.1  # final learning rate / peak (cosine decay)
    weight_decay: float = 0.1  # AdamW decoupled weight decay (matrices only)
    clip_norm: float = 1.0  # global gradient-norm clip
    eval_every: int = 100  # steps between validation evaluations
    eval_windows: int = 0  # validation windows evaluated (0 = the whole validation split)
    log_every: int = 10  # steps between training-metric rows
    data_seed: int = 0  # seed of the batch order
    dtype: str = "auto"  # unquantized compute dtype: float32, bfloat16 or auto (float32 on CPU, bfloat16 on GPU)
    stochastic_grads: bool = False  # stochastic rounding of the two dY operands
    vocab_size: int = 0  # model vocabulary (0 = the data's: 256 for UTF-8 bytes, else the tokenizer's get_vocab_size())

    def __post_init__(self):
        self.model()
        if min(self.seq_len, self.batch_size, self.steps, self.eval_every, self.log_every) < 1:
            raise ValueError("--seq-len, --batch-size, --steps, --eval-every and --log-every must be positive")
        if not 0 <= self.warmup_steps < self.steps or not 0 < self.min_lr_ratio <= 1 or self.lr <= 0:
            raise ValueError("need 0 <= --warmup-steps < --steps, 0 < --min-lr-ratio <= 1 and --lr > 0")
        if self.vocab_size < 0:
            raise ValueError(f"--vocab-size must be 0 (the data's) or positive, got {self.vocab_size}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"--dtype must be auto, float32 or bfloat16, got {self.dtype!r}")

    def model(self) -> llama.LlamaConfig:
        return llama.LlamaConfig(
            vocab_size=self.vocab_size or lm_data.VOCAB_SIZE,
            dim=self.dim,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            ffn_dim=self.ffn_dim,
            dtype=resolve_dtype(self.dtype),
        )


def for_data(cfg: TrainConfig, data: lm_data.TextData) -> TrainConfig:
    """`cfg` with vocab_size set to the data's if it is 0; ValueError if an explicit one is too small for the data."""
    if not cfg.vocab_size:
        return dataclasses.replace(cfg, vocab_size=data.vocab_size)
    if cfg.vocab_size < data.vocab_size:
        raise ValueError(f"--vocab-size {cfg.vocab_size} is smaller than the data's vocabulary {data.vocab_size}")
    return cfg


def param_shapes(cfg: TrainConfig) -> dict:
    """The parameter tree of cfg's model as jax.ShapeDtypeStruct leaves (jax.eval_shape: nothing is allocated)."""
    mcfg = cfg.model()
    init = lambda k: llama.Llama(mcfg).init(k, jnp.zeros((1, 8), jnp.int32))["params"]
    return jax.eval_shape(init, jax.random.key(0))


def n_params(cfg: TrainConfig, exclude: tuple[str, ...] = ()) -> int:
    """Parameter count of cfg's model (llama.n_params, optionally without top-level modules such as
    ('embed', 'lm_head')), from shapes alone."""
    return llama.n_params(param_shapes(cfg), exclude)


def train_flops_per_token(cfg: TrainConfig) -> float:
    """Training FLOPs per token, forward and backward: 6 x the weights of the matrix products (every 2-D parameter
    but the embedding table) plus the attention score and value products, 12 x n_layers x seq_len x dim (a full
    T x T product; causal masking is not subtracted)."""
    shapes = {k: v for k, v in param_shapes(cfg).items() if k != "embed"}
    matmul = sum(int(v.size) for v in jax.tree.leaves(shapes) if v.ndim == 2)
    return 6.0 * matmul + 12.0 * cfg.n_layers * cfg.seq_len * cfg.dim


@dataclass(frozen=True)
class SmallTrainConfig(TrainConfig):
    """The smaller model shared by the many-run studies (clipping ablation, gradient bias)."""

    dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_dim: int = 384
    batch_size: int = 8


def resolve_dtype(dtype: str) -> str:
    """'auto' -> bfloat16 on GPU, float32 elsewhere (the unquantized baseline's compute dtype)."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if jax.default_backend() == "gpu" else "float32"


# ---------------------------------------------------------------------------------------------- precision
def parse_precision(text: str) -> lb.Format | None:
    """'none' -> None; anything else is a format spec for lb.get_format ('mxint8:block_size=64', 'fp(3,2)',
    'NVFP4', ...; docs/formats.md), whose errors name the bad part."""
    name, sep, _ = text.strip().partition(":")
    if name.strip().lower() == "none":
        if sep:
            raise ValueError(f"precision 'none' takes no overrides, got {text!r}")
        return None
    return lb.get_format(text)


def slug(text: str) -> str:
    """A folder name for a precision string."""
    return text.replace(":", "_").replace("=", "-")


_INT_OPTIONS = ("first", "last", "rotation")  # recipe options that take ints


def is_recipe(text: str) -> bool:
    """Whether a precision string names a recipe of lb.recipes (its text before the first ':')."""
    return text.strip().partition(":")[0].strip().lower() in lb.recipes.RECIPES


def recipe_rules(text: str, n_layers: int) -> lb.recipes.RecipeRules:
    """The rules of a recipe precision string "name[:option=value...]" for a model of n_layers blocks."""
    name, *parts = [p.strip() for p in text.strip().split(":")]
    kwargs: dict = {}
    for part in parts:
        key, sep, value = (v.strip() for v in part.partition("="))
        if not sep or not value:
            raise ValueError(f"recipe {text!r}: {part!r} is not option=value")
        if key in kwargs:
            raise ValueError(f"recipe {text!r}: option {key!r} is given twice")
        kwargs[key] = int(value) if key in _INT_OPTIONS and value.lstrip("-").isdigit() else value
    if kwargs.get("high_precision") == "none":
        kwargs["high_precision"] = None
    try:
        return lb.recipes.get_recipe(name.lower(), n_blocks=n_layers, **kwargs)
    except TypeError as err:  # an option the recipe function does not take
        raise ValueError(f"recipe {text!r}: {err}") from err


def precision_rules(text: str, n_layers: int, stochastic_grads: bool = False) -> list | None:
    """Interceptor rules of a precision string (None for 'none'): a recipe's rules, or every Dense but lm_head with
    the six operands in the format (stochastic_grads: SR on both dY operands)."""
    if is_recipe(text):
        if stochastic_grads:
            raise ValueError(f"--stochastic-grads is for format precisions; recipe {text!r} places its own rounding")
        return recipe_rules(text, n_layers)
    cfg = qdot_config(text, stochastic_grads)
    return None if cfg is None else llama.rules(cfg)


def check_precision(text: str, n_layers: int) -> None:
    """ValueError naming the bad part of a precision string."""
    if is_recipe(text):
        recipe_rules(text, n_layers)
    else:
        parse_precision(text)


def needs_key(rules: list | None) -> bool:
    """Whether some rule's config rounds stochastically (its steps then take a PRNG key)."""
    return any(isinstance(v, lb.QDotConfig) and v.needs_key for _, v in rules or ())


def qdot_config(precision: str, stochastic_grads: bool = False) -> lb.QDotConfig | None:
    """The six-operand training config of a format precision string (None for 'none')."""
    fmt = parse_precision(precision)
    return None if fmt is None else lb.QDotConfig.train(fmt, stochastic_grads=stochastic_grads)


# ---------------------------------------------------------------------------------------------- optimizer
def lr_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup to cfg.lr, cosine decay to cfg.min_lr_ratio * cfg.lr at the last step."""
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, max(cfg.warmup_steps, 1), max(cfg.steps, cfg.warmup_steps + 1), cfg.lr * cfg.min_lr_ratio
    )


def optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW (0.9, 0.95) with decoupled weight decay on matrices only."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    adamw = optax.adamw(lr_schedule(cfg), b1=0.9, b2=0.95, weight_decay=cfg.weight_decay, mask=decay_mask)
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)


# ---------------------------------------------------------------------------------------------- steps
def loss_under(mcfg: llama.LlamaConfig, rules: list | None) -> Callable:
    """loss(params, batch, key): mean cross-entropy with the GEMMs quantized by interceptor `rules` (None: none)."""

    def loss(params, batch, key=None):
        with lb.quantized(rules or [], key=key):
            return llama.loss_fn(params, mcfg, batch)

    return loss


def make_step(cfg: TrainConfig, rules: list | None, opt: optax.GradientTransformation) -> Callable:
    """step(params_R, opt_state_R, batch, keys_R) -> (params, opt_state, loss_R, grad_norm_R), vmapped over R."""
    loss = loss_under(cfg.model(), rules)
    use_key = needs_key(rules)

    def step(params, opt_state, batch, key):
        value, grads = jax.value_and_grad(loss)(params, batch, key if use_key else None)
        updates, opt_state = opt.update(grads, opt_state, params)
        gnorm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))  # optax.global_norm (deprecated)
        return optax.apply_updates(params, updates), opt_state, value, gnorm

    return jax.vmap(step, in_axes=(0, 0, None, 0))


EVAL_KEY_SEED = 0  # the fixed key of evaluation passes, for recipes whose forward rounds stochastically


def make_eval(cfg: TrainConfig, rules: list | None) -> Callable:
    """eval(params_R, windows) -> summed token NLL per replica, forward quantized as in training."""
    mcfg = cfg.model()
    key = jax.random.key(EVAL_KEY_SEED) if needs_key(rules) else None

    def total_nll(params, windows):
        with lb.quantized(rules or [], key=key):
            return jnp.sum(llama.token_nll(params, mcfg, windows))

    return jax.vmap(total_nll, in_axes=(0, None))


def data_mesh(devices: int):
    """A 1-D ('data',) mesh over the first `devices` devices (None for one device)."""
    if devices <= 1:
        return None
    available = jax.devices()
    if len(available) < devices:
        raise ValueError(
            f"--devices {devices}: only {len(available)} devices; on CPU set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} before starting Python"
        )
    return jax.make_mesh((devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=available[:devices])


def compile_fns(step, evaluate, mesh):
    """jit the step and eval; with a mesh, batches are sharded along 'data' and everything else replicated."""
    if mesh is None:
        return jax.jit(step), jax.jit(evaluate)
    rep, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    step = jax.jit(step, in_shardings=(rep, rep, shard, rep), out_shardings=rep)
    return step, jax.jit(evaluate, in_shardings=(rep, shard), out_shardings=rep)

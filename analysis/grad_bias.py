"""Gradient-bias statistics: the paper's Algorithm 1 (how often x / (x / 127) lands on 128 in low precision) and a
direct measurement: quantized against exact gradients of the same parameters, and the operands' extra-code hits."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

import lowbit_jax as lb
from lowbit_jax.blocks import layout
from lowbit_jax.qdot import quantize_operand
from lowbit_jax.qdot_config import GEMM_OPERANDS, is_tiled
from lowbit_jax.rounding import div_exact, round_to_dtype

PROBE_DTYPES = ("bfloat16", "float16", "float32")


@jax.jit(static_argnames=("dtype",))
def overflow_fraction(d: jax.Array, dtype: str) -> jax.Array:
    """Fraction of elements with round(D / S) == 128 where S = D / 127, every step rounded to `dtype`.

    Paper Algorithm 1 / Table 11 (BF16 16.82%, FP16 0.02%, FP32 0). Divisions are correctly rounded float32,
    then rounded to `dtype`, which is how PyTorch evaluates bf16/fp16 arithmetic on the CPU.
    """
    d = round_to_dtype(d, dtype)
    s = round_to_dtype(div_exact(d, jnp.float32(127.0)), dtype)
    ratio = round_to_dtype(div_exact(jnp.abs(d), jnp.abs(s)), dtype)
    return jnp.mean((jnp.round(ratio) == 128.0).astype(jnp.float32))


def overflow_probe(key: jax.Array, shape=(4096, 4096), dtypes=PROBE_DTYPES) -> dict[str, float]:
    """Algorithm 1 on D ~ N(0, 1) of `shape`: {dtype: fraction mapped to 128}."""
    d = jax.random.normal(key, shape, jnp.float32)
    return {dt: float(overflow_fraction(d, dt)) for dt in dtypes}


# ---------------------------------------------------------------------------------------------- direct bias
@dataclass(frozen=True)
class BiasStats:
    """Quantized gradients g_hat against exact gradients g over B batches x K stochastic-rounding keys.

    relative_bias = ||E[g_hat - g]|| / rms_b ||g_b||; relative_error = rms ||g_hat - g|| / rms_b ||g_b||;
    noise_floor = the standard error of that bias estimate (what relative_bias reads if the error has zero mean),
    bias_z = relative_bias / noise_floor; cosine = mean cos(g_hat, g); mean_signed_error = mean(E[g_hat - g]) /
    mean|g| over all elements, with its z-score over batches; per_layer: the same two per parameter path.
    """

    relative_bias: float
    relative_error: float
    noise_floor: float
    bias_z: float
    cosine: float
    mean_signed_error: float
    mean_signed_error_z: float
    per_layer: dict[str, dict[str, float]]
    samples: int


def flat_grads(tree) -> dict[str, np.ndarray]:
    """A gradient pytree as {'/'-joined path: float64 numpy array}."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v, np.float64) for path, v in leaves}


def _vec(d: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([v.ravel() for v in d.values()])


def _zscore(means: np.ndarray) -> float:
    """mean / standard error of per-sample values (0 when they do not vary)."""
    if means.size < 2 or not np.any(means != means[0]):
        return 0.0 if not np.any(means) else float(np.sign(means.mean()) * np.inf)
    return float(means.mean() / (means.std(ddof=1) / np.sqrt(means.size)))


def _signed(err: np.ndarray, g_abs: float) -> float:
    return float(err.mean() / g_abs) if g_abs > 0 else 0.0


def bias_statistics(exact: list[dict], quantized: list[list[dict]]) -> BiasStats:
    """BiasStats from exact[b] and quantized[b][k] gradients (flat dicts as from flat_grads)."""
    g = np.stack([_vec(e) for e in exact])
    q = np.stack([np.stack([_vec(s) for s in row]) for row in quantized])  # (B, K, N)
    err = q - g[:, None, :]
    scale = np.sqrt(np.mean(np.sum(g * g, axis=1)))
    unit = err.mean(axis=1) if err.shape[0] > 1 else err[0]  # independent units: batch means, else keys
    bias = unit.mean(axis=0)
    n = unit.shape[0]
    se = np.sqrt(np.sum((unit - bias) ** 2) / (n * (n - 1))) if n > 1 else 0.0
    norms = np.linalg.norm(q, axis=2) * np.linalg.norm(g, axis=1)[:, None]
    cos = np.sum(q * g[:, None, :], axis=2) / np.where(norms > 0, norms, 1.0)
    g_abs = float(np.mean(np.abs(g)))
    per_layer, start = {}, 0
    for path, v in exact[0].items():
        sl = slice(start, start + v.size)
        start += v.size
        layer_scale = np.sqrt(np.mean(np.sum(g[:, sl] ** 2, axis=1)))
        per_layer[path] = {
            "mean_signed_error": _signed(bias[sl], float(np.mean(np.abs(g[:, sl])))),
            "relative_bias": float(np.linalg.norm(bias[sl]) / layer_scale) if layer_scale > 0 else 0.0,
        }
    rel_bias = float(np.linalg.norm(bias) / scale) if scale > 0 else 0.0
    floor = float(se / scale) if scale > 0 else 0.0
    return BiasStats(
        relative_bias=rel_bias,
        relative_error=float(np.sqrt(np.mean(np.sum(err * err, axis=2))) / scale) if scale > 0 else 0.0,
        noise_floor=floor,
        bias_z=rel_bias / floor if floor > 0 else (0.0 if rel_bias == 0 else float("inf")),
        cosine=float(cos.mean()),
        mean_signed_error=_signed(bias, g_abs),
        mean_signed_error_z=_zscore(unit.mean(axis=1)),
        per_layer=per_layer,
        samples=int(err.shape[0] * err.shape[1]),
    )


def grad_fn(loss_fn, rules, stochastic: bool = False):
    """jit(params, batch, key) -> gradient of loss_fn(params, batch) with the GEMMs matched by `rules` quantized."""

    def grads(params, batch, key):
        def f(p):
            with lb.quantized(rules, key=key if stochastic else None):
                return loss_fn(p, batch)

        return jax.grad(f)(params)

    return jax.jit(grads)


FORWARD = ("x_fwd", "w_fwd")


def forward_only(config: lb.QDotConfig | None) -> lb.QDotConfig | None:
    """`config` with both backward GEMMs unquantized: the forward GEMM's formats, rotation and rounding (and the
    accumulation settings) only. The gradient under it is the quantized forward pass's with an exact backward, the
    reference that separates the backward quantizers' share of a gradient's error from the forward's."""
    if config is None:
        return None
    bits = {o: config.sr_bits_of(o) for o in FORWARD if config.is_stochastic(o) and config.sr_bits_of(o)}
    return lb.QDotConfig(
        x_fwd=config.x_fwd,
        w_fwd=config.w_fwd,
        rot_fwd=config.rotation_of("fwd"),
        stochastic=tuple(o for o in FORWARD if config.is_stochastic(o)),
        sr_bits=bits or None,
        eden=tuple(o for o in config.eden if o in FORWARD),
        accum_dtype=config.accum_dtype,
        rotation_seed=config.rotation_seed,
        impl=config.impl,
        accum_block=config.accum_block,
        accum_format=config.accum_format,
    )


def forward_rules(rules: list) -> list:
    """Interceptor rules with every QDotConfig replaced by forward_only(config) (patterns and order kept)."""
    return [(p, forward_only(v) if isinstance(v, lb.QDotConfig) else v) for p, v in rules]


# ---------------------------------------------------------------------------------------------- operands
@dataclass(frozen=True)
class BlockQuantizer:
    """The format path: m -> lb.fake_quant(m, fmt) in blocks along m's last axis (round to nearest), extra codes
    counted with the same format."""

    fmt: lb.Format

    def __call__(self, m: jax.Array, key: jax.Array | None = None) -> jax.Array:
        return lb.fake_quant(m, self.fmt, axis=-1)

    @property
    def count_format(self) -> lb.Format | None:
        return self.fmt


@dataclass(frozen=True)
class OperandQuantizer:
    """One GEMM operand (qdot_config.OPERANDS, e.g. 'dy_dw') as `config`'s GEMMs quantize it
    (lb.qdot.quantize_operand: rotation, rounding, 2-D tiles), for its canonical (rows, K) matrix in that GEMM; the
    key is the GEMM call's (the layer's) key. Extra codes are counted only where the operand is 1-D blocked, rounds
    to nearest and is not rotated (elsewhere the codes are not those of lb.quantize along the last axis)."""

    config: lb.QDotConfig
    operand: str

    def __call__(self, m: jax.Array, key: jax.Array | None = None) -> jax.Array:
        return quantize_operand(m, self.config, self.operand, key)

    @property
    def count_format(self) -> lb.Format | None:
        fmt, cfg, op = getattr(self.config, self.operand), self.config, self.operand
        gemm = next(g for g, ops in GEMM_OPERANDS.items() if op in ops)
        rot = cfg.rotation_of(gemm)
        plain = not is_tiled(fmt) and cfg.rounding_of(op) == "nearest" and (rot is None or not rot.rotates(op))
        return fmt if fmt is not None and plain else None


def _extra_code_blocks(x, fmt: lb.Format | None) -> tuple[jax.Array, jax.Array]:
    """(blocks holding the code -2^(b-1), non-zero blocks) of x (rows, K) quantized in blocks along K; (0, 0) for
    no format."""
    if fmt is None:
        return jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)
    lay = layout(x.shape, fmt.block_size, x.ndim - 1)
    blocks = jnp.sum(jnp.max(jnp.abs(lay.to_blocks(x)), axis=lay.block_axes) > 0)
    elem = fmt.elem
    if elem is None or elem.kind != "int" or elem.int_range != "asymmetric":
        return jnp.zeros((), blocks.dtype), blocks
    codes = lb.quantize(x, fmt, axis=-1).codes.astype(jnp.float32)
    code_lay = layout(codes.shape, lay.block[0], codes.ndim - 1)
    hits = jnp.any(code_lay.to_blocks(codes) == elem.min, axis=code_lay.block_axes)
    return jnp.sum(hits), blocks


@functools.partial(jax.jit, static_argnames="quantizers")
def _operand_pass(mats: list, keys: list, quantizers: tuple):
    """Extra-code hits, non-zero blocks and Q(m) - m of each matrix, with its own quantizer and key."""
    counts = [_extra_code_blocks(m, q.count_format) for m, q in zip(mats, quantizers, strict=True)]
    errs = [q(m, k) - m for m, k, q in zip(mats, keys, quantizers, strict=True)]
    return [c[0] for c in counts], [c[1] for c in counts], errs


@dataclass(frozen=True)
class OperandStats:
    """Extra-code hits over non-zero blocks, and sum(Q(x) - x) / sum|x| (float64 sums) of a group of matrices with
    its standard error, treating the matrices' rows as independent samples (sqrt(rows) * sd of the row sums)."""

    extra_code_blocks: int
    blocks: int
    signed_error: float
    signed_error_se: float = 0.0

    @property
    def extreme_code_fraction(self) -> float:
        return self.extra_code_blocks / self.blocks if self.blocks else 0.0

    @property
    def signed_error_z(self) -> float:
        """signed_error in standard errors (0 when there is no error at all)."""
        return self.signed_error / self.signed_error_se if self.signed_error_se else 0.0


def operand_stats_groups(groups: list[list], quantize, keys: list[list] | None = None) -> list[OperandStats]:
    """OperandStats of each group of float32 matrices (rows, K); one compilation for all groups.

    quantize: a Format (every matrix quantized in blocks along its last axis, BlockQuantizer) or one quantizer per
    matrix, nested like `groups` (callables q(m, key) -> Q(m) with a `count_format` attribute: BlockQuantizer,
    OperandQuantizer; hashable, they are static under jit); keys: one PRNG key (or None) per matrix, nested like
    `groups` (None: no keys). Only asymmetric INT has the extra code -2^(b-1); others report 0 hits."""
    if isinstance(quantize, lb.Format):
        quantize = [[BlockQuantizer(quantize)] * len(g) for g in groups]
    keys = [[None] * len(g) for g in groups] if keys is None else keys
    for name, nested in (("quantize", quantize), ("keys", keys)):
        if [len(g) for g in nested] != [len(g) for g in groups]:
            raise ValueError(f"operand_stats_groups: {name} must hold one entry per matrix, nested like groups")
    mats = [jnp.asarray(m, jnp.float32) for g in groups for m in g]
    flat_q = tuple(q for g in quantize for q in g)
    hits, blocks, errs = _operand_pass(mats, [k for g in keys for k in g], flat_q)
    out, i = [], 0
    for g in groups:
        sl = slice(i, i + len(g))
        i += len(g)
        row_errs = np.concatenate([np.sum(np.asarray(e, np.float64), axis=-1).ravel() for e in errs[sl]])
        mag = sum(float(np.sum(np.abs(np.asarray(m, np.float64)))) for m in mats[sl])
        se = np.sqrt(row_errs.size) * np.std(row_errs, ddof=1) if row_errs.size > 1 else 0.0
        h, b = sum(int(v) for v in hits[sl]), sum(int(v) for v in blocks[sl])
        out.append(OperandStats(h, b, float(row_errs.sum()) / mag if mag else 0.0, float(se) / mag if mag else 0.0))
    return out


def operand_stats(mats: list, quantize, keys: list | None = None) -> OperandStats:
    """OperandStats of one group of matrices (quantize: a Format or one quantizer per matrix; keys: one per matrix)."""
    return operand_stats_groups(
        [mats], quantize if isinstance(quantize, lb.Format) else [quantize], None if keys is None else [keys]
    )[0]

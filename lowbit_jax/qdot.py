"""qdot_general: lax.dot_general with the six GEMM quantizers of a linear layer and a custom VJP (the config is
lowbit_jax.qdot_config, the dimension geometry lowbit_jax.gemm_dims, the einsum front end lowbit_jax.qeinsum).

For Y = X . W (X = lhs, W = rhs, any dimension_numbers) the three GEMMs of a linear layer are
  forward  Y  = Q(X) . Q(W)        contracting over the contracting dims          (x_fwd, w_fwd)
  input    dX = Q(dY) . Q(W)^T     contracting over W's free ("out feature") dims (dy_dx, w_dx)
  weight   dW = Q(X)^T . Q(dY)     contracting over X's free ("token") dims      (x_dw,  dy_dw)
Each operand is quantized along ITS GEMM's contracting dims, from the original tensor (a None format means
that operand enters its GEMM unquantized). The backward follows JAX's dot_general transpose rule.

Block layout: every GEMM runs in a canonical form. Each operand is transposed to (batch..., free...,
contracting...) and its contracting dims are merged row-major, in dimension_numbers order, into one axis of
length K; quantization blocks (and Hadamard chunks of size h) run along that merged axis. Both operands of a
GEMM use the same merged order, so their blocks line up element for element. Quantized operands are computed
in float32 and the GEMM accumulates in `accum_dtype` at HIGHEST precision unless `precision` is given.

2-D tiles (block_size (r, c)): the operand is quantized as a matrix per batch element, its free dims merged
(in canonical order) into rows F and its contracting dims into columns K, and a tile's orientation is fixed
by the TENSOR, not by the GEMM: r runs along X's free (token) dims and c along its contracting dims, r along
W's free (out-feature) dims and c along its contracting (in-feature) dims, r along dY's X-free dims and c
along its W-free dims (the forward GEMM's orientation; for dY, the dX GEMM's). Where a tensor enters a GEMM
transposed (X in dW, W in dX, dY in dW) its tiles are transposed with it, so e.g. the Q(W) of the dX GEMM is
the forward Q(W) transposed, bit for bit, for any (r, c). Hadamard rotation runs along one axis and so does
not combine with tiles: QDotConfig raises for a rotated GEMM with a 2-D operand format.

Sharding: the arithmetic is defined on the global array, so under jit with NamedSharding inputs (GSPMD,
AxisType.Auto meshes) sharded and single-device results agree and no block depends on where shards end;
keep local shard lengths of a contracting dim multiples of the block size (for tiles, of free dims too) to
avoid communication inside a block. Explicit sharding-in-types meshes (AxisType.Explicit): the forward takes
`out_sharding` as lax.dot_general does (needed, as there, when both operands shard a contracting dim), and the
backward gives dX and dW the shardings of X and W, as JAX's own transpose rule does; a quantized axis whose
local shards do not hold whole blocks is gathered for the quantizer (same values as one device). Inside
jax.shard_map the arithmetic is per device (each device quantizes its local operands, as data-parallel hardware
would); operands are cast to vary along the same mesh axes first, so the gradient of a replicated W is summed over
devices as lax.dot_general's is.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from lowbit_jax import hadamard
from lowbit_jax._types import ArrayLike, DimensionNumbers, DTypeLike, Key, Precision
from lowbit_jax.formats import Format
from lowbit_jax.gemm_dims import canonical, free_dims, normalize_dims
from lowbit_jax.qdot_config import OPERANDS, QDotConfig, is_tiled
from lowbit_jax.quantize import fake_quant
from lowbit_jax.sharding import entries as _entries
from lowbit_jax.sharding import explicit_spec, same_varying_axes

_KEY_SLOTS = {"rot_fwd": 0, "rot_dx": 1, "rot_dw": 2, "sr_dx": 3, "sr_dw": 4}


# ---------------------------------------------------------------------------------------------- one GEMM
@dataclass(frozen=True)
class _GemmPlan:
    """Static description of one quantized GEMM in canonical form."""

    fmt_a: Format | None
    fmt_b: Format | None
    n_batch: int
    rotation: int | None
    accum_dtype: str
    precision: Precision
    impl: str = "xla"
    flip_a: bool = False  # the operand's (free, K) is its tensor's tile orientation transposed (2-D tiles)
    flip_b: bool = False


def _quant(x_f32, fmt: Format | None, key, impl: str = "xla", n_batch: int = 0, flip: bool = False):
    """x [B.., F.., K] quantized in blocks along K, or (2-D tiles) as the matrix [B.., prod(F), K] with tile
    (r, c) over (F, K), or over (K, F) when `flip`."""
    if fmt is None:
        return x_f32
    if fmt.is_identity:  # a pass-through dtype rounds to nearest: stochastic_grads applies to block formats
        key = None
    if not is_tiled(fmt):
        return fake_quant(x_f32, fmt, axis=-1, key=key, impl=impl)
    lead, free = x_f32.shape[:n_batch], x_f32.shape[n_batch:-1]
    m = x_f32.reshape(lead + (math.prod(free), x_f32.shape[-1]))
    q = fake_quant(m, fmt, axis=(-1, -2) if flip else (-2, -1), key=key, impl=impl)
    return q.reshape(x_f32.shape)


def _at_least_f32(x):
    return x.astype(jnp.float32) if jnp.finfo(x.dtype).bits < 32 else x


def gemm(gp: _GemmPlan, a, b, *, rot_key=None, key_a=None, key_b=None, out_spec: tuple | None = None):
    """a [B.., Fa.., K] . b [B.., Fb.., K] -> [B.., Fa.., Fb..] in accum_dtype, operands rotated then quantized;
    out_spec: the output's PartitionSpec entries on an Explicit mesh (None: lax.dot_general's own rule)."""
    a, b = _at_least_f32(a), _at_least_f32(b)
    if gp.rotation and (gp.fmt_a is not None or gp.fmt_b is not None):
        a, b = hadamard.rotate(a, gp.rotation, rot_key), hadamard.rotate(b, gp.rotation, rot_key)
    acc = jnp.dtype(gp.accum_dtype)
    a = _quant(a, gp.fmt_a, key_a, gp.impl, gp.n_batch, gp.flip_a).astype(acc)
    b = _quant(b, gp.fmt_b, key_b, gp.impl, gp.n_batch, gp.flip_b).astype(acc)
    batch = tuple(range(gp.n_batch))
    dims = (((a.ndim - 1,), (b.ndim - 1,)), (batch, batch))
    sharding = {} if out_spec is None else {"out_sharding": PartitionSpec(*out_spec)}
    return lax.dot_general(a, b, dims, precision=gp.precision, preferred_element_type=acc, **sharding)


# ---------------------------------------------------------------------------------------------- custom VJP
@dataclass(frozen=True)
class _Plan:
    """Static description of one qdot_general call: normalised dims, config, precision, output dtype and sharding."""

    dims: tuple[tuple[tuple[int, ...], tuple[int, ...]], tuple[tuple[int, ...], tuple[int, ...]]]
    config: QDotConfig
    precision: Precision
    out_dtype: str
    out_spec: tuple | None = None  # the forward output's PartitionSpec entries (Explicit meshes)


def _gemm_plan(plan: _Plan, fa: str, fb: str, n_batch: int, rotate: bool, flip_a: bool, flip_b: bool) -> _GemmPlan:
    cfg = plan.config
    return _GemmPlan(
        getattr(cfg, fa),
        getattr(cfg, fb),
        n_batch,
        cfg.rotation if rotate else None,
        cfg.accum_dtype,
        plan.precision,
        cfg.impl,
        flip_a,
        flip_b,
    )


def _key(key, slot: str, enabled: bool = True):
    return None if key is None or not enabled else jax.random.fold_in(key, _KEY_SLOTS[slot])


def _rot_key(plan: _Plan, key, slot: str):
    """Hadamard signs: from the key, else from jax.random.key(config.rotation_seed)."""
    if not plan.config.rotation:
        return None
    return _key(jax.random.key(plan.config.rotation_seed) if key is None else key, slot)


def _forward(plan: _Plan, lhs, rhs, key):
    (lc, rc), (lb, rb) = plan.dims
    a = canonical(lhs, lb, free_dims(lhs.ndim, lc, lb), lc)
    b = canonical(rhs, rb, free_dims(rhs.ndim, rc, rb), rc)
    gp = _gemm_plan(plan, "x_fwd", "w_fwd", len(lb), True, False, False)
    return gemm(gp, a, b, rot_key=_rot_key(plan, key, "rot_fwd"), out_spec=plan.out_spec).astype(plan.out_dtype)


def _grad_lhs(plan: _Plan, dy, rhs, key, x_spec=None):
    """dX = Q(dY) . Q(W)^T, contracting over W's free dims, transposed back to X's layout (and sharding)."""
    (lc, rc), (lb, rb) = plan.dims
    rf = free_dims(rhs.ndim, rc, rb)
    nb, nrf = len(lb), len(rf)
    dy_lf = tuple(range(nb, dy.ndim - nrf))
    a = canonical(dy, tuple(range(nb)), dy_lf, tuple(range(dy.ndim - nrf, dy.ndim)))
    b = canonical(rhs, rb, rc, rf)
    cfg = plan.config
    gp = _gemm_plan(plan, "dy_dx", "w_dx", nb, cfg.rotate_grads, False, True)  # W enters transposed
    lf = free_dims(nb + len(dy_lf) + len(lc), lc, lb)
    order = lb + lf + lc  # dx_t's dims, named by X's dims
    out_spec = None if x_spec is None else tuple(x_spec[d] for d in order)
    kw = dict(rot_key=_rot_key(plan, key, "rot_dx"), key_a=_key(key, "sr_dx", cfg.stochastic_grads))
    dx_t = gemm(gp, a, b, out_spec=out_spec, **kw)
    return jnp.transpose(dx_t, cast(Sequence[int], np.argsort(order)))


def _grad_rhs(plan: _Plan, lhs, dy, key, w_spec=None):
    """dW = Q(X)^T . Q(dY), contracting over X's free (token) dims, transposed back to W's layout (and sharding)."""
    (lc, rc), (lb, rb) = plan.dims
    lf = free_dims(lhs.ndim, lc, lb)
    nb, nlf = len(lb), len(lf)
    a = canonical(lhs, lb, lc, lf)
    b = canonical(dy, tuple(range(nb)), tuple(range(nb + nlf, dy.ndim)), tuple(range(nb, nb + nlf)))
    cfg = plan.config
    gp = _gemm_plan(plan, "x_dw", "dy_dw", nb, cfg.rotate_grads, True, True)  # X and dY enter transposed
    rf = free_dims(nb + len(rc) + (dy.ndim - nb - nlf), rc, rb)
    order = rb + rc + rf  # dw_t's dims, named by W's dims
    out_spec = None if w_spec is None else tuple(w_spec[d] for d in order)
    kw = dict(rot_key=_rot_key(plan, key, "rot_dw"), key_b=_key(key, "sr_dw", cfg.stochastic_grads))
    dw_t = gemm(gp, a, b, out_spec=out_spec, **kw)
    return jnp.transpose(dw_t, cast(Sequence[int], np.argsort(order)))


FORWARD_MODE_MESSAGE = (
    "qdot_general (and every GEMM lb.quantized routes through it) has no forward-mode derivative: its backward GEMMs "
    "quantize dY, W and X per QDotConfig in a custom VJP, which is not the transpose of any tangent rule. Use "
    "reverse mode (jax.grad, jax.vjp, jax.jacrev); for forward-mode sensitivities of a quantized forward pass, use "
    "lb.fake_quant on the operands (straight-through in both modes) with lax.dot_general"
)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _qdot(plan: _Plan, lhs, rhs, key):
    return _forward(plan, lhs, rhs, key)


def _qdot_fwd(plan: _Plan, lhs, rhs, key):
    return _forward(plan, lhs, rhs, key), (lhs, rhs, key)


def _qdot_bwd(plan: _Plan, res, dy):
    lhs, rhs, key = res
    if plan.config.stochastic_grads and key is None:
        raise ValueError("QDotConfig.stochastic_grads needs a PRNG key: pass key= to qdot_general / lb.quantized")
    dx = _grad_lhs(plan, dy, rhs, key, explicit_spec(lhs)).astype(lhs.dtype)
    return dx, _grad_rhs(plan, lhs, dy, key, explicit_spec(rhs)).astype(rhs.dtype), None


_qdot.defvjp(_qdot_fwd, _qdot_bwd)
_qdot_jit = jax.jit(_qdot, static_argnums=0)  # one compiled GEMM per plan and shape, also when called eagerly


def qdot_general(
    lhs: ArrayLike,
    rhs: ArrayLike,
    dimension_numbers: DimensionNumbers,
    config: QDotConfig | None = None,
    *,
    key: Key | None = None,
    precision: Precision = None,
    preferred_element_type: DTypeLike | None = None,
    out_sharding: NamedSharding | PartitionSpec | None = None,
) -> jax.Array:
    """Drop-in for lax.dot_general whose forward and backward GEMMs quantize their operands per `config`.

    key: PRNG key for stochastic rounding of dY (needed to differentiate with config.stochastic_grads) and
    for the rotation signs; sub-keys are fold_in(key, slot) for each GEMM's rotation and each SR operand.
    out_sharding: on Explicit meshes the forward GEMM's out_sharding (as for lax.dot_general); otherwise a
    sharding constraint on the output (Flax NNX hooks pass it).
    """
    config = QDotConfig() if config is None else config
    if not isinstance(config, QDotConfig):
        raise TypeError(
            f"qdot_general's config must be a QDotConfig (e.g. QDotConfig.train({config!r}) or "
            f"QDotConfig.direct_cast(...)), got {type(config).__name__}"
        )
    lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
    for name, a in (("lhs", lhs), ("rhs", rhs)):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise TypeError(f"qdot_general quantizes real floating-point operands; {name} has dtype {a.dtype}")
    dims = normalize_dims(dimension_numbers, lhs.ndim, rhs.ndim)
    avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (lhs, rhs)]  # no sharding: dtype and shape only
    out = jax.eval_shape(
        functools.partial(lax.dot_general, dimension_numbers=dims, preferred_element_type=preferred_element_type),
        *avals,
    )
    precision = lax.Precision.HIGHEST if precision is None else precision
    explicit = explicit_spec(lhs) is not None or explicit_spec(rhs) is not None
    out_spec = None
    if explicit and out_sharding is not None:
        out_spec = _entries(
            out_sharding.spec if isinstance(out_sharding, NamedSharding) else out_sharding, len(out.shape)
        )
    plan = _Plan(dims, config, precision, jnp.dtype(out.dtype).name, out_spec)
    lhs, rhs = same_varying_axes(lhs, rhs)
    try:
        y = _qdot_jit(plan, lhs, rhs, key)
    except TypeError as err:
        if "forward-mode" not in str(err):
            raise
        raise TypeError(FORWARD_MODE_MESSAGE) from err
    if out_sharding is None or explicit:
        return y
    return jax.lax.with_sharding_constraint(y, out_sharding)


def with_config(config: QDotConfig, key: Key | None = None) -> Callable[..., jax.Array]:
    """A lax.dot_general-compatible callable bound to `config` and `key` (for dot_general hooks)."""
    return functools.partial(qdot_general, config=config, key=key)


__all__ = ["OPERANDS", "QDotConfig", "qdot_general", "with_config"]  # the config re-exported

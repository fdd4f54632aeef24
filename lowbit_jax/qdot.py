"""qdot_general: lax.dot_general with the six GEMM quantizers of a linear layer and a custom VJP (the config is
lowbit_jax.qdot_config, the dimension geometry lowbit_jax.gemm_dims, the einsum front end lowbit_jax.qeinsum).

For Y = X . W (X = lhs, W = rhs, any dimension_numbers) the three GEMMs of a linear layer are
  forward  Y  = Q(X) . Q(W)        contracting over the contracting dims          (x_fwd, w_fwd)
  input    dX = Q(dY) . Q(W)^T     contracting over W's free ("out feature") dims (dy_dx, w_dx)
  weight   dW = Q(X)^T . Q(dY)     contracting over X's free ("token") dims      (x_dw,  dy_dw)
Each operand is quantized along ITS GEMM's contracting dims, from the original tensor (a None format means
that operand enters its GEMM unquantized). The backward follows JAX's dot_general transpose rule. Per GEMM,
QDotConfig places a rotation (both operands rotated along K, so the GEMM runs in the rotated basis, or one
operand quantized in the rotated basis and rotated back), and per operand the rounding (nearest, stochastic
with sr_bits random bits, MS-EDEN); accum_block emulates a narrow hardware accumulator (lowbit_jax.accumulate).
Each GEMM's plan is built once per trace, and operands go through the core quantizer directly (the validation
and straight-through wrapper of lb.fake_quant are for user calls).

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
from typing import NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from lowbit_jax import accumulate, blocks, codec, eden, hadamard, kernels
from lowbit_jax._types import ArrayLike, DimensionNumbers, DTypeLike, Key, Precision
from lowbit_jax.formats import Format
from lowbit_jax.gemm_dims import canonical, free_dims, normalize_dims
from lowbit_jax.impls import resolve_impl
from lowbit_jax.qdot_config import GEMM_OPERANDS, GEMMS, OPERANDS, QDotConfig, Rotation, is_tiled
from lowbit_jax.sharding import entries as _entries
from lowbit_jax.sharding import explicit_spec, same_varying_axes

# fold_in slots of a call's key: each GEMM's rotation signs, each operand's rounding randomness (the dY slots are
# those of the earlier SR-for-dY-only design, so its results are unchanged)
_KEY_SLOTS = {"fwd": 0, "dx": 1, "dw": 2, "dy_dx": 3, "dy_dw": 4, "x_fwd": 5, "w_fwd": 6, "w_dx": 7, "x_dw": 8}


# ---------------------------------------------------------------------------------------------- one GEMM
@dataclass(frozen=True)
class _Operand:
    """One GEMM operand: its config name, format (None: unquantized), rounding, SR bits and tile orientation."""

    name: str
    fmt: Format | None
    rounding: str = "nearest"  # "nearest", "stochastic" or "eden"
    sr_bits: int | None = None
    flip: bool = False  # the operand's (free, K) is its tensor's tile orientation transposed (2-D tiles)


@dataclass(frozen=True)
class _GemmPlan:
    """Static description of one quantized GEMM in canonical form, built once per qdot_general trace."""

    name: str  # "fwd", "dx" or "dw"
    a: _Operand
    b: _Operand
    n_batch: int
    rotation: Rotation | None
    accum_dtype: str
    precision: Precision
    impl: str = "xla"
    accumulator: accumulate.AccumSpec | None = None
    rotation_seed: int = 0

    @property
    def quantized(self) -> bool:
        return self.a.fmt is not None or self.b.fmt is not None


def _gemm_plan(cfg: QDotConfig, gemm: str, n_batch: int, precision: Precision, flips: tuple[bool, bool]) -> _GemmPlan:
    a, b = (
        _Operand(name, getattr(cfg, name), cfg.rounding_of(name), cfg.sr_bits_of(name), flip)
        for name, flip in zip(GEMM_OPERANDS[gemm], flips, strict=True)
    )
    return _GemmPlan(
        gemm,
        a,
        b,
        n_batch,
        cfg.rotation_of(gemm),
        cfg.accum_dtype,
        precision,
        cfg.impl,
        cfg.accumulator,
        cfg.rotation_seed,
    )


def _operand_axes(fmt: Format, ndim: int, flip: bool) -> tuple[int, ...]:
    """The quantized axes of a canonical operand: K (the last axis), or (F, K) / (K, F) for 2-D tiles."""
    axis = ((-1, -2) if flip else (-2, -1)) if is_tiled(fmt) else -1
    return blocks.normalize_axes(axis, ndim, fmt.block_size)


def _quant_core(x_f32, op: _Operand, key, impl: str, group: int | None, axis: int = -1):
    """x quantized per `op` by the internal quantizer (no public validation): 1-D blocks along `axis`, 2-D tiles
    over the last two axes [.., F, K]."""
    fmt = op.fmt
    assert fmt is not None  # callers pass unquantized operands through
    key = None if fmt.is_identity or op.rounding == "nearest" else key
    if op.rounding == "eden" and not fmt.is_identity:
        assert group is not None  # QDotConfig: MS-EDEN operands have a rotated GEMM
        return eden.ms_eden_fake_quant(x_f32, fmt, key, axis=axis, group=group)
    axes = (
        _operand_axes(fmt, x_f32.ndim, op.flip)
        if is_tiled(fmt)
        else blocks.normalize_axes(axis, x_f32.ndim, fmt.block_size)
    )
    sr_bits = None if key is None else op.sr_bits
    if resolve_impl(impl) == "pallas":
        kernel_axis = axes if len(axes) == 2 else axes[0]
        return kernels.fake_quant(x_f32, fmt, kernel_axis, key=key, sr_bits=sr_bits, impl="pallas")
    return codec.fake_quant_array(x_f32, fmt, axes, key, sr_bits=sr_bits)


def _check_key(op: _Operand, key) -> None:
    if op.fmt is not None and op.rounding != "nearest" and key is None and not op.fmt.is_identity:
        raise ValueError(
            f"QDotConfig rounds {op.name} {'with MS-EDEN' if op.rounding == 'eden' else 'stochastically'}, which "
            "needs a PRNG key: pass key= to qdot_general / lb.quantized"
        )


def _quant(x_f32, op: _Operand, key, impl: str, n_batch: int, group: int | None = None):
    """x [B.., F.., K] quantized in blocks along K, or (2-D tiles) as the matrix [B.., prod(F), K] with tile
    (r, c) over (F, K), or over (K, F) when `op.flip`."""
    if op.fmt is None:
        return x_f32
    _check_key(op, key)
    if not is_tiled(op.fmt):
        return _quant_core(x_f32, op, key, impl, group)
    lead, free = x_f32.shape[:n_batch], x_f32.shape[n_batch:-1]
    m = x_f32.reshape(lead + (math.prod(free), x_f32.shape[-1]))
    return _quant_core(m, op, key, impl, group).reshape(x_f32.shape)


def _at_least_f32(x):
    return x.astype(jnp.float32) if jnp.finfo(x.dtype).bits < 32 else x


def _key(key, slot: str):
    return None if key is None else jax.random.fold_in(key, _KEY_SLOTS[slot])


def rotation_signs(rot: Rotation, gemm: str, key, rotation_seed: int = 0) -> jax.Array:
    """The +-1 signs of GEMM `gemm`'s rotation: fixed values, those of jax.random.key(seed), or (signs="key") of
    fold_in(key, gemm slot), with jax.random.key(rotation_seed) standing in for a missing key."""
    if isinstance(rot.signs, tuple):
        return jnp.asarray(rot.signs, jnp.float32)
    if isinstance(rot.signs, int):
        return hadamard.random_signs(rot.size, jax.random.key(rot.signs))
    base = jax.random.key(rotation_seed) if key is None else key
    return hadamard.random_signs(rot.size, jax.random.fold_in(base, _KEY_SLOTS[gemm]))


class View(NamedTuple):
    """A GEMM operand in its own layout with the dims of its role; canonical(): (batch..., free..., K)."""

    x: jax.Array
    batch: tuple[int, ...]
    free: tuple[int, ...]
    contract: tuple[int, ...]

    def canonical(self) -> jax.Array:
        return canonical(self.x, self.batch, self.free, self.contract)

    def in_place_axis(self) -> int | None:
        """The axis K takes when the contracting dims merge where they stand (an increasing run of adjacent dims,
        the other dims already in canonical order); None when only a transpose can merge them."""
        c = self.contract
        if not c or c != tuple(range(c[0], c[0] + len(c))):
            return None
        rest = tuple(d for d in range(self.x.ndim) if d not in c)
        return c[0] if rest == self.batch + self.free else None


def as_view(x_canonical) -> View:
    """A canonical [.., K] operand as a View."""
    n = x_canonical.ndim
    return View(x_canonical, (), tuple(range(n - 1)), (n - 1,))


def _prepare(view: View, op: _Operand, gp: _GemmPlan, signs, key):
    """One operand as it enters the GEMM, canonical: rotated (if its GEMM rotates it), quantized, and rotated back
    when the rotation is that operand's alone.

    An unrotated operand in 1-D blocks whose contracting dims are adjacent is quantized in its own layout along
    the merged K and transposed afterwards: the same blocks (K is merged in the same order), but XLA:CPU runs a
    quantizer fused with a transpose an order of magnitude slower (30 ms against 2.6 ms for a 2048 x 512 float32
    dY quantized along its tokens on the 2-core Xeon)."""
    rot = gp.rotation
    rotated = signs is not None and rot is not None and rot.rotates(op.name)
    p = view.in_place_axis()
    stochastic_kernel = op.rounding != "nearest" and resolve_impl(gp.impl) == "pallas"
    fmt = op.fmt
    blocked = fmt is not None and not fmt.is_identity and not is_tiled(fmt)  # identity formats: as unquantized
    if fmt is not None and blocked and not rotated and p is not None and not stochastic_kernel:
        x, c = _at_least_f32(view.x), view.contract
        merged = x.reshape(x.shape[:p] + (math.prod(x.shape[d] for d in c),) + x.shape[c[-1] + 1 :])
        _check_key(op, key)
        if op.rounding == "nearest":
            q = _quant_core(merged, op, None, gp.impl, None, axis=p)
        else:  # the random bits of the canonical layout, moved with the data: the same draw per element
            bits = kernels.sr_bits(_key(key, op.name), jnp.moveaxis(merged, p, -1).shape, fmt, -1)
            axes = blocks.normalize_axes(p, merged.ndim, fmt.block_size)
            q = codec.fake_quant_array(merged, fmt, axes, rbits=jnp.moveaxis(bits, -1, p), sr_bits=op.sr_bits)
        return jnp.moveaxis(q, p, -1)
    x_f32 = _at_least_f32(view.canonical())
    if rotated:
        x_f32 = hadamard.rotate_with_signs(x_f32, signs)
    q = _quant(x_f32, op, _key(key, op.name), gp.impl, gp.n_batch, rot.size if rotated and rot else None)
    if rotated and rot is not None and rot.only is not None:
        q = hadamard.rotate_with_signs(q, signs, inverse=True)
    return q


def gemm(gp: _GemmPlan, a_view: View, b_view: View, *, key=None, out_spec: tuple | None = None, operands=False):
    """a [B.., Fa.., K] . b [B.., Fb.., K] (canonically) -> [B.., Fa.., Fb..] in accum_dtype, operands rotated and
    quantized per the plan (operands=True: also the two quantized canonical operands); out_spec: the output's
    PartitionSpec entries on an Explicit mesh (None: lax.dot_general's own rule)."""
    y, a, b = _gemm(gp, a_view, b_view, key, out_spec)
    return (y, (a, b)) if operands else y


def _gemm(gp: _GemmPlan, a_view: View, b_view: View, key, out_spec: tuple | None):
    rot = gp.rotation
    signs = None if rot is None or not gp.quantized else rotation_signs(rot, gp.name, key, gp.rotation_seed)
    acc = jnp.dtype(gp.accum_dtype)
    a = _prepare(a_view, gp.a, gp, signs, key).astype(acc)
    b = _prepare(b_view, gp.b, gp, signs, key).astype(acc)
    if gp.accumulator is not None:
        if out_spec is not None:
            raise ValueError("QDotConfig.accum_block (accumulator emulation) does not run on Explicit-sharding meshes")
        return accumulate.accumulated_dot(a, b, gp.n_batch, gp.accumulator, precision=gp.precision), a, b
    batch = tuple(range(gp.n_batch))
    dims = (((a.ndim - 1,), (b.ndim - 1,)), (batch, batch))
    sharding = {} if out_spec is None else {"out_sharding": PartitionSpec(*out_spec)}
    return lax.dot_general(a, b, dims, precision=gp.precision, preferred_element_type=acc, **sharding), a, b


_FLIPS = {"fwd": (False, False), "dx": (False, True), "dw": (True, True)}  # W enters dX, X and dY enter dW transposed


def quantize_operand(x, config: QDotConfig, operand: str, key: Key | None = None) -> jax.Array:
    """Operand `operand` (OPERANDS) as qdot_general quantizes it, for its canonical matrix x [rows, K] in that GEMM
    (rows: the free dims, K: the contracting dims; 2-D tiles keep the tensor's orientation as in the GEMM), rotated
    and quantized per `config` and returned in the original basis (a rotation of the GEMM undone), float32; `key`
    is the call's key (sub-key slots as in qdot_general). For operand-level error statistics."""
    if operand not in OPERANDS:
        raise ValueError(f"operand must be one of {OPERANDS}, got {operand!r}")
    gemm = next(g for g, ops in GEMM_OPERANDS.items() if operand in ops)
    gp = _gemm_plan(config, gemm, 0, lax.Precision.HIGHEST, _FLIPS[gemm])
    op = gp.a if gp.a.name == operand else gp.b
    x = _at_least_f32(jnp.asarray(x))
    rot = gp.rotation
    signs = None if rot is None or not gp.quantized else rotation_signs(rot, gemm, key, gp.rotation_seed)
    q = _prepare(as_view(x), op, gp, signs, key)
    if signs is not None and rot is not None and rot.only is None:  # both operands rotated: back to x's basis
        q = hadamard.rotate_with_signs(q, signs, inverse=True)
    return q


# ---------------------------------------------------------------------------------------------- custom VJP
@dataclass(frozen=True)
class _Plan:
    """Static description of one qdot_general call: normalised dims, config, the three GEMM plans, output dtype
    and sharding."""

    dims: tuple[tuple[tuple[int, ...], tuple[int, ...]], tuple[tuple[int, ...], tuple[int, ...]]]
    config: QDotConfig
    precision: Precision
    out_dtype: str
    out_spec: tuple | None = None  # the forward output's PartitionSpec entries (Explicit meshes)

    @functools.cached_property
    def gemms(self) -> dict[str, _GemmPlan]:
        """The forward, dX and dW GEMM plans (W enters dX transposed; X and dY enter dW transposed)."""
        nb = len(self.dims[1][0])
        return {g: _gemm_plan(self.config, g, nb, self.precision, _FLIPS[g]) for g in GEMMS}


def _uncanonical(q, view: View):
    """A canonical [B.., F.., K] array back in `view`'s own layout (the inverse of View.canonical)."""
    order = view.batch + view.free + view.contract
    q = q.reshape(tuple(view.x.shape[d] for d in order))
    return jnp.transpose(q, cast(Sequence[int], np.argsort(order)))


def _forward(plan: _Plan, lhs, rhs, key, operands: bool = False):
    """Y = Q(X) . Q(W) in the output dtype; operands=True: also Q(X) and Q(W) in X's and W's layouts (float32)."""
    (lc, rc), (lb, rb) = plan.dims
    a = View(lhs, lb, free_dims(lhs.ndim, lc, lb), lc)
    b = View(rhs, rb, free_dims(rhs.ndim, rc, rb), rc)
    y, (a_q, b_q) = gemm(plan.gemms["fwd"], a, b, key=key, out_spec=plan.out_spec, operands=True)
    y = y.astype(plan.out_dtype)
    return (y, (_uncanonical(a_q, a), _uncanonical(b_q, b))) if operands else y


def _grad_lhs(plan: _Plan, dy, rhs, key, x_spec=None):
    """dX = Q(dY) . Q(W)^T, contracting over W's free dims, transposed back to X's layout (and sharding)."""
    (lc, rc), (lb, rb) = plan.dims
    rf = free_dims(rhs.ndim, rc, rb)
    nb, nrf = len(lb), len(rf)
    dy_lf = tuple(range(nb, dy.ndim - nrf))
    a = View(dy, tuple(range(nb)), dy_lf, tuple(range(dy.ndim - nrf, dy.ndim)))
    b = View(rhs, rb, rc, rf)
    lf = free_dims(nb + len(dy_lf) + len(lc), lc, lb)
    order = lb + lf + lc  # dx_t's dims, named by X's dims
    out_spec = None if x_spec is None else tuple(x_spec[d] for d in order)
    dx_t = gemm(plan.gemms["dx"], a, b, key=key, out_spec=out_spec)
    return jnp.transpose(dx_t, cast(Sequence[int], np.argsort(order)))


def _grad_rhs(plan: _Plan, lhs, dy, key, w_spec=None):
    """dW = Q(X)^T . Q(dY), contracting over X's free (token) dims, transposed back to W's layout (and sharding)."""
    (lc, rc), (lb, rb) = plan.dims
    lf = free_dims(lhs.ndim, lc, lb)
    nb, nlf = len(lb), len(lf)
    a = View(lhs, lb, lc, lf)
    b = View(dy, tuple(range(nb)), tuple(range(nb + nlf, dy.ndim)), tuple(range(nb, nb + nlf)))
    rf = free_dims(nb + len(rc) + (dy.ndim - nb - nlf), rc, rb)
    order = rb + rc + rf  # dw_t's dims, named by W's dims
    out_spec = None if w_spec is None else tuple(w_spec[d] for d in order)
    dw_t = gemm(plan.gemms["dw"], a, b, key=key, out_spec=out_spec)
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
    if plan.config.backward_inputs == "original":
        return _forward(plan, lhs, rhs, key), (lhs, rhs, key, None)
    y, (lhs_q, rhs_q) = _forward(plan, lhs, rhs, key, operands=True)  # the backward GEMMs re-quantize these
    dtypes = (jnp.zeros((), lhs.dtype), jnp.zeros((), rhs.dtype))  # the gradients' dtypes
    return y, (lhs_q, rhs_q, key, dtypes)


def _qdot_bwd(plan: _Plan, res, dy):
    lhs, rhs, key, dtypes = res
    lhs_dtype, rhs_dtype = (lhs.dtype, rhs.dtype) if dtypes is None else (dtypes[0].dtype, dtypes[1].dtype)
    dx = _grad_lhs(plan, dy, rhs, key, explicit_spec(lhs)).astype(lhs_dtype)
    return dx, _grad_rhs(plan, lhs, dy, key, explicit_spec(rhs)).astype(rhs_dtype), None


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

    key: PRNG key for the operands that round stochastically or with MS-EDEN (needed once their GEMM runs) and
    for rotation signs drawn from the key; sub-keys are fold_in(key, slot), slots fwd 0, dx 1, dw 2 (rotation
    signs) and dy_dx 3, dy_dw 4, x_fwd 5, w_fwd 6, w_dx 7, x_dw 8 (rounding).
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


__all__ = [
    "OPERANDS",
    "QDotConfig",
    "Rotation",
    "qdot_general",
    "quantize_operand",
    "rotation_signs",
    "with_config",
]  # config re-exported

"""qdot_general: lax.dot_general with the six GEMM quantizers of a linear layer and a custom VJP.

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
import string
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from lowbit_jax import blocks, hadamard
from lowbit_jax.formats import Format, get_format
from lowbit_jax.impls import check_impl
from lowbit_jax.quantize import fake_quant
from lowbit_jax.sharding import entries as _entries
from lowbit_jax.sharding import explicit_spec, same_varying_axes

OPERANDS = ("x_fwd", "w_fwd", "dy_dx", "w_dx", "x_dw", "dy_dw")
_KEY_SLOTS = {"rot_fwd": 0, "rot_dx": 1, "rot_dw": 2, "sr_dx": 3, "sr_dw": 4}


def _as_format(value, field: str) -> Format | None:
    if value is None or isinstance(value, Format):
        return value
    if isinstance(value, str):
        return get_format(value)
    raise TypeError(f"QDotConfig.{field} must be a Format, a format name or None, got {type(value).__name__}")


def is_tiled(fmt: Format | None) -> bool:
    """Whether `fmt` quantizes 2-D tiles (block_size (r, c)) rather than blocks along one axis."""
    return fmt is not None and blocks.block_ndim(fmt.block_size) == 2


@dataclass(frozen=True)
class QDotConfig:
    """Formats of the six GEMM operands (None = unquantized), SR for dY, Hadamard rotation, accumulation dtype.

    rotation: Hadamard size h applied along the contracting axis of both operands of the forward GEMM (and of
    the two backward GEMMs if rotate_grads) before quantization; signs from the key, or from
    jax.random.key(rotation_seed) when no key is given. stochastic_grads needs a key once differentiated; it
    rounds block-format dY operands stochastically (identity formats such as bf16 round to nearest).
    """

    x_fwd: Format | str | None = None
    w_fwd: Format | str | None = None
    dy_dx: Format | str | None = None
    w_dx: Format | str | None = None
    x_dw: Format | str | None = None
    dy_dw: Format | str | None = None
    stochastic_grads: bool = False
    rotation: int | None = None
    rotate_grads: bool = False
    accum_dtype: str = "float32"
    rotation_seed: int = 0
    impl: str = "xla"  # quantizer implementation: "xla", "pallas" (interpreted on CPU) or "auto" (Pallas on GPU)

    def __post_init__(self):
        for name in OPERANDS:
            object.__setattr__(self, name, _as_format(getattr(self, name), name))
        if self.rotation is not None:
            hadamard.check_size(self.rotation)
            rotated = OPERANDS if self.rotate_grads else OPERANDS[:2]
            tiled = [n for n in rotated if is_tiled(getattr(self, n))]
            if tiled:
                fmt = getattr(self, tiled[0])
                raise ValueError(
                    f"QDotConfig: Hadamard rotation (rotation={self.rotation}) does not combine with the 2-D tile "
                    f"format {fmt.label} of {', '.join(tiled)}: a tile has no single axis to rotate along"
                )
        if not isinstance(self.stochastic_grads, bool):
            raise TypeError(f"QDotConfig.stochastic_grads must be True or False, got {self.stochastic_grads!r}")
        dt = jnp.dtype(self.accum_dtype)
        if not jnp.issubdtype(dt, jnp.floating):
            raise ValueError(f"accum_dtype must be a floating dtype, got {self.accum_dtype!r}")
        object.__setattr__(self, "accum_dtype", dt.name)
        check_impl(self.impl)

    @classmethod
    def train(cls, fmt: Format | str, **kwargs) -> QDotConfig:
        """All six operands in `fmt` (the paper's training setting)."""
        return cls(**dict.fromkeys(OPERANDS, fmt), **kwargs)

    @classmethod
    def direct_cast(cls, fmt: Format | str, **kwargs) -> QDotConfig:
        """Forward X and W in `fmt`, backward unquantized (the paper's direct-cast inference setting)."""
        return cls(x_fwd=fmt, w_fwd=fmt, **kwargs)

    def formats(self) -> dict[str, Format | None]:
        return {name: getattr(self, name) for name in OPERANDS}

    @property
    def label(self) -> str:
        """Short description, e.g. 'train(mxint8)', 'direct_cast(nvfp4)+rot16'."""
        f = [None if v is None else v.label for v in self.formats().values()]
        if len(set(f)) == 1 and f[0] is not None:
            base = f"train({f[0]})"
        elif f[0] is not None and f[0] == f[1] and f[2:] == [None] * 4:
            base = f"direct_cast({f[0]})"
        else:
            base = ",".join(f"{n}={v}" for n, v in zip(OPERANDS, f, strict=True) if v is not None) or "none"
        extra = "+sr" * self.stochastic_grads + (f"+rot{self.rotation}" if self.rotation else "")
        extra += "+rotgrads" * (bool(self.rotation) and self.rotate_grads)
        return base + extra + ("" if self.accum_dtype == "float32" else f"+acc_{self.accum_dtype}")


# ---------------------------------------------------------------------------------------------- dimensions
def normalize_dims(dimension_numbers, lhs_ndim: int, rhs_ndim: int):
    """((lc, rc), (lb, rb)) as tuples of non-negative ints; negative dims count from the end; TypeError (as
    lax.dot_general raises) for a dim outside [-ndim, ndim) instead of wrapping it."""
    (lc, rc), (lb, rb) = dimension_numbers

    def norm(ds, n: int) -> tuple[int, ...]:
        out = []
        for d in ds:
            if isinstance(d, bool) or not isinstance(d, int | np.integer) or not -n <= d < n:
                raise TypeError(
                    f"dot_general dimension {d!r} is out of range for an operand of rank {n} "
                    f"(dimension numbers {dimension_numbers!r})"
                )
            out.append(int(d) % n)
        return tuple(out)

    return (norm(lc, lhs_ndim), norm(rc, rhs_ndim)), (norm(lb, lhs_ndim), norm(rb, rhs_ndim))


def free_dims(ndim: int, contract, batch) -> tuple[int, ...]:
    """Dims that are neither contracting nor batch, in increasing order."""
    return tuple(d for d in range(ndim) if d not in contract and d not in batch)


def operand_axes(dimension_numbers, lhs_ndim: int, rhs_ndim: int) -> dict[str, dict[str, tuple[int, ...]]]:
    """The dims each tensor is quantized along in each GEMM role: {'x': {'fwd', 'dw'}, 'w': {...}, 'dy': {...}}.

    dY is in dot_general's output layout (batch..., lhs free..., rhs free...).
    """
    (lc, rc), (lb, rb) = normalize_dims(dimension_numbers, lhs_ndim, rhs_ndim)
    lf, rf = free_dims(lhs_ndim, lc, lb), free_dims(rhs_ndim, rc, rb)
    nb, nlf = len(lb), len(lf)
    return {
        "x": {"fwd": lc, "dw": lf},
        "w": {"fwd": rc, "dx": rf},
        "dy": {"dx": tuple(range(nb + nlf, nb + nlf + len(rf))), "dw": tuple(range(nb, nb + nlf))},
    }


def canonical(x, batch, free, contract):
    """x transposed to (batch..., free..., contracting...) with the contracting dims merged into one last axis."""
    perm = tuple(batch) + tuple(free) + tuple(contract)
    xt = x if perm == tuple(range(x.ndim)) else jnp.transpose(x, perm)
    k = math.prod(x.shape[d] for d in contract)
    return xt.reshape(tuple(x.shape[d] for d in tuple(batch) + tuple(free)) + (k,))


def merged_matrix(x, axes):
    """x as (rest..., K): the given axes moved last and merged in order (works for numpy and jax arrays)."""
    rest = tuple(d for d in range(x.ndim) if d not in axes)
    perm = rest + tuple(axes)
    return x.transpose(perm).reshape(tuple(x.shape[d] for d in rest) + (math.prod(x.shape[d] for d in axes),))


# ---------------------------------------------------------------------------------------------- one GEMM
@dataclass(frozen=True)
class _Gemm:
    """Static description of one quantized GEMM in canonical form."""

    fmt_a: Format | None
    fmt_b: Format | None
    n_batch: int
    rotation: int | None
    accum_dtype: str
    precision: object
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


def gemm(spec: _Gemm, a, b, *, rot_key=None, key_a=None, key_b=None, out_spec: tuple | None = None):
    """a [B.., Fa.., K] . b [B.., Fb.., K] -> [B.., Fa.., Fb..] in accum_dtype, operands rotated then quantized;
    out_spec: the output's PartitionSpec entries on an Explicit mesh (None: lax.dot_general's own rule)."""
    a, b = _at_least_f32(a), _at_least_f32(b)
    if spec.rotation and (spec.fmt_a is not None or spec.fmt_b is not None):
        a, b = hadamard.rotate(a, spec.rotation, rot_key), hadamard.rotate(b, spec.rotation, rot_key)
    acc = jnp.dtype(spec.accum_dtype)
    a = _quant(a, spec.fmt_a, key_a, spec.impl, spec.n_batch, spec.flip_a).astype(acc)
    b = _quant(b, spec.fmt_b, key_b, spec.impl, spec.n_batch, spec.flip_b).astype(acc)
    batch = tuple(range(spec.n_batch))
    dims = (((a.ndim - 1,), (b.ndim - 1,)), (batch, batch))
    sharding = {} if out_spec is None else {"out_sharding": PartitionSpec(*out_spec)}
    return lax.dot_general(a, b, dims, precision=spec.precision, preferred_element_type=acc, **sharding)


# ---------------------------------------------------------------------------------------------- custom VJP
@dataclass(frozen=True)
class _Spec:
    dims: tuple
    config: QDotConfig
    precision: object
    out_dtype: str
    out_spec: tuple | None = None  # the forward output's PartitionSpec entries (Explicit meshes)


def _gemm_spec(spec: _Spec, fa: str, fb: str, n_batch: int, rotate: bool, flip_a: bool, flip_b: bool) -> _Gemm:
    cfg = spec.config
    return _Gemm(
        getattr(cfg, fa),
        getattr(cfg, fb),
        n_batch,
        cfg.rotation if rotate else None,
        cfg.accum_dtype,
        spec.precision,
        cfg.impl,
        flip_a,
        flip_b,
    )


def _key(key, slot: str, enabled: bool = True):
    return None if key is None or not enabled else jax.random.fold_in(key, _KEY_SLOTS[slot])


def _rot_key(spec: _Spec, key, slot: str):
    """Hadamard signs: from the key, else from jax.random.key(config.rotation_seed)."""
    if not spec.config.rotation:
        return None
    return _key(jax.random.key(spec.config.rotation_seed) if key is None else key, slot)


def _forward(spec: _Spec, lhs, rhs, key):
    (lc, rc), (lb, rb) = spec.dims
    a = canonical(lhs, lb, free_dims(lhs.ndim, lc, lb), lc)
    b = canonical(rhs, rb, free_dims(rhs.ndim, rc, rb), rc)
    g = _gemm_spec(spec, "x_fwd", "w_fwd", len(lb), True, False, False)
    return gemm(g, a, b, rot_key=_rot_key(spec, key, "rot_fwd"), out_spec=spec.out_spec).astype(spec.out_dtype)


def _grad_lhs(spec: _Spec, dy, rhs, key, x_spec=None):
    """dX = Q(dY) . Q(W)^T, contracting over W's free dims, transposed back to X's layout (and sharding)."""
    (lc, rc), (lb, rb) = spec.dims
    rf = free_dims(rhs.ndim, rc, rb)
    nb, nrf = len(lb), len(rf)
    dy_lf = tuple(range(nb, dy.ndim - nrf))
    a = canonical(dy, tuple(range(nb)), dy_lf, tuple(range(dy.ndim - nrf, dy.ndim)))
    b = canonical(rhs, rb, rc, rf)
    cfg = spec.config
    g = _gemm_spec(spec, "dy_dx", "w_dx", nb, cfg.rotate_grads, False, True)  # W enters transposed
    lf = free_dims(nb + len(dy_lf) + len(lc), lc, lb)
    order = lb + lf + lc  # dx_t's dims, named by X's dims
    out_spec = None if x_spec is None else tuple(x_spec[d] for d in order)
    kw = dict(rot_key=_rot_key(spec, key, "rot_dx"), key_a=_key(key, "sr_dx", cfg.stochastic_grads))
    dx_t = gemm(g, a, b, out_spec=out_spec, **kw)
    return jnp.transpose(dx_t, np.argsort(order))


def _grad_rhs(spec: _Spec, lhs, dy, key, w_spec=None):
    """dW = Q(X)^T . Q(dY), contracting over X's free (token) dims, transposed back to W's layout (and sharding)."""
    (lc, rc), (lb, rb) = spec.dims
    lf = free_dims(lhs.ndim, lc, lb)
    nb, nlf = len(lb), len(lf)
    a = canonical(lhs, lb, lc, lf)
    b = canonical(dy, tuple(range(nb)), tuple(range(nb + nlf, dy.ndim)), tuple(range(nb, nb + nlf)))
    cfg = spec.config
    g = _gemm_spec(spec, "x_dw", "dy_dw", nb, cfg.rotate_grads, True, True)  # X and dY enter transposed
    rf = free_dims(nb + len(rc) + (dy.ndim - nb - nlf), rc, rb)
    order = rb + rc + rf  # dw_t's dims, named by W's dims
    out_spec = None if w_spec is None else tuple(w_spec[d] for d in order)
    kw = dict(rot_key=_rot_key(spec, key, "rot_dw"), key_b=_key(key, "sr_dw", cfg.stochastic_grads))
    dw_t = gemm(g, a, b, out_spec=out_spec, **kw)
    return jnp.transpose(dw_t, np.argsort(order))


FORWARD_MODE_MESSAGE = (
    "qdot_general (and every GEMM lb.quantized routes through it) has no forward-mode derivative: its backward GEMMs "
    "quantize dY, W and X per QDotConfig in a custom VJP, which is not the transpose of any tangent rule. Use "
    "reverse mode (jax.grad, jax.vjp, jax.jacrev); for forward-mode sensitivities of a quantized forward pass, use "
    "lb.fake_quant on the operands (straight-through in both modes) with lax.dot_general"
)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _qdot(spec: _Spec, lhs, rhs, key):
    return _forward(spec, lhs, rhs, key)


def _qdot_fwd(spec: _Spec, lhs, rhs, key):
    return _forward(spec, lhs, rhs, key), (lhs, rhs, key)


def _qdot_bwd(spec: _Spec, res, dy):
    lhs, rhs, key = res
    if spec.config.stochastic_grads and key is None:
        raise ValueError("QDotConfig.stochastic_grads needs a PRNG key: pass key= to qdot_general / lb.quantized")
    dx = _grad_lhs(spec, dy, rhs, key, explicit_spec(lhs)).astype(lhs.dtype)
    return dx, _grad_rhs(spec, lhs, dy, key, explicit_spec(rhs)).astype(rhs.dtype), None


_qdot.defvjp(_qdot_fwd, _qdot_bwd)
_qdot_jit = jax.jit(_qdot, static_argnums=0)  # one compiled GEMM per spec and shape, also when called eagerly


def qdot_general(
    lhs,
    rhs,
    dimension_numbers,
    config: QDotConfig | None = None,
    *,
    key=None,
    precision=None,
    preferred_element_type=None,
    out_sharding=None,
):
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
    spec = _Spec(dims, config, precision, jnp.dtype(out.dtype).name, out_spec)
    lhs, rhs = same_varying_axes(lhs, rhs)
    try:
        y = _qdot_jit(spec, lhs, rhs, key)
    except TypeError as err:
        if "forward-mode" not in str(err):
            raise
        raise TypeError(FORWARD_MODE_MESSAGE) from err
    if out_sharding is None or explicit:
        return y
    return jax.lax.with_sharding_constraint(y, out_sharding)


def with_config(config: QDotConfig, key=None):
    """A lax.dot_general-compatible callable bound to `config` and `key` (for dot_general hooks)."""
    return functools.partial(qdot_general, config=config, key=key)


# ---------------------------------------------------------------------------------------------- einsum
def _expand_ellipsis(terms: list[str], ndims: list[int | None]) -> list[str]:
    """Replace '...' by fresh letters, right-aligned as in numpy broadcasting."""
    if not any("..." in t for t in terms):
        return terms
    fresh = [c for c in string.ascii_letters if c not in "".join(terms)]
    n_ell = [0 if "..." not in t else n - (len(t) - 3) for t, n in zip(terms, ndims, strict=True) if n is not None]
    n_out = max(n_ell)
    letters = "".join(fresh[:n_out])
    out = []
    for t, n in zip(terms, n_ell + [n_out], strict=True):
        out.append(t.replace("...", letters[n_out - n :]) if "..." in t else t)
    return out


def einsum_dims(spec: str, lhs_ndim: int, rhs_ndim: int):
    """A two-operand einsum as (lhs_sum_axes, rhs_sum_axes, dimension_numbers, out_perm) for dot_general."""
    spec = spec.replace(" ", "")
    if "->" not in spec or spec.count(",") != 1:
        raise ValueError(f"einsum spec must be explicit ('ab,bc->ac') with exactly two operands, got {spec!r}")
    ins, out = spec.split("->")
    lhs, rhs, out = _expand_ellipsis([*ins.split(","), out], [lhs_ndim, rhs_ndim, None])
    if len(lhs) != lhs_ndim or len(rhs) != rhs_ndim:
        raise ValueError(f"einsum spec {spec!r} does not match operand ranks {lhs_ndim} and {rhs_ndim}")
    for term in (lhs, rhs, out):
        if len(set(term)) != len(term):
            raise ValueError(f"einsum spec {spec!r}: repeated indices within one term are not supported")
    if set(out) - set(lhs) - set(rhs):
        raise ValueError(f"einsum spec {spec!r}: output indices missing from the operands")
    lhs_sum = tuple(i for i, c in enumerate(lhs) if c not in rhs and c not in out)
    rhs_sum = tuple(i for i, c in enumerate(rhs) if c not in lhs and c not in out)
    lhs = "".join(c for i, c in enumerate(lhs) if i not in lhs_sum)
    rhs = "".join(c for i, c in enumerate(rhs) if i not in rhs_sum)
    contract = [c for c in lhs if c in rhs and c not in out]
    batch = [c for c in lhs if c in rhs and c in out]
    dims = (
        (tuple(lhs.index(c) for c in contract), tuple(rhs.index(c) for c in contract)),
        (tuple(lhs.index(c) for c in batch), tuple(rhs.index(c) for c in batch)),
    )
    produced = batch + [c for c in lhs if c not in rhs] + [c for c in rhs if c not in lhs]
    return lhs_sum, rhs_sum, dims, tuple(produced.index(c) for c in out)


def einsum_via(dot_general, spec: str, lhs, rhs, **kwargs):
    """einsum(spec, lhs, rhs) computed by one call of `dot_general` (a lax.dot_general-compatible callable)."""
    lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
    lhs_sum, rhs_sum, dims, perm = einsum_dims(spec, lhs.ndim, rhs.ndim)
    lhs = jnp.sum(lhs, axis=lhs_sum) if lhs_sum else lhs
    rhs = jnp.sum(rhs, axis=rhs_sum) if rhs_sum else rhs
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    y = dot_general(lhs, rhs, dims, **kwargs)
    return y if perm == tuple(range(y.ndim)) else jnp.transpose(y, perm)


def qeinsum(spec: str, lhs, rhs, config: QDotConfig | None = None, *, key=None, **kwargs):
    """Two-operand einsum through qdot_general (lhs = activations X, rhs = weights W)."""
    return einsum_via(with_config(config or QDotConfig(), key), spec, lhs, rhs, **kwargs)

"""Kernel dispatch: `impl="xla" | "pallas" | "auto"` for quantize and fake_quant on arrays of any rank.

    y = kernels.fake_quant(x, fmt, axis, key=key, impl="pallas")      # == lb.fake_quant(x, fmt, axis, key=key)
    q = kernels.quantize(x, fmt, axis, impl="auto")                    # Pallas on a GPU, XLA elsewhere
    y = kernels.qmatmul(kernels.quantize(x, fmt), kernels.quantize(w, fmt))  # x @ w.T from QArrays, float32
    y = kernels.fake_quant(x, fmt, -1, rotation=kernels.rotation_signs(32, key))  # Q(x R), R block Hadamard

"xla" runs the core (lowbit_jax.quantize); "pallas" runs `pallas_quantize` (interpreted off GPUs, so it works
anywhere, slowly); "auto" picks Pallas on a GPU only. Both give the same bits: stochastic-rounding bits are
drawn here exactly as the core draws them (`sr_bits`) and passed to the kernel as an input. The axis is moved
last and the array viewed as 2-D for the kernels. Identity formats, scalars and empty arrays use the core.

rotation (optional, both impls): the h random signs of R = diag(signs) H / sqrt(h), applied along `axis`
before quantization; the result lives in the rotated domain (x R), and fake_quant's straight-through
gradient is dy R^T. Without rotation the result equals lb.quantize / lb.fake_quant bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from lowbit_jax.formats import Format
from lowbit_jax.kernels import reference
from lowbit_jax.kernels.pallas_qmatmul import MatTiles, qmatmul_pallas, qmatmul_ref
from lowbit_jax.kernels.pallas_quantize import Tiles, fake_quant_pallas, quantize_pallas
from lowbit_jax.qarray import QArray
from lowbit_jax.quantize import (
    check_input,
    layout,
)
from lowbit_jax.quantize import (
    fake_quant as core_fake_quant,
)
from lowbit_jax.quantize import (
    quantize as core_quantize,
)

IMPLS = ("xla", "pallas", "auto")

__all__ = [
    "IMPLS",
    "MatTiles",
    "Tiles",
    "fake_quant",
    "qmatmul",
    "quantize",
    "resolve_impl",
    "rotation_signs",
    "sr_bits",
]


def resolve_impl(impl: str) -> str:
    """'xla' or 'pallas' for an impl name ('auto': Pallas on a GPU, XLA elsewhere)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "pallas" if jax.default_backend() == "gpu" else "xla"
    return impl


def rotation_signs(h: int, key) -> jax.Array:
    """The h random +-1 signs of lowbit_jax.hadamard's rotation for `key`."""
    from lowbit_jax import hadamard

    return hadamard.random_signs(h, key)


def sr_bits(key, shape: tuple[int, ...], fmt: Format, axis: int) -> jax.Array:
    """The core's stochastic-rounding bits for `key` (uint32), laid out in x's padded shape."""
    lay = layout(tuple(shape), fmt.block_size, axis % max(len(shape), 1))
    return jax.random.bits(key, lay.blocked_shape, jnp.uint32).reshape(lay.padded_shape)


@dataclasses.dataclass(frozen=True)
class _Static:
    fmt: Format
    axis: int
    impl: str
    tiles: Tiles
    backend: str | None


def _as_2d(x: jax.Array, axis: int) -> jax.Array:
    moved = jnp.moveaxis(x, axis, -1)
    return moved.reshape(-1, moved.shape[-1])


def _from_2d(y_2d: jax.Array, x_shape: tuple[int, ...], axis: int) -> jax.Array:
    """(rows, n) -> x's layout with `axis` of length n."""
    moved = tuple(s for i, s in enumerate(x_shape) if i != axis) + (y_2d.shape[-1],)
    return jnp.moveaxis(y_2d.reshape(moved), -1, axis)


def _unrotate_2d(g_2d: jax.Array, signs: jax.Array) -> jax.Array:
    """g R^T = (g H / sqrt(h)) diag(signs), chunk by chunk (H is symmetric)."""
    h = signs.shape[0]
    y = reference.rotate_rows(g_2d, jnp.ones((h,), jnp.float32))
    return (y.reshape(y.shape[0], -1, h) * signs.astype(jnp.float32).reshape(1, 1, h)).reshape(y.shape)


def _fake_quant_2d(x, rbits, signs, st: _Static):
    x2 = _as_2d(x, st.axis)
    b2 = None if rbits is None else _as_2d(rbits, st.axis)
    if st.impl == "pallas":
        y2 = fake_quant_pallas(x2, st.fmt, rbits=b2, rotation=signs, tiles=st.tiles, backend=st.backend)
    else:
        y2 = reference.fake_quant_ref(x2, st.fmt, rbits=b2, rotation=signs)
    return _from_2d(y2, x.shape, st.axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _fake_quant_ste(x, rbits, signs, st: _Static):
    return _fake_quant_2d(x, rbits, signs, st)


def _ste_fwd(x, rbits, signs, st):
    return _fake_quant_2d(x, rbits, signs, st), signs


def _ste_bwd(st, signs, g):
    if signs is not None:
        g = _from_2d(_unrotate_2d(_as_2d(g, st.axis), signs), g.shape, st.axis).astype(g.dtype)
    return g, None, None


_fake_quant_ste.defvjp(_ste_fwd, _ste_bwd)


def _core_only(x: jax.Array, fmt: Format) -> bool:
    return fmt.is_identity or x.ndim == 0 or x.size == 0


@functools.partial(jax.jit, static_argnums=(3,))
def _fake_quant_jit(x, key, signs, st: _Static):
    rbits = None if key is None else sr_bits(key, x.shape, st.fmt, st.axis)
    return _fake_quant_ste(x, rbits, signs, st)


@functools.partial(jax.jit, static_argnums=(3,))
def _quantize_jit(x, key, signs, st: _Static):
    """(codes, scales, tensor_scale) in the core QArray's layout."""
    x2 = _as_2d(x, st.axis)
    b2 = None if key is None else _as_2d(sr_bits(key, x.shape, st.fmt, st.axis), st.axis)
    if st.impl == "pallas":
        out = quantize_pallas(x2, st.fmt, rbits=b2, rotation=signs, tiles=st.tiles, backend=st.backend)
    else:
        out = reference.quantize_ref(x2, st.fmt, rbits=b2, rotation=signs)
    codes, scales, tensor = out
    scales = _from_2d(scales, x.shape, st.axis) if scales.ndim else scales
    return _from_2d(codes, x.shape, st.axis), scales, tensor


def _core_only(x: jax.Array, fmt: Format) -> bool:
    return fmt.is_identity or x.ndim == 0 or x.size == 0


def fake_quant(x, fmt, axis=-1, *, key=None, impl="auto", rotation=None, tiles=None, backend=None) -> jax.Array:
    """lb.fake_quant through `impl` (optionally after a block Hadamard rotation); straight-through gradient."""
    x, fmt, axis = check_input(x, fmt, axis)
    impl = resolve_impl(impl)
    if _core_only(x, fmt) or (impl == "xla" and rotation is None):
        return core_fake_quant(x, fmt, axis, key=key)
    return _fake_quant_jit(x, key, rotation, _Static(fmt, axis, impl, tiles or Tiles(), backend))


def quantize(x, fmt, axis=-1, *, key=None, impl="auto", rotation=None, tiles=None, backend=None) -> QArray:
    """lb.quantize through `impl` (optionally after a block Hadamard rotation); codes and scales as the core's."""
    x, fmt, axis = check_input(x, fmt, axis)
    impl = resolve_impl(impl)
    if _core_only(x, fmt) or (impl == "xla" and rotation is None):
        return core_quantize(x, fmt, axis, key=key)
    codes, scales, tensor = _quantize_jit(x, key, rotation, _Static(fmt, axis, impl, tiles or Tiles(), backend))
    return QArray(codes, scales, tensor, fmt, axis, x.shape, x.dtype)


def qmatmul(a: QArray, b: QArray, *, impl="auto", tiles=None, backend=None) -> jax.Array:
    """a (M, K) . b (N, K)^T in float32 for QArrays quantized along K: qdot_general's forward on stored operands."""
    if resolve_impl(impl) == "xla":
        return jax.jit(qmatmul_ref)(a, b)
    return qmatmul_pallas(a, b, tiles=tiles or MatTiles(), backend=backend)

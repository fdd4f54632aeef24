"""Kernel dispatch: `impl="xla" | "pallas" | "auto"` for quantize and fake_quant on arrays of any rank.

    y = kernels.fake_quant(x, fmt, axis, key=key, impl="pallas")      # == lb.fake_quant(x, fmt, axis, key=key)
    q = kernels.quantize(x, fmt, axis, impl="auto")                    # Pallas on a GPU, XLA elsewhere
    y = kernels.qmatmul(kernels.quantize(x, fmt), kernels.quantize(w, fmt))  # x @ w.T from QArrays, float32
    y = kernels.fake_quant(x, fmt, -1, rotation=kernels.rotation_signs(32, key))  # Q(x R), R block Hadamard

"xla" runs the core (lowbit_jax.codec); "pallas" runs `pallas_quantize` (interpreted off GPUs, so it works
anywhere, slowly); "auto" picks Pallas on a GPU only. Both give the same bits: stochastic-rounding bits are
drawn here exactly as the core draws them (`sr_bits`) and passed to the kernel as an input; `sr_bits=n` (limited
random bits, lowbit_jax.rounding.limit_sr_bits) transforms those bits before the kernel reads them, so the
kernels round with n bits exactly as the core does. The kernels take
2-D arrays blocked along the last axis: 1-D blocks, per-channel and per-tensor formats move the axis last;
2-D tiles become one row per tile (`blocks.Layout.to_rows`) and run as 1-D blocks of rows x cols elements.
Identity formats, scalars and empty arrays use the core. Zero-point INT formats have no kernel
(NotImplementedError).

rotation (optional, both impls, 1-D layouts): the h random signs of R = diag(signs) H / sqrt(h), applied along
`axis` before quantization; the result lives in the rotated domain (x R), and fake_quant's straight-through
gradient is dy R^T. Without rotation the result equals lb.quantize / lb.fake_quant bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import cast

import jax
import jax.numpy as jnp

from lowbit_jax import blocks, codec, rounding
from lowbit_jax._types import ArrayLike, Axis, Key
from lowbit_jax.codec import check_input
from lowbit_jax.elements import LUTElem
from lowbit_jax.formats import AdaptiveFormat, Format
from lowbit_jax.impls import IMPLS, resolve_impl
from lowbit_jax.kernels import reference
from lowbit_jax.kernels.pallas_qmatmul import MatTiles, qmatmul_pallas, qmatmul_ref
from lowbit_jax.kernels.pallas_quantize import Tiles, fake_quant_pallas, quantize_pallas
from lowbit_jax.qarray import QArray

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


def rotation_signs(h: int, key: Key) -> jax.Array:
    """The h random +-1 signs of lowbit_jax.hadamard's rotation for `key`."""
    from lowbit_jax import hadamard

    return hadamard.random_signs(h, key)


def _axes(shape: tuple[int, ...], fmt: Format, axis: Axis | None) -> tuple[int, ...]:
    ndim = max(len(shape), 1)
    axis = fmt.default_axis if axis is None else axis
    return tuple(a % ndim for a in ((axis,) if isinstance(axis, int) else axis))


def sr_bits(key: Key, shape: tuple[int, ...], fmt: Format, axis: Axis | None, n_bits: int | None = None) -> jax.Array:
    """The core's stochastic-rounding bits for `key` (uint32), laid out in x's padded shape; n_bits: as the core
    transforms them for sr_bits=n_bits (rounding.limit_sr_bits)."""
    lay = blocks.layout(tuple(shape), fmt.block_size, _axes(shape, fmt, axis))
    bits = jax.random.bits(key, lay.blocked_shape, jnp.uint32).reshape(lay.padded_shape)
    return rounding.limit_sr_bits(bits, rounding.check_sr_bits(n_bits))


@dataclasses.dataclass(frozen=True)
class _Static:
    fmt: Format
    axes: tuple[int, ...]
    impl: str
    tiles: Tiles
    backend: str | None
    sr_bits: int | None = None

    @property
    def is_tile(self) -> bool:
        return len(self.axes) == 2

    def layout(self, shape) -> blocks.Layout:
        return blocks.layout(tuple(shape), self.fmt.block_size, self.axes)

    @property
    def fmt_2d(self) -> Format:
        """The format the 2-D kernels run: a tile of r x c elements is one row-block of r * c."""
        return reference.row_format(self.fmt)


def _as_2d(x: jax.Array, st: _Static) -> jax.Array:
    if st.is_tile:
        return st.layout(x.shape).to_rows(x)
    moved = jnp.moveaxis(x, st.axes[0], -1)
    return moved.reshape(-1, moved.shape[-1])


def _from_2d(y_2d: jax.Array, x_shape: tuple[int, ...], st: _Static, crop: bool = True) -> jax.Array:
    """(rows, n) -> x's layout; tiles: rows of whole tiles back to the (padded, unless crop) layout."""
    if st.is_tile:
        return st.layout(x_shape).from_rows(y_2d, crop)
    axis = st.axes[0]
    moved = tuple(s for i, s in enumerate(x_shape) if i != axis) + (y_2d.shape[-1],)
    return jnp.moveaxis(y_2d.reshape(moved), -1, axis)


def _bits_2d(key, x_shape, st: _Static):
    if key is None:
        return None
    lay = st.layout(x_shape)
    bits = rounding.limit_sr_bits(jax.random.bits(key, lay.blocked_shape, jnp.uint32), st.sr_bits)
    if st.is_tile:
        return lay.blocked_to_rows(bits)
    return _as_2d(bits.reshape(lay.padded_shape), st)


def _unrotate_2d(g_2d: jax.Array, signs: jax.Array) -> jax.Array:
    """g R^T = (g H / sqrt(h)) diag(signs), chunk by chunk (H is symmetric)."""
    h = signs.shape[0]
    y = reference.rotate_rows(g_2d, jnp.ones((h,), jnp.float32))
    return (y.reshape(y.shape[0], -1, h) * signs.astype(jnp.float32).reshape(1, 1, h)).reshape(y.shape)


def _fake_quant_2d(x, rbits, signs, amax, st: _Static):
    x2 = _as_2d(x, st)
    kw = dict(rbits=rbits, rotation=signs, tensor_amax=amax)
    if st.impl == "pallas":
        y2 = fake_quant_pallas(x2, st.fmt_2d, tiles=st.tiles, backend=st.backend, **kw)
    else:
        y2 = reference.fake_quant_ref(x2, st.fmt_2d, **kw)
    return codec.to_output(_from_2d(y2, x.shape, st), x.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _fake_quant_ste_plain(x, rbits, amax, st: _Static):
    """The unrotated kernel with a straight-through derivative in x (forward and reverse mode)."""
    return _fake_quant_2d(x, rbits, None, amax, st)


@_fake_quant_ste_plain.defjvp
def _ste_plain_jvp(st, primals, tangents):
    x, rbits, amax = primals
    return _fake_quant_ste_plain(x, rbits, amax, st), tangents[
        0
    ]  # the rule itself again: straight-through at every order


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fake_quant_ste_rotated(x, rbits, signs, amax, st: _Static):
    """The rotated kernel (output in the rotated domain x R) whose gradient is g R^T (reverse mode only)."""
    return _fake_quant_2d(x, rbits, signs, amax, st)


def _ste_fwd(x, rbits, signs, amax, st):
    return _fake_quant_2d(x, rbits, signs, amax, st), signs


def _ste_bwd(st, signs, g):
    return _from_2d(_unrotate_2d(_as_2d(g, st), signs), g.shape, st).astype(g.dtype), None, None, None


_fake_quant_ste_rotated.defvjp(_ste_fwd, _ste_bwd)


def _fake_quant_ste(x, rbits, signs, amax, st: _Static):
    if signs is None:
        return _fake_quant_ste_plain(x, rbits, amax, st)
    return _fake_quant_ste_rotated(x, rbits, signs, amax, st)


def _core_only(x: jax.Array, fmt: Format) -> bool:
    return fmt.is_identity or x.ndim == 0 or x.size == 0


def _zero_is_exact(fmt: Format) -> bool:
    """Whether every candidate of an adaptive format rounds 0 to 0 (so padding adds nothing to a block error)."""
    return all(0.0 in c.elem.values for c in cast(AdaptiveFormat, fmt).candidates if isinstance(c.elem, LUTElem))


def _check_kernel(x: jax.Array, fmt: Format, axes, rotation) -> None:
    """NotImplementedError for what the kernels do not cover, naming the alternative."""
    if getattr(fmt.elem, "zero_point", False):
        raise NotImplementedError(
            f"{fmt.label}: the Pallas kernels do not cover zero-point INT blocks (per-block min/max and stored "
            "zero points); use impl='xla'"
        )
    if rotation is not None and len(axes) == 2:
        raise NotImplementedError(
            f"{fmt.label}: a Hadamard rotation of 2-D tiles is not defined; rotate along one axis"
        )
    padded = blocks.layout(x.shape, fmt.block_size, axes).padded_shape != x.shape
    if fmt.is_adaptive and padded and not _zero_is_exact(fmt):
        raise NotImplementedError(
            f"{fmt.label}: a lookup-table candidate without 0 makes the kernels' zero padding count in the block "
            "error of a partial block; use impl='xla' (which leaves padding out) or whole blocks"
        )


@functools.partial(jax.jit, static_argnums=(4,))
def _fake_quant_jit(x, key, signs, amax, st: _Static):
    return _fake_quant_ste(x, _bits_2d(key, x.shape, st), signs, amax, st)


@functools.partial(jax.jit, static_argnums=(4,))
def _quantize_jit(x, key, signs, amax, st: _Static):
    """(codes, scales, tensor_scale, selectors) in the core QArray's layout."""
    x2, b2 = _as_2d(x, st), _bits_2d(key, x.shape, st)
    kw = dict(rbits=b2, rotation=signs, tensor_amax=amax)
    if st.impl == "pallas":
        out = quantize_pallas(x2, st.fmt_2d, tiles=st.tiles, backend=st.backend, **kw)
    else:
        out = reference.quantize_ref(x2, st.fmt_2d, **kw)
    codes, scales, tensor, sel = out
    if st.is_tile:
        lay = st.layout(x.shape)
        sel = None if sel is None else lay.rows_to_scales(sel)
        return _from_2d(codes, x.shape, st, crop=False), lay.rows_to_scales(scales), tensor, sel
    scales = _from_2d(scales, x.shape, st) if scales.ndim else scales
    sel = None if sel is None else _from_2d(sel, x.shape, st)
    return _from_2d(codes, x.shape, st), scales, tensor, sel


def fake_quant(
    x: ArrayLike,
    fmt: Format | str,
    axis: Axis | None = None,
    *,
    key: Key | None = None,
    sr_bits: int | None = None,
    impl: str = "auto",
    rotation: jax.Array | None = None,
    tiles: Tiles | None = None,
    backend: str | None = None,
    tensor_amax: jax.Array | None = None,
) -> jax.Array:
    """lb.fake_quant through `impl` (optionally after a block Hadamard rotation); straight-through gradient.
    tensor_amax: the amax of the second-level scale, of the tensor the quantizer sees (after the rotation)."""
    x, fmt, axes = check_input(x, fmt, axis)
    impl = resolve_impl(impl)
    sr_bits = rounding.check_sr_bits(sr_bits, key is not None)
    if _core_only(x, fmt) or (impl == "xla" and rotation is None):
        return codec.fake_quant_jit(x, fmt, axes, key, sr_bits, tensor_amax)
    _check_kernel(x, fmt, axes, rotation)
    st = _Static(fmt, axes, impl, tiles or Tiles(), backend, sr_bits)
    return _fake_quant_jit(x, key, rotation, tensor_amax, st)


def quantize(
    x: ArrayLike,
    fmt: Format | str,
    axis: Axis | None = None,
    *,
    key: Key | None = None,
    sr_bits: int | None = None,
    impl: str = "auto",
    rotation: jax.Array | None = None,
    tiles: Tiles | None = None,
    backend: str | None = None,
    tensor_amax: jax.Array | None = None,
) -> QArray:
    """lb.quantize through `impl` (optionally after a block Hadamard rotation); codes and scales as the core's.
    tensor_amax: as for fake_quant."""
    x, fmt, axes = check_input(x, fmt, axis)
    impl = resolve_impl(impl)
    sr_bits = rounding.check_sr_bits(sr_bits, key is not None)
    if _core_only(x, fmt) or (impl == "xla" and rotation is None):
        return codec.quantize_jit(x, fmt, axes, key, None, sr_bits, tensor_amax)
    _check_kernel(x, fmt, axes, rotation)
    st = _Static(fmt, axes, impl, tiles or Tiles(), backend, sr_bits)
    codes, scales, tensor, sel = _quantize_jit(x, key, rotation, tensor_amax, st)
    axis_field = axes[0] if len(axes) == 1 else axes
    return QArray(codes, scales, tensor, fmt, axis_field, x.shape, x.dtype, selectors=sel)


def qmatmul(
    a: QArray, b: QArray, *, impl: str = "auto", tiles: MatTiles | None = None, backend: str | None = None
) -> jax.Array:
    """a (M, K) . b (N, K)^T in float32 for QArrays quantized along K: qdot_general's forward on stored operands."""
    if resolve_impl(impl) == "xla":
        return jax.jit(qmatmul_ref)(a, b)
    return qmatmul_pallas(a, b, tiles=tiles or MatTiles(), backend=backend)

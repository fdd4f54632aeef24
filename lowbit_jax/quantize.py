"""quantize / dequantize / fake_quant: blocks along an axis -> block scale -> element rounding.

Data flow (DESIGN.md section 3): x -> blocks along `axis` (zero-padded) -> block amax -> scale -> x / scale ->
round to the element grid (RNE or stochastic, saturating) -> QArray, and back. `fake_quant` runs the same
arithmetic without the storage casts, so it equals `dequantize(quantize(x))` bit for bit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lowbit_jax import rounding, scaling
from lowbit_jax.formats import PER_CHANNEL, PER_TENSOR, Format, get_format
from lowbit_jax.qarray import QArray


@dataclass(frozen=True)
class Layout:
    """How an array of `shape` is cut into blocks of `block` along `axis` (per-tensor: one flat block)."""

    shape: tuple[int, ...]
    axis: int
    block: int
    n_blocks: int
    per_tensor: bool

    @property
    def padded_shape(self) -> tuple[int, ...]:
        if self.per_tensor:
            return self.shape
        s = list(self.shape)
        s[self.axis] = self.block * self.n_blocks
        return tuple(s)

    @property
    def blocked_shape(self) -> tuple[int, ...]:
        """(..., n_blocks, block, ...): the axis split in two; the block axis is `axis + 1`."""
        if self.per_tensor:
            return (1, max(1, int(_prod(self.shape))))
        s = self.shape
        return s[: self.axis] + (self.n_blocks, self.block) + s[self.axis + 1 :]

    @property
    def block_axis(self) -> int:
        return 1 if self.per_tensor else self.axis + 1

    @property
    def scales_shape(self) -> tuple[int, ...]:
        if self.per_tensor:
            return ()
        s = list(self.shape)
        s[self.axis] = self.n_blocks
        return tuple(s)


def _prod(xs) -> int:
    out = 1
    for v in xs:
        out *= v
    return out


def layout(shape: tuple[int, ...], block_size: int | str, axis: int) -> Layout:
    """Blocks of `block_size` (int, "channel"/-1 or "tensor") for an array of `shape` along `axis` (normalised)."""
    if block_size == PER_TENSOR:
        return Layout(tuple(shape), axis, max(1, _prod(shape)), 1, True)
    length = shape[axis]
    block = max(1, length) if block_size in (PER_CHANNEL, -1) else block_size
    return Layout(tuple(shape), axis, block, -(-length // block) if length else 0, False)


def check_input(x, fmt: Format | str, axis: int) -> tuple[jax.Array, Format, int]:
    """Validate and normalise (x, fmt, axis); clear errors for non-float input and out-of-range axes."""
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    if not isinstance(fmt, Format):
        raise TypeError(f"fmt must be a Format or a format name, got {type(fmt).__name__}")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"lowbit_jax quantizes real floating-point arrays; got dtype {x.dtype}")
    if not isinstance(axis, int) or not -max(x.ndim, 1) <= axis < max(x.ndim, 1):
        raise ValueError(f"axis {axis!r} is out of range for an array of rank {x.ndim}")
    if x.ndim == 0 and not (fmt.is_identity or fmt.block_size == PER_TENSOR):
        raise ValueError(f"{fmt.name} quantizes blocks along an axis; got a scalar")
    return x, fmt, axis % max(x.ndim, 1)


def to_blocks(x: jax.Array, lay: Layout) -> jax.Array:
    """float32 view (..., n_blocks, block, ...) of x, zero-padded along the axis."""
    x = x.astype(jnp.float32)
    if lay.per_tensor:
        return x.reshape(lay.blocked_shape)
    pad = lay.n_blocks * lay.block - lay.shape[lay.axis]
    if pad:
        widths = [(0, 0)] * x.ndim
        widths[lay.axis] = (0, pad)
        x = jnp.pad(x, widths)
    return x.reshape(lay.blocked_shape)


def from_blocks(y_blocks: jax.Array, lay: Layout, crop: bool = True) -> jax.Array:
    """Inverse of `to_blocks`: merge the block axes and (optionally) crop the padding."""
    y = y_blocks.reshape(lay.padded_shape)
    if crop and not lay.per_tensor and lay.padded_shape != lay.shape:
        y = jax.lax.slice_in_dim(y, 0, lay.shape[lay.axis], axis=lay.axis)
    return y


class BlockScale(NamedTuple):
    """Per-block scale in both directions (block axis kept with size 1).

    exp: UE8M0 exponent (scale = 2^exp) or None;  divisor: float32 block divisor (E4M3 scale x g, or FP32
    scale) or None;  finite: blocks free of NaN/Inf;  tensor: NV tensor scale g or None.
    """

    exp: jax.Array | None
    divisor: jax.Array | None
    finite: jax.Array
    tensor: jax.Array | None
    block_scale: jax.Array | None  # E4M3 / FP32 block scale as float32 (before the tensor scale)


def amax_along(x: jax.Array, axis: int) -> jax.Array:
    """max |x| along `axis` (kept with size 1); NaN where the slice holds a NaN, Inf where it holds an Inf.

    The NaN test is explicit: XLA:CPU's max reduction skips NaNs (measured with jax 0.10.2: jnp.max of an
    (8, 4128) array holding one NaN is finite), and so do Triton's.
    """
    amax = jnp.max(jnp.abs(x), axis=axis, keepdims=True)
    has_nan = jnp.max(jnp.isnan(x).astype(jnp.int32), axis=axis, keepdims=True) > 0
    return jnp.where(has_nan, jnp.nan, amax)


def block_amax(x_blocks: jax.Array, lay: Layout) -> jax.Array:
    """max |x| of every block (block axis kept with size 1); NaN/Inf for blocks holding them."""
    return amax_along(x_blocks, lay.block_axis)


def nv_tensor_amax(amax: jax.Array) -> jax.Array:
    """The NV tensor amax: the largest finite block amax (blocks holding NaN/Inf are left out)."""
    return jnp.max(jnp.where(jnp.isfinite(amax), amax, 0.0))


def block_scale(x_blocks: jax.Array, fmt: Format, lay: Layout) -> BlockScale:
    """The scale of every block of `x_blocks` under `fmt`'s rule."""
    return scale_from_amax(block_amax(x_blocks, lay), fmt)


def scale_from_amax(amax: jax.Array, fmt: Format, g: jax.Array | None = None) -> BlockScale:
    """The BlockScale of blocks with these amaxes; `g`: the NV tensor scale (default: from these blocks)."""
    finite = jnp.isfinite(amax)
    elem = fmt.elem
    if fmt.scale == "ue8m0":
        rule = scaling.ue8m0_exponent_bf16 if fmt.scale_dtype == "bfloat16" else scaling.ue8m0_exponent
        return BlockScale(rule(amax, elem, fmt.scale_rounding), None, finite, None, None)
    if fmt.scale == "fp32":
        s = scaling.fp32_scale(amax, elem, fmt.scale_dtype)
        return BlockScale(None, s, finite, None, s)
    g = scaling.nv_tensor_scale(nv_tensor_amax(amax), elem) if g is None else g
    s = scaling.nv_block_scale(amax, g, elem)
    return BlockScale(None, s * g, finite, g, s)


def to_elem_domain(x_blocks: jax.Array, sc: BlockScale, fmt: Format) -> jax.Array:
    """x / scale in float32 (exact for powers of two, correctly rounded otherwise), or in bf16 if asked."""
    if fmt.scale_dtype == "bfloat16":
        x_blocks = rounding.round_bf16(x_blocks)
    if sc.exp is not None:
        return rounding.mul_pow2(x_blocks, -sc.exp)
    v = jnp.where(sc.divisor > 0, rounding.div_exact(x_blocks, sc.divisor), jnp.copysign(0.0, x_blocks))
    if fmt.scale_dtype == "bfloat16":
        v = rounding.round_bf16(v)
    return v


def from_elem_domain(values: jax.Array, sc: BlockScale) -> jax.Array:
    """values x scale in float32; NaN for blocks that held NaN or Inf."""
    y = rounding.mul_pow2(values, sc.exp) if sc.exp is not None else values * sc.divisor
    return jnp.where(sc.finite, y, jnp.nan)


def _uniform(key, lay: Layout) -> jax.Array | None:
    if key is None:
        return None
    return rounding.uniform_from_bits(jax.random.bits(key, lay.blocked_shape, jnp.uint32))


def quantize_blocks(x: jax.Array, fmt: Format, axis: int, key=None) -> tuple[jax.Array, BlockScale, Layout]:
    """Element values (float32 on the grid, blocked layout), the block scales and the layout."""
    lay = layout(x.shape, fmt.block_size, axis)
    x_blocks = to_blocks(x, lay)
    sc = block_scale(x_blocks, fmt, lay)
    values = rounding.round_elem(to_elem_domain(x_blocks, sc, fmt), fmt.elem, _uniform(key, lay))
    return values, sc, lay


def encode_scales(sc: BlockScale, fmt: Format) -> jax.Array:
    """Block scales in their storage dtype (float8_e8m0fnu, float8_e4m3fn, float32/bfloat16), shape kept."""
    if fmt.scale == "ue8m0":
        return scaling.e8m0_encode(sc.exp, sc.finite)
    if fmt.scale == "e4m3":
        return sc.block_scale.astype(jnp.float8_e4m3fn)
    return jnp.where(sc.finite, sc.block_scale, jnp.nan).astype(fmt.scale_dtype)


def _stored_scales(sc: BlockScale, fmt: Format, lay: Layout) -> jax.Array:
    return encode_scales(sc, fmt).reshape(lay.scales_shape)


def quantize(x, fmt: Format | str, axis: int = -1, *, key=None, impl: str = "xla") -> QArray:
    """Quantize `x` in blocks along `axis`; `key` switches element rounding from RNE to stochastic.

    impl: "xla" (this module), "pallas" (the kernel; interpreted on CPU) or "auto" (Pallas on GPU only).
    """
    x, fmt, axis = check_input(x, fmt, axis)
    if impl != "xla":
        from lowbit_jax import kernels  # deferred: the kernels import this module

        return kernels.quantize(x, fmt, axis, key=key, impl=impl)
    return _quantize_xla(x, fmt, axis, key)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _quantize_xla(x: jax.Array, fmt: Format, axis: int, key) -> QArray:
    """The XLA quantizer, jitted so that eager calls compile once per shape instead of dispatching op by op."""
    if fmt.is_identity:  # rounded, not only cast: XLA:GPU drops the pair cast here / cast back in dequantize
        codes = rounding.round_to_dtype(x, fmt.passthrough_dtype).astype(fmt.passthrough_dtype)
        return QArray(codes, None, None, fmt, axis, x.shape, x.dtype)
    values, sc, lay = quantize_blocks(x, fmt, axis, key)
    codes = rounding.encode(jnp.where(sc.finite, values, 0.0), fmt.elem)
    codes = from_blocks(codes, lay, crop=False)
    return QArray(codes, _stored_scales(sc, fmt, lay), sc.tensor, fmt, axis, x.shape, x.dtype)


def _scale_from_qarray(q: QArray, lay: Layout) -> BlockScale:
    """Rebuild the per-block BlockScale (blocked, keepdims layout) from stored scales."""
    keep = list(lay.blocked_shape)
    keep[lay.block_axis] = 1
    fmt = q.fmt
    if fmt.scale == "ue8m0":
        exp, finite = scaling.e8m0_decode(q.scales)
        return BlockScale(exp.reshape(keep), None, finite.reshape(keep), None, None)
    s = q.scales.astype(jnp.float32).reshape(keep)
    divisor = s * q.tensor_scale if fmt.scale == "e4m3" else s
    return BlockScale(None, divisor, jnp.isfinite(s), q.tensor_scale, s)


def dequantize(q: QArray, dtype=None) -> jax.Array:
    """Values of a QArray in `dtype` (default: the original input dtype), cropped to the original shape."""
    return _dequantize(q, jnp.dtype(q.dtype if dtype is None else dtype))


@functools.partial(jax.jit, static_argnums=(1,))
def _dequantize(q: QArray, dtype) -> jax.Array:
    if q.fmt.is_identity:
        return q.codes.astype(dtype)
    lay = layout(q.shape, q.fmt.block_size, q.axis)
    values = rounding.decode(q.codes, q.fmt.elem).reshape(lay.blocked_shape)
    y = from_elem_domain(values, _scale_from_qarray(q, lay))
    return from_blocks(y, lay).astype(dtype)


def _fake_quant_impl(x: jax.Array, fmt: Format, axis: int, key) -> jax.Array:
    if fmt.is_identity:
        return rounding.round_to_dtype(x, fmt.passthrough_dtype).astype(x.dtype)  # not a cast pair: XLA:GPU drops those
    values, sc, lay = quantize_blocks(x, fmt, axis, key)
    return from_blocks(from_elem_domain(values, sc), lay).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _fake_quant_ste(x, fmt, axis, key):
    return _fake_quant_impl(x, fmt, axis, key)


def _fake_quant_fwd(x, fmt, axis, key):
    return _fake_quant_impl(x, fmt, axis, key), None


def _fake_quant_bwd(fmt, axis, _, g):
    return g, None


_fake_quant_ste.defvjp(_fake_quant_fwd, _fake_quant_bwd)
_fake_quant_xla = jax.jit(_fake_quant_ste, static_argnums=(1, 2))  # eager calls compile once per shape


def fake_quant(x, fmt: Format | str, axis: int = -1, *, key=None, impl: str = "xla") -> jax.Array:
    """dequantize(quantize(x)) in one pass, same shape and dtype as x; the gradient passes straight through.

    impl: "xla" (this module), "pallas" (the kernel; interpreted on CPU) or "auto" (Pallas on GPU only).
    """
    x, fmt, axis = check_input(x, fmt, axis)
    if impl != "xla":
        from lowbit_jax import kernels  # deferred: the kernels import this module

        return kernels.fake_quant(x, fmt, axis, key=key, impl=impl)
    return _fake_quant_xla(x, fmt, axis, key)

"""The public quantizer: quantize / dequantize / fake_quant (straight-through gradient), dispatched through
the implementation registry (`lowbit_jax.impls`). The arithmetic is `lowbit_jax.codec`'s.

`fake_quant(x)` equals `dequantize(quantize(x))` bit for bit, for every implementation.

Stochastic rounding: `key` draws 24-bit uniforms; `sr_bits=n` (1..24) decides each rounding with n random bits
as hardware does, P(up) = floor(frac 2^n) / 2^n of a step (a bias toward zero below 2^-n of a step;
lowbit_jax.rounding gives the exact rule). sr_bits=24 is bit for bit the default.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lowbit_jax import codec, kernels, rounding
from lowbit_jax._types import ArrayLike, Axis, DTypeLike, Key
from lowbit_jax.codec import check_input
from lowbit_jax.formats import Format
from lowbit_jax.impls import resolve_impl
from lowbit_jax.qarray import QArray


def _check_key(fmt: Format, key: Key | None) -> None:
    if key is not None and fmt.is_identity:
        raise ValueError(
            f"{fmt.name} is an identity format: it rounds to nearest, so a stochastic-rounding key has no effect"
        )


@jax.custom_jvp
def _no_gradient(x):
    return x


@_no_gradient.defjvp
def _no_gradient_jvp(primals, tangents):
    raise TypeError(
        "lb.quantize is not differentiable (its codes are integers or low-bit floats); differentiate lb.fake_quant, "
        "whose gradient passes straight through"
    )


def quantize(
    x: ArrayLike,
    fmt: Format | str,
    axis: Axis | None = None,
    *,
    key: Key | None = None,
    sr_bits: int | None = None,
    impl: str = "xla",
) -> QArray:
    """Quantize `x` in blocks along `axis` (default: -1, or (-2, -1) for 2-D tiles); `key` switches element
    rounding from RNE to stochastic, `sr_bits` (1..24, with a key) limits its random bits per element.
    impl: "xla", "pallas" (interpreted on CPU) or "auto" (Pallas on GPU).
    Differentiating through quantize raises (use fake_quant for a straight-through gradient)."""
    x, fmt, axes = check_input(x, fmt, axis)
    _check_key(fmt, key)
    sr_bits = rounding.check_sr_bits(sr_bits, key is not None)
    x = _no_gradient(x)
    if resolve_impl(impl) == "pallas":
        return kernels.quantize(x, fmt, axes, key=key, sr_bits=sr_bits, impl="pallas")
    return codec.quantize_jit(x, fmt, axes, key, None, sr_bits)


def dequantize(q: QArray, dtype: DTypeLike | None = None) -> jax.Array:
    """Values of a QArray in `dtype` (default: the original input dtype), cropped to the original shape."""
    if not isinstance(q, QArray):
        raise TypeError(f"dequantize takes a QArray, got {type(q).__name__}")
    codec.check_qarray(q)
    return codec.dequantize_jit(q, jnp.dtype(q.dtype if dtype is None else dtype))


def block_choices(x: ArrayLike, fmt: Format | str, axis: Axis | None = None) -> jax.Array:
    """The candidate (int32 index into fmt.candidates) each block of an adaptive format chooses, in the shape of
    quantize(x, fmt, axis).scales; ValueError for other formats."""
    x, fmt, axes = check_input(x, fmt, axis)
    if not fmt.is_adaptive:
        raise ValueError(f"{fmt.name} is not an adaptive format; block choices exist for lb.adaptive formats")
    return codec.block_choices_jit(x, fmt, axes)


def fake_quant(
    x: ArrayLike,
    fmt: Format | str,
    axis: Axis | None = None,
    *,
    key: Key | None = None,
    sr_bits: int | None = None,
    impl: str = "xla",
) -> jax.Array:
    """dequantize(quantize(x)) in one pass, same shape and dtype as x; the gradient passes straight through.

    axis: default -1, or (-2, -1) for 2-D tiles. key: stochastic rounding; sr_bits: its random bits per element
    (1..24, default 24). impl: "xla", "pallas" (interpreted on CPU) or "auto".
    """
    x, fmt, axes = check_input(x, fmt, axis)
    _check_key(fmt, key)
    sr_bits = rounding.check_sr_bits(sr_bits, key is not None)
    if resolve_impl(impl) == "pallas":
        return kernels.fake_quant(x, fmt, axes, key=key, sr_bits=sr_bits, impl="pallas")
    return codec.fake_quant_jit(x, fmt, axes, key, sr_bits)

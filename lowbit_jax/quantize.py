"""The public quantizer: quantize / dequantize / fake_quant (straight-through gradient), dispatched through
the implementation registry (`lowbit_jax.impls`). The arithmetic is `lowbit_jax.codec`'s.

`fake_quant(x)` equals `dequantize(quantize(x))` bit for bit, for every implementation.

Stochastic rounding: `key` draws 24-bit uniforms; `sr_bits=n` (1..24) decides each rounding with n random bits
as hardware does, P(up) = floor(frac 2^n) / 2^n of a step (a bias toward zero below 2^-n of a step;
lowbit_jax.rounding gives the exact rule). sr_bits=24 is bit for bit the default.

Given tensor amax: formats with a second-level scale (NVFP4, NVINT4, E4M3 block scales with an FP32 or power-of-two
tensor scale) take `tensor_amax=a`, the amax their tensor scale is computed from, instead of reducing x for it:
the amax of an earlier step (delayed scaling, as TransformerEngine's FP8 recipes keep it), of a calibration set, or
of a larger tensor that x is a shard of. Blocks whose amax exceeds it saturate (block scales at the scale grid's
max, elements clipped at Qmax), as a stale amax does in those recipes; a NaN, infinite or negative tensor_amax
makes every block NaN. `fake_quant_delayed` returns, beside the result, the amax to pass next time.
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


def _check_tensor_amax(fmt: Format, tensor_amax: ArrayLike | None) -> jax.Array | None:
    """tensor_amax as a float32 scalar; ValueError for a format without a second-level scale, a non-scalar, or a
    concrete value that is negative or not finite."""
    if tensor_amax is None:
        return None
    if not codec.has_tensor_scale(fmt):
        raise ValueError(
            f"tensor_amax sets the second-level (tensor) scale; {fmt.label} has none (NV formats and E4M3 block "
            "scales with tensor_scale fp32 / ue8m0 have one)"
        )
    a = jnp.asarray(tensor_amax)
    if a.shape != () or not (jnp.issubdtype(a.dtype, jnp.floating) or jnp.issubdtype(a.dtype, jnp.integer)):
        raise ValueError(f"tensor_amax must be a real scalar, got shape {a.shape} and dtype {a.dtype}")
    if not isinstance(a, jax.core.Tracer):
        v = float(a)
        if not (v >= 0 and v < float("inf")):
            raise ValueError(f"tensor_amax must be finite and >= 0, got {v}")
    return a.astype(jnp.float32)


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
    tensor_amax: ArrayLike | None = None,
) -> QArray:
    """Quantize `x` in blocks along `axis` (default: -1, or (-2, -1) for 2-D tiles); `key` switches element
    rounding from RNE to stochastic, `sr_bits` (1..24, with a key) limits its random bits per element.
    impl: "xla", "pallas" (interpreted on CPU) or "auto" (Pallas on GPU). tensor_amax: the amax of the tensor scale
    (module docstring; None: x's own). Differentiating through quantize raises (use fake_quant for a
    straight-through gradient)."""
    x, fmt, axes = check_input(x, fmt, axis)
    _check_key(fmt, key)
    sr_bits = rounding.check_sr_bits(sr_bits, key is not None)
    amax = _check_tensor_amax(fmt, tensor_amax)
    x = _no_gradient(x)
    if resolve_impl(impl) == "pallas":
        return kernels.quantize(x, fmt, axes, key=key, sr_bits=sr_bits, impl="pallas", tensor_amax=amax)
    return codec.quantize_jit(x, fmt, axes, key, None, sr_bits, amax)


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
    tensor_amax: ArrayLike | None = None,
) -> jax.Array:
    """dequantize(quantize(x)) in one pass, same shape and dtype as x; the gradient passes straight through.

    axis: default -1, or (-2, -1) for 2-D tiles. key: stochastic rounding; sr_bits: its random bits per element
    (1..24, default 24). impl: "xla", "pallas" (interpreted on CPU) or "auto". tensor_amax: the amax of the
    tensor scale (module docstring; None: x's own).
    """
    x, fmt, axes = check_input(x, fmt, axis)
    _check_key(fmt, key)
    sr_bits = rounding.check_sr_bits(sr_bits, key is not None)
    amax = _check_tensor_amax(fmt, tensor_amax)
    if resolve_impl(impl) == "pallas":
        return kernels.fake_quant(x, fmt, axes, key=key, sr_bits=sr_bits, impl="pallas", tensor_amax=amax)
    return codec.fake_quant_jit(x, fmt, axes, key, sr_bits, amax)


def fake_quant_delayed(
    x: ArrayLike,
    fmt: Format | str,
    tensor_amax: ArrayLike,
    axis: Axis | None = None,
    *,
    key: Key | None = None,
    sr_bits: int | None = None,
    impl: str = "xla",
) -> tuple[jax.Array, jax.Array]:
    """Delayed scaling: (fake_quant(x, fmt, axis, tensor_amax=tensor_amax), x's own amax as float32) - the tensor
    scale comes from the amax given (an earlier step's), and the amax returned (the largest amax of x's finite
    blocks, what x's own tensor scale would use) is the one to give next step."""
    x, fmt, axes = check_input(x, fmt, axis)
    y = fake_quant(x, fmt, axis, key=key, sr_bits=sr_bits, impl=impl, tensor_amax=tensor_amax)
    return y, codec.tensor_amax_jit(x, fmt, axes)

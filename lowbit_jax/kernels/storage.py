"""Kernel outputs as bytes: codes and 8-bit scales in uint8/int8 containers, converted outside the kernel.

GPU backends may not store float4_e2m1fn, int4 or float8_e8m0fnu from a kernel; the kernels then write
bytes (`byte_outputs=True`, the default off the interpreter) and these functions turn them into the core's
storage dtypes (bitcasts for 8-bit floats, exact casts otherwise).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from lowbit_jax import rounding, scaling
from lowbit_jax.formats import Format, FPElem
from lowbit_jax.quantize import BlockScale, encode_scales


def code_bytes(values, elem) -> jax.Array:
    """Codes as bytes: int8 for INT elements, the uint8 bit pattern (sign | exponent | mantissa) for FP."""
    if not isinstance(elem, FPElem):
        return values.astype(jnp.int8)
    a = jnp.abs(values)
    normal = a >= elem.min_normal
    exp = jnp.maximum(rounding.f32_exponent(a), elem.emin)
    field = jnp.where(normal, exp + elem.bias, 0)
    man = jnp.round(a * rounding.pow2(elem.man_bits - exp)).astype(jnp.int32) - jnp.where(normal, 1 << elem.man_bits, 0)
    sign = jnp.signbit(values).astype(jnp.int32) << (elem.exp_bits + elem.man_bits)
    return (sign | (field << elem.man_bits) | man).astype(jnp.uint8)


def scale_bytes(sc: BlockScale, fmt: Format) -> jax.Array:
    """encode_scales with 8-bit scales as their uint8 bit patterns."""
    if fmt.scale == "ue8m0":
        return jnp.where(sc.finite, sc.exp + 127, scaling.E8M0_NAN).astype(jnp.uint8)
    if fmt.scale == "e4m3":
        return lax.bitcast_convert_type(encode_scales(sc, fmt), jnp.uint8)
    return encode_scales(sc, fmt)


def code_dtype(fmt: Format, byte_outputs: bool):
    if not byte_outputs:
        return fmt.elem.storage_dtype
    return jnp.uint8 if isinstance(fmt.elem, FPElem) else jnp.int8


def scale_dtype(fmt: Format, byte_outputs: bool):
    if fmt.scale == "ue8m0":
        return jnp.uint8 if byte_outputs else jnp.float8_e8m0fnu
    if fmt.scale == "e4m3":
        return jnp.uint8 if byte_outputs else jnp.float8_e4m3fn
    return jnp.dtype(fmt.scale_dtype)


def codes_from_bytes(codes: jax.Array, fmt: Format) -> jax.Array:
    """Byte codes -> the element's storage dtype (bitcast for 8-bit floats, exact casts otherwise)."""
    dtype, elem = fmt.elem.storage_dtype, fmt.elem
    if codes.dtype == dtype:
        return codes
    if not isinstance(elem, FPElem):
        return codes.astype(dtype)
    if elem.bits == 8:
        return lax.bitcast_convert_type(codes, dtype)
    return rounding.decode(codes, elem).astype(dtype)


def scales_from_bytes(scales: jax.Array, fmt: Format) -> jax.Array:
    """Byte scales -> float8_e8m0fnu / float8_e4m3fn (bitcasts); other scales unchanged."""
    dtype = scale_dtype(fmt, False)
    return scales if scales.dtype == dtype else lax.bitcast_convert_type(scales, dtype)

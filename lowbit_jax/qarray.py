"""QArray: a quantized array as a pytree (codes, scales, tensor_scale, zero_points, selectors) with static format
metadata."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from lowbit_jax._types import ArrayLike, Axis, DTypeLike
from lowbit_jax.formats import AdaptiveFormat, Format


@dataclasses.dataclass(frozen=True, eq=False)
class QArray:
    """A block-quantized array.

    codes:        element codes in `fmt.elem.storage_dtype`, the input's layout with the quantized axis (axes)
                  zero-padded to whole blocks (identity formats: the value cast to the pass-through dtype).
    scales:       one scale per block, each quantized axis holding its block count; shape () for per-tensor
                  formats; None for identity formats.
    tensor_scale: the float32 second-level scale g (NV formats, tensor_scale="fp32" or "ue8m0"), else None;
                  numerics="te" stores the tensor amax here, from which TE's arithmetic derives its scales.
    zero_points:  one integer zero point per block (zero-point INT formats, the codes' dtype), else None.
    selectors:    the chosen candidate per block (uint8, the scales' shape) of adaptive formats that store it
                  beside the scales (MXIF), else None (IF4 / IF6 keep it in the E4M3 scale's sign bit; Four
                  Over Six needs none: the stored scale is the chosen one).
    fmt, axis, shape, dtype: static metadata (axis: a non-negative int, or two for 2-D tiles; shape and dtype
                  are the original input's).

    Storage layout (interoperable bytes):
    - MXFP8/6/4, MXINT8/6/4 (OCP MX v1.0): codes are the OCP element codes (FP8 as float8_e4m3fn/e5m2, FP6 as
      uint8 bit patterns S.E.M in the low 6 bits, FP4 as float4_e2m1fn, MXINT as two's-complement int8/int4
      holding the integer k of the fixed-point value k * 2^-(b-2)); scales are float8_e8m0fnu holding OCP's
      shared scale X, so value = X * element, byte 0xFF = NaN.
    - NVFP4 (NVIDIA / torchao): float4_e2m1fn codes (`pack_fp4` gives two per byte, element 2i in the low
      nibble), float8_e4m3fn block scales, float32 tensor scale g: value = code * scale * g.
    """

    codes: jax.Array
    scales: jax.Array | None
    tensor_scale: jax.Array | None
    fmt: Format
    axis: Axis
    shape: tuple[int, ...]
    dtype: DTypeLike
    zero_points: jax.Array | None = None
    selectors: jax.Array | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes_payload(self) -> float:
        """Storage of codes (at the element's bit width) plus scales and zero points at their format's widths,
        in bytes."""
        if self.fmt.elem is None:
            return self.codes.size * jnp.dtype(self.codes.dtype).itemsize
        assert self.scales is not None and self.fmt.scale_rule is not None  # block formats store scales
        total = self.codes.size * self.fmt.elem.bits / 8
        total += self.scales.size * self.fmt.scale_rule.bits / 8
        if self.zero_points is not None:
            total += self.zero_points.size * self.fmt.elem.bits / 8
        if self.selectors is not None:
            total += self.selectors.size * cast(AdaptiveFormat, self.fmt).selector_bits / 8
        return total

    def equals(self, other: object) -> bool:
        """Whether `other` is a QArray with the same metadata and bit-identical fields (`==` is identity: array
        fields have no single truth value)."""
        if not isinstance(other, QArray):
            return False
        meta = ("fmt", "axis", "shape", "dtype")
        if any(getattr(self, m) != getattr(other, m) for m in meta):
            return False
        for name in ("codes", "scales", "tensor_scale", "zero_points", "selectors"):
            a, b = getattr(self, name), getattr(other, name)
            if (a is None) != (b is None):
                return False
            if a is not None and not _same_bits(a, b):
                return False
        return True

    def __repr__(self) -> str:
        """One short line: format, shape, dtype, axis, codes and a summary of the scales (no element dump)."""
        parts = [self.fmt.label, f"shape={tuple(self.shape)}", f"dtype={jnp.dtype(self.dtype).name}"]
        parts += [f"axis={self.axis}", f"codes={_array_text(self.codes)}"]
        for name in ("scales", "tensor_scale", "zero_points", "selectors"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={_array_text(value, summary=name != 'zero_points')}")
        return f"QArray({', '.join(parts)})"


def _array_text(a: object, summary: bool = False) -> str:
    """'dtype(shape)', with ' in [min, max]' of |a| (finite values; ', NaN' if any) for a concrete array when
    `summary`; tracers (inside jit) and abstract values only show dtype and shape."""
    dtype, shape = getattr(a, "dtype", None), getattr(a, "shape", None)
    if dtype is None or shape is None:
        return type(a).__name__
    text = f"{jnp.dtype(dtype).name}{tuple(shape)}"
    if not summary or isinstance(a, jax.core.Tracer) or not isinstance(a, jax.Array | np.ndarray):
        return text
    try:
        v = np.abs(np.asarray(a).astype(np.float32))  # |.|: IF4 keeps its choice in the scale's sign bit
    except Exception:  # e.g. an array not addressable from this process: shape and dtype are enough
        return text
    finite = v[np.isfinite(v)]
    if finite.size:
        text += f" in [{float(finite.min()):.4g}, {float(finite.max()):.4g}]" if v.ndim else f" = {float(v):.4g}"
    return text + (", NaN" if finite.size < v.size else "")


def _same_bits(a: ArrayLike, b: ArrayLike) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


_FIELDS = ("codes", "scales", "tensor_scale", "zero_points", "selectors")


def _to_state(q: QArray) -> dict[str, jax.Array]:
    return {name: getattr(q, name) for name in _FIELDS if getattr(q, name) is not None}


def _from_state(target: QArray, state: dict[str, Any]) -> QArray:
    """A QArray with `target`'s metadata and the arrays of `state` (flax.serialization's restore)."""
    arrays: dict[str, Any] = {name: (jnp.asarray(state[name]) if name in state else None) for name in _FIELDS}
    for name, arr in arrays.items():
        ref = getattr(target, name)
        if arr is not None and ref is not None:  # msgpack holds numpy arrays of the stored dtype
            arrays[name] = arr.astype(ref.dtype)
    return dataclasses.replace(target, **arrays)


flax.serialization.register_serialization_state(QArray, _to_state, _from_state)


jax.tree_util.register_dataclass(
    QArray,
    data_fields=["codes", "scales", "tensor_scale", "zero_points", "selectors"],
    meta_fields=["fmt", "axis", "shape", "dtype"],
)


def pack_fp4(codes_fp4: jax.Array) -> jax.Array:
    """float4_e2m1fn codes (even last axis) -> uint8, two per byte, element 2i in the low nibble (the layout of
    NVIDIA's and torchao's packed FP4)."""
    if codes_fp4.dtype != jnp.float4_e2m1fn or codes_fp4.shape[-1] % 2:
        raise ValueError(f"pack_fp4 takes float4_e2m1fn codes with an even last axis, got {codes_fp4.dtype}")
    nib = jax.lax.bitcast_convert_type(codes_fp4, jnp.uint4).astype(jnp.uint8)
    return nib[..., 0::2] | (nib[..., 1::2] << 4)


def unpack_fp4(packed_u8: jax.Array) -> jax.Array:
    """Inverse of pack_fp4: uint8 (..., n) -> float4_e2m1fn codes (..., 2n)."""
    lo, hi = packed_u8 & 0xF, packed_u8 >> 4
    nib = jnp.stack([lo, hi], axis=-1).reshape(*packed_u8.shape[:-1], -1).astype(jnp.uint4)
    return jax.lax.bitcast_convert_type(nib, jnp.float4_e2m1fn)

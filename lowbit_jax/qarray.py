"""QArray: a quantized array as a pytree (codes, scales, tensor_scale) with static format metadata."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lowbit_jax.formats import Format


@dataclasses.dataclass(frozen=True)
class QArray:
    """A block-quantized array.

    codes:        element codes in `fmt.elem.storage_dtype`, the input's layout with `axis` zero-padded to a
                  multiple of the block (identity formats: the value cast to the pass-through dtype).
    scales:       one scale per block, `axis` holding the block count (float8_e8m0fnu, float8_e4m3fn or
                  float32/bfloat16); shape () for per-tensor formats; None for identity formats.
    tensor_scale: the FP32 second-level scale of E4M3-scale (NV) formats, else None.
    fmt, axis, shape, dtype: static metadata (axis is non-negative; shape and dtype are the original input's).
    """

    codes: jax.Array
    scales: jax.Array | None
    tensor_scale: jax.Array | None
    fmt: Format
    axis: int
    shape: tuple[int, ...]
    dtype: jnp.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes_payload(self) -> float:
        """Storage of codes (at the element's bit width) plus scales, in bytes."""
        bits = self.fmt.elem.bits if self.fmt.elem is not None else jnp.dtype(self.codes.dtype).itemsize * 8
        total = self.codes.size * bits / 8
        if self.scales is not None:
            total += self.scales.size * jnp.dtype(self.scales.dtype).itemsize
        return total


jax.tree_util.register_dataclass(
    QArray,
    data_fields=["codes", "scales", "tensor_scale"],
    meta_fields=["fmt", "axis", "shape", "dtype"],
)

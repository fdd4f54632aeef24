"""Pure-jnp references for the Pallas quantize kernels: 2-D arrays blocked along the last axis.

They are built from the core's own pieces (layout, to_blocks, block_scale, to_elem_domain, round_elem,
from_elem_domain, encode), so `fake_quant_ref(x, fmt, rbits=bits)` equals `lb.fake_quant(x, fmt, axis=-1,
key=key)` bit for bit when `bits` are the core's bits for that key (see `sr_bits`). The kernels in
`pallas_quantize.py` take the same arguments and are tested bit-identical to these functions.

rbits:    uint32 random bits for stochastic rounding, shaped like x padded to whole blocks (None: RNE).
rotation: the h random +-1 signs of a block Hadamard rotation R = diag(signs) H / sqrt(h) (h = 16 or 32, any
          power of two dividing the row length), applied to x in float32 before quantization. It is computed
          as a fast Walsh-Hadamard transform (`rotate_rows`): every butterfly is one exact-order add, so any
          implementation that adds the same pairs gets the same bits. It equals `lowbit_jax.hadamard.rotate`
          with the same signs to within float32 rounding (that one is a matmul, whose summation order differs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lowbit_jax import rounding
from lowbit_jax.formats import Format
from lowbit_jax.quantize import (
    block_scale,
    encode_scales,
    from_blocks,
    from_elem_domain,
    layout,
    to_blocks,
    to_elem_domain,
)


def rotation_scale(h: int) -> np.float32:
    """1 / sqrt(h) as float32 (exact for even powers of two, e.g. h = 16)."""
    return np.float32(1.0 / np.sqrt(h))


def canonical_zero(y: jax.Array) -> jax.Array:
    """Replace -0 by +0 (butterfly results are exact-order sums; only the sign of zero could differ)."""
    return jnp.where(y == 0, 0.0, y)


def rotate_rows(x_2d: jax.Array, signs: jax.Array) -> jax.Array:
    """float32 x_2d with every chunk of h = len(signs) consecutive elements of a row multiplied by R."""
    h = signs.shape[0]
    m, n = x_2d.shape
    y = x_2d.astype(jnp.float32).reshape(m, n // h, h) * signs.astype(jnp.float32).reshape(1, 1, h)
    s = 1
    while s < h:
        pairs = y.reshape(m, n // h, h // (2 * s), 2, s)
        lo, hi = pairs[..., 0, :], pairs[..., 1, :]
        y = canonical_zero(jnp.stack([lo + hi, lo - hi], axis=-2)).reshape(m, n // h, h)
        s *= 2
    return (y * rotation_scale(h)).reshape(m, n)


def check_2d(x_2d: jax.Array, fmt: Format, rotation) -> None:
    """Clear errors for what the 2-D kernels and references do not take."""
    if x_2d.ndim != 2:
        raise ValueError(f"the kernels take 2-D arrays blocked along the last axis, got shape {x_2d.shape}")
    if fmt.is_identity:
        raise ValueError(f"{fmt.name} is an identity format; it has no quantize kernel")
    if rotation is not None:
        h = rotation.shape[0]
        if h < 1 or h & (h - 1) or x_2d.shape[1] % h:
            raise ValueError(f"rotation size {h} must be a power of two dividing the row length {x_2d.shape[1]}")


def _values(x_2d: jax.Array, fmt: Format, rbits, rotation):
    """Element values (blocked), block scales and layout: the core's quantize_blocks with explicit bits."""
    check_2d(x_2d, fmt, rotation)
    x = x_2d if rotation is None else rotate_rows(x_2d, rotation)
    lay = layout(x.shape, fmt.block_size, 1)
    x_blocks = to_blocks(x, lay)
    sc = block_scale(x_blocks, fmt, lay)
    uniform = None if rbits is None else rounding.uniform_from_bits(rbits.reshape(lay.blocked_shape))
    values = rounding.round_elem(to_elem_domain(x_blocks, sc, fmt), fmt.elem, uniform)
    return values, sc, lay


def fake_quant_ref(x_2d: jax.Array, fmt: Format, *, rbits=None, rotation=None) -> jax.Array:
    """dequantize(quantize(x)) along the last axis of a 2-D array, in x's dtype."""
    values, sc, lay = _values(x_2d, fmt, rbits, rotation)
    return from_blocks(from_elem_domain(values, sc), lay).astype(x_2d.dtype)


def quantize_ref(x_2d: jax.Array, fmt: Format, *, rbits=None, rotation=None):
    """(codes, scales, tensor_scale) of a 2-D array blocked along its last axis: the core QArray's fields."""
    values, sc, lay = _values(x_2d, fmt, rbits, rotation)
    codes = rounding.encode(jnp.where(sc.finite, values, 0.0), fmt.elem)
    scales = encode_scales(sc, fmt).reshape(lay.scales_shape)
    return from_blocks(codes, lay, crop=False), scales, sc.tensor

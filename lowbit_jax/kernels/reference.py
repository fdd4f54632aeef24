"""The reference of the Pallas quantize kernels: the core itself (lowbit_jax.codec) on 2-D arrays blocked along
the last axis, after the exact-order Hadamard rotation the kernels fuse.

`fake_quant_ref(x, fmt, rbits=bits)` equals `lb.fake_quant(x, fmt, axis=-1, key=key)` bit for bit when `bits`
are the core's bits for that key (see `kernels.sr_bits`).
The kernels in `pallas_quantize.py` take the same arguments and are tested bit-identical to these functions.

rbits:    uint32 random bits for stochastic rounding, shaped like x padded to whole blocks (None: RNE).
rotation: the h random +-1 signs of a block Hadamard rotation R = diag(signs) H / sqrt(h) (h = 16 or 32, any
          power of two dividing the row length), applied to x in float32 before quantization. It is computed
          as a fast Walsh-Hadamard transform (`rotate_rows`): every butterfly is one exact-order add, so any
          implementation that adds the same pairs gets the same bits. It equals `lowbit_jax.hadamard.rotate`
          with the same signs to within float32 rounding for h < 512 (a matmul there, whose summation order
          differs) and bit for bit from h = 512 on, where that one runs the same butterflies.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lowbit_jax import codec
from lowbit_jax.formats import Format


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
    if isinstance(fmt.block_size, tuple) and rotation is not None:
        raise NotImplementedError(f"{fmt.label}: a Hadamard rotation of 2-D tiles is not defined; use 1-D blocks")
    if rotation is not None:
        h = rotation.shape[0]
        if h < 1 or h & (h - 1) or x_2d.shape[1] % h:
            raise ValueError(f"rotation size {h} must be a power of two dividing the row length {x_2d.shape[1]}")


def axes_2d(fmt: Format) -> tuple[int, ...]:
    """The quantized axes of a 2-D kernel input: both for 2-D tiles, else the last."""
    return (0, 1) if isinstance(fmt.block_size, tuple) else (1,)


def row_format(fmt: Format) -> Format:
    """The 1-D format a tile format runs as on `Layout.to_rows` (one row of r * c elements per tile)."""
    if not isinstance(fmt.block_size, tuple):
        return fmt
    r, c = fmt.block_size
    return fmt.replace(block_size=r * c)


def fake_quant_ref(x_2d: jax.Array, fmt: Format, *, rbits=None, rotation=None, tensor_amax=None) -> jax.Array:
    """dequantize(quantize(x)) of a 2-D array (blocked along its last axis, or tiled over both), in x's dtype."""
    check_2d(x_2d, fmt, rotation)
    x = x_2d if rotation is None else rotate_rows(x_2d, rotation)
    y = codec.fake_quant_array(x, fmt, axes_2d(fmt), rbits=rbits, tensor_amax=tensor_amax)
    return codec.to_output(y, x_2d.dtype)


def quantize_ref(x_2d: jax.Array, fmt: Format, *, rbits=None, rotation=None, tensor_amax=None):
    """(codes, scales, tensor_scale, selectors) of a 2-D array (blocked along its last axis, or tiled over both):
    the core QArray's fields (selectors None unless an adaptive format stores them beside the scales)."""
    check_2d(x_2d, fmt, rotation)
    x = x_2d if rotation is None else rotate_rows(x_2d, rotation)
    q = codec.quantize_array(x, fmt, axes_2d(fmt), rbits=rbits, tensor_amax=tensor_amax)
    return q.codes, q.scales, q.tensor_scale, q.selectors

"""Block layouts: 1-D blocks along an axis, 2-D tiles over two axes, per-channel, per-tensor.

The only module that reshapes arrays into blocks. A layout views x (zero-padded to whole blocks) as a
"blocked" array in which every block occupies its own `block_axes` (a reshape, no transpose), so a block
statistic is one reduction with keepdims and scales broadcast against the elements:

  1-D, block b along axis a:       (..., n, b, ...)                 block_axes (a + 1,)
  2-D, tile (r, c) over axes a<a': (..., n, r, ..., n', c, ...)     block_axes (a + 1, a' + 2)
  per-channel (axis a):            (..., 1, L, ...)                 the whole axis is one block
  per-tensor:                      (1, N)                           one block
Zero padding never changes a block's amax, min or max (zero is inside every block's range anyway). A block (or a
tile side) longer than its axis is clamped to the axis length: the same elements form the one block, without the
padding (the layout of block_size = axis length).
`to_rows` / `from_rows` give the transposed view (blocks, elements per block) that the kernels use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

_F32_MIN_NORMAL = float(np.finfo(np.float32).tiny)
PER_CHANNEL = "channel"
PER_TENSOR = "tensor"

BlockSize = int | tuple[int, int] | str


def check_block_size(bs: object) -> BlockSize:
    """The normalised block size: a positive int, a (rows, cols) pair, 'channel' (-1 too) or 'tensor'."""
    if type(bs) is int and bs == -1:
        return PER_CHANNEL
    if bs in (PER_CHANNEL, PER_TENSOR) or (type(bs) is int and bs > 0):
        return bs
    if isinstance(bs, tuple | list) and len(bs) == 2 and all(type(b) is int and b > 0 for b in bs):
        return tuple(bs)
    raise ValueError(
        f"block_size must be a positive int, a (rows, cols) pair, -1 or 'channel', or 'tensor'; got {bs!r}"
    )


def block_ndim(bs: BlockSize) -> int:
    """How many axes a block spans: 2 for tiles, 0 per tensor, else 1."""
    return 2 if isinstance(bs, tuple) else 0 if bs == PER_TENSOR else 1


def default_axis(bs: BlockSize) -> int | tuple[int, int]:
    """(-2, -1) for tiles, else -1."""
    return (-2, -1) if isinstance(bs, tuple) else -1


@dataclass(frozen=True)
class Layout:
    """How an array of `shape` is cut into blocks: `block[i]` elements along `axes[i]` (increasing axes)."""

    shape: tuple[int, ...]
    axes: tuple[int, ...]
    block: tuple[int, ...]
    per_tensor: bool = False

    @property
    def n_blocks(self) -> tuple[int, ...]:
        """Blocks along each of `axes` (0 for an empty axis)."""
        return tuple(-(-self.shape[a] // b) for a, b in zip(self.axes, self.block))

    @property
    def block_elems(self) -> int:
        return math.prod(self.block)

    @property
    def padded_shape(self) -> tuple[int, ...]:
        if self.per_tensor:
            return self.shape
        s = list(self.shape)
        for a, n, b in zip(self.axes, self.n_blocks, self.block):
            s[a] = n * b
        return tuple(s)

    @property
    def blocked_shape(self) -> tuple[int, ...]:
        """Every blocked axis split into (n_blocks, block)."""
        if self.per_tensor:
            return (1, self.block[0])
        s = self.shape
        out: list[int] = []
        split = dict(zip(self.axes, zip(self.n_blocks, self.block)))
        for d, length in enumerate(s):
            out.extend(split[d] if d in split else (length,))
        return tuple(out)

    @property
    def block_axes(self) -> tuple[int, ...]:
        """Axes of the blocked view that run inside a block (reduce over these for a block statistic)."""
        if self.per_tensor:
            return (1,)
        return tuple(a + i + 1 for i, a in enumerate(self.axes))

    @property
    def stat_shape(self) -> tuple[int, ...]:
        """Shape of a block statistic kept with keepdims (blocked shape, 1 on the block axes)."""
        s = list(self.blocked_shape)
        for a in self.block_axes:
            s[a] = 1
        return tuple(s)

    @property
    def scales_shape(self) -> tuple[int, ...]:
        """Shape of stored scales: x's shape with each blocked axis holding its block count; () per tensor."""
        if self.per_tensor:
            return ()
        s = list(self.shape)
        for a, n in zip(self.axes, self.n_blocks):
            s[a] = n
        return tuple(s)

    def to_blocks(self, x: jax.Array) -> jax.Array:
        """float32 blocked view of x, zero-padded to whole blocks."""
        x = x.astype(jnp.float32)
        if self.per_tensor:
            return x.reshape(self.blocked_shape)
        widths = [(0, p - s) for s, p in zip(self.shape, self.padded_shape)]
        if any(w for _, w in widths):
            x = jnp.pad(x, widths)
        return x.reshape(self.blocked_shape)

    def from_blocks(self, y_blocks: jax.Array, crop: bool = True) -> jax.Array:
        """Inverse of `to_blocks`: merge the block axes and (optionally) crop the padding."""
        y = y_blocks.reshape(self.padded_shape)
        if crop and self.padded_shape != self.shape:
            y = jax.lax.slice(y, (0,) * y.ndim, self.shape)
        return y

    def stat_to_scales(self, stat: jax.Array) -> jax.Array:
        """A keepdims block statistic -> the stored scales' shape."""
        return stat.reshape(self.scales_shape)

    def scales_to_stat(self, scales: jax.Array) -> jax.Array:
        """Stored scales -> the keepdims shape that broadcasts against the blocked view."""
        return scales.reshape(self.stat_shape)

    def _row_perm(self) -> tuple[int, ...]:
        """Permutation of the blocked view that puts every block-count axis first, then the in-block axes."""
        inner = self.block_axes
        return tuple(d for d in range(len(self.blocked_shape)) if d not in inner) + inner

    def to_rows(self, x: jax.Array) -> jax.Array:
        """(blocks, elements per block) float32 view of x: one row per block (a transpose for tiles or
        for blocks along an inner axis)."""
        return self.blocked_to_rows(self.to_blocks(x))

    def blocked_to_rows(self, x_blocks: jax.Array) -> jax.Array:
        """An array in the blocked view -> (blocks, elements per block), rows in the stored scales' order."""
        return jnp.transpose(x_blocks, self._row_perm()).reshape(-1, self.block_elems)

    def from_rows(self, rows: jax.Array, crop: bool = True) -> jax.Array:
        """Inverse of `to_rows` (rows of block_elems values in the blocked order) -> x's layout."""
        perm = self._row_perm()
        moved = tuple(self.blocked_shape[d] for d in perm)
        inverse = tuple(perm.index(d) for d in range(len(perm)))
        return self.from_blocks(jnp.transpose(rows.reshape(moved), inverse), crop)

    def rows_to_scales(self, per_row: jax.Array) -> jax.Array:
        """One value per row of `to_rows` -> the stored scales' shape (the rows run in scales order)."""
        return per_row.reshape(self.scales_shape)


def normalize_axes(axis: object, ndim: int, bs: BlockSize) -> tuple[int, ...]:
    """The quantized axes (non-negative, increasing) for a block size; ValueError for a mismatch."""
    want = block_ndim(bs)

    def is_int(a: object) -> bool:  # numpy integers count; bools and traced values do not
        return isinstance(a, int | np.integer) and not isinstance(a, bool | np.bool_)

    axes = (axis,) if is_int(axis) else axis
    if not isinstance(axes, tuple | list) or not all(is_int(a) for a in axes):
        raise ValueError(
            f"axis must be a Python int or a pair of ints (static, not traced), got {axis!r} of type "
            f"{type(axis).__name__}"
        )
    axes = tuple(int(a) for a in axes)
    if want == 2 and len(axes) != 2:
        raise ValueError(f"a 2-D block {bs} quantizes two axes; got axis={axis!r} (default (-2, -1))")
    if want != 2 and len(axes) != 1:
        raise ValueError(f"block_size {bs!r} quantizes along one axis; got axis={axis!r}")
    n = max(ndim, 1)
    if any(not -n <= a < n for a in axes):
        raise ValueError(f"axis {axis!r} is out of range for an array of rank {ndim}")
    norm = tuple(a % n for a in axes)
    if len(set(norm)) != len(norm):
        raise ValueError(f"axis {axis!r} names the same axis twice")
    return norm


def layout(shape: tuple[int, ...], block_size: BlockSize, axis: int | Sequence[int]) -> Layout:
    """Blocks of `block_size` for an array of `shape` along `axis` (an int, or two axes for a tile; as given,
    non-negative). A tile (r, c) over axes (a, a') puts r along a and c along a'. A block side longer than its
    axis is clamped to the axis length (at least 1)."""
    shape = tuple(shape)
    if block_size == PER_TENSOR:
        return Layout(shape, (), (max(1, math.prod(shape)),), True)
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    if block_size == PER_CHANNEL or block_size == -1:
        return Layout(shape, axes, (max(1, shape[axes[0]]),))
    assert not isinstance(block_size, str), f"unknown block size {block_size!r}"  # check_block_size's values
    block = (block_size,) if isinstance(block_size, int) else tuple(block_size)
    if len(axes) == 2 and axes[0] > axes[1]:
        axes, block = axes[::-1], block[::-1]
    # Cut to the axis, so that codes, scratch and stochastic-rounding bits do not grow with a block longer than the
    # axis (block_size 2^26 padded 40 elements to 256 MiB of codes per row); the padding it drops held only zeros.
    block = tuple(min(b, max(1, shape[a])) for a, b in zip(axes, block))
    return Layout(shape, axes, block)


def amax_along(x: jax.Array, axes: int | tuple[int, ...]) -> jax.Array:
    """max |x| over `axes` (kept with size 1): a block's amax; +Inf for blocks holding a NaN or an Inf (either
    makes the block non-finite, and the formats treat the two alike), in one reduction over x.

    A NaN is turned into +Inf before the max: XLA:CPU's max reduction skips NaNs (measured with jax 0.10.2: jnp.max
    of an (8, 4128) array holding one NaN is finite), and so do Triton's, but every max keeps an Inf. Done inside
    the same reduction, this reads x once; a separate NaN test was a second pass over it. A float32 subnormal amax
    reads as 0, as the flushing max reduction of any longer block gives it.
    """
    magnitude = jnp.abs(x)
    m = jnp.max(jnp.where(jnp.isnan(magnitude), jnp.inf, magnitude), axis=axes, keepdims=True)
    return jnp.where(m < _F32_MIN_NORMAL, 0.0, m)  # a one-element block runs no max, which would keep a subnormal


def min_max_along(x: jax.Array, axes: int | tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """(min(x, 0), max(x, 0)) over `axes` (kept with size 1); both NaN where the slice holds a NaN."""
    has_nan = jnp.max(jnp.isnan(x).astype(jnp.int32), axis=axes, keepdims=True) > 0
    lo = jnp.minimum(jnp.min(x, axis=axes, keepdims=True), 0.0)
    hi = jnp.maximum(jnp.max(x, axis=axes, keepdims=True), 0.0)
    return jnp.where(has_nan, jnp.nan, lo), jnp.where(has_nan, jnp.nan, hi)

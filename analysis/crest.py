"""Crest factor kappa = max|x| / RMS per block (paper Eq. 11 and section 5.1), with its per-tensor mean."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from lowbit_jax.blocks import layout


@dataclass(frozen=True)
class CrestFactor:
    """Per-block crest factors (blocked layout, NaN for all-zero blocks) and their mean over the tensor."""

    blocks: jax.Array
    mean: jax.Array

    def quantiles(self, qs=(0.0, 0.25, 0.5, 0.75, 1.0)) -> jax.Array:
        """Quantiles of the per-block crest factors (all-zero blocks ignored)."""
        return jnp.nanquantile(self.blocks.ravel(), jnp.asarray(qs))


def block_stats(x: jax.Array, block_size, axis: int = -1) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(amax, sum of squares, element count) of every block along `axis` (padding excluded from the count)."""
    x = jnp.asarray(x)
    axis = axis % max(x.ndim, 1)
    lay = layout(x.shape, block_size, axis)
    x_blocks = lay.to_blocks(x)
    valid = lay.to_blocks(jnp.ones(x.shape, jnp.float32))
    reduce = lay.block_axes
    amax = jnp.max(jnp.abs(x_blocks), axis=reduce)
    return amax, jnp.sum(jnp.square(x_blocks), axis=reduce), jnp.sum(valid, axis=reduce)


def crest_factor(x: jax.Array, block_size=32, axis: int = -1) -> CrestFactor:
    """Crest factor of every block of `block_size` (int, "channel"/-1 or "tensor") along `axis`, and the mean."""
    kappa = crest_from_stats(*block_stats(x, block_size, axis))
    return CrestFactor(kappa, jnp.nanmean(kappa))


def crest_from_stats(amax, sum_sq, count):
    """Each block's crest factor max|x| / RMS from its block_stats (NaN for all-zero blocks); numpy arrays give
    numpy (float64 stays float64), others jax arrays."""
    xp = np if isinstance(amax, np.ndarray) else jnp
    rms = xp.sqrt(sum_sq / count)
    return xp.where(rms > 0, amax / xp.where(rms > 0, rms, 1.0), xp.nan)

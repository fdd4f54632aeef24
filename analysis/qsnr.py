"""Quantization signal-to-noise ratio (paper Eq. 10): QSNR = -10 log10(||x - x_hat||^2 / ||x||^2) dB."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def _sum_sq(a: jnp.ndarray, axis) -> jnp.ndarray:
    """Sum of squares in float32, reduced in two stages (rows, then totals) to keep rounding error small."""
    sq = jnp.square(a.astype(jnp.float32))
    if axis is None:
        return jnp.sum(jnp.sum(sq.reshape(sq.shape[0], -1), axis=1)) if sq.ndim > 1 else jnp.sum(sq)
    return jnp.sum(sq, axis=axis)


def qsnr_db(x, x_hat, axis=None) -> jnp.ndarray:
    """Tensor-wise QSNR in dB (or along `axis`); +inf when x_hat == x, nan when x is all zeros."""
    x = jnp.asarray(x)
    err = _sum_sq(x.astype(jnp.float32) - jnp.asarray(x_hat).astype(jnp.float32), axis)
    return -10.0 * jnp.log10(err / _sum_sq(x, axis))


def qsnr_from_sums(err_sq: np.ndarray, signal_sq: np.ndarray) -> np.ndarray:
    """QSNR in dB from accumulated squared error and squared signal (for binned / streamed measurements)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return -10.0 * np.log10(np.asarray(err_sq, np.float64) / np.asarray(signal_sq, np.float64))

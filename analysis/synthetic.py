"""Synthetic tensors with controlled crest factors for Monte-Carlo checks of the QSNR theory."""

from __future__ import annotations

import jax
import jax.numpy as jnp

DISTRIBUTIONS = ("uniform", "gaussian", "laplace", "student_t", "outliers")


def sample(
    dist: str,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    df: float = 4.0,
    outlier_rate: float = 0.01,
    outlier_max: float = 12.0,
) -> jax.Array:
    """float32 samples of a zero-mean distribution, from light tails (uniform) to heavy (student_t, outliers).

    outliers: N(0, 1) in which a fraction `outlier_rate` of elements is multiplied by U(1, outlier_max);
    it spreads block crest factors up to sqrt(block size), where the INT/FP crossovers of wide formats lie.
    """
    if dist == "uniform":
        return jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)
    if dist == "gaussian":
        return jax.random.normal(key, shape, jnp.float32)
    if dist == "laplace":
        return jax.random.laplace(key, shape, jnp.float32)
    if dist == "student_t":
        return jax.random.t(key, df, shape, jnp.float32)
    if dist == "outliers":
        k_x, k_hit, k_mag = jax.random.split(key, 3)
        hit = jax.random.bernoulli(k_hit, outlier_rate, shape)
        gain = jax.random.uniform(k_mag, shape, jnp.float32, 1.0, outlier_max)
        return jax.random.normal(k_x, shape, jnp.float32) * jnp.where(hit, gain, 1.0)
    raise ValueError(f"unknown distribution {dist!r}; choose from {list(DISTRIBUTIONS)}")


def dither_block_scale(x: jax.Array, block_size: int, key: jax.Array) -> jax.Array:
    """Multiply each block (along the last axis) by 2^u, u ~ U(0, 1), leaving its crest factor unchanged.

    Without it, data of a fixed scale (e.g. uniform on [-1, 1]) always hits the same point of the power-of-two
    scale grid; the theory assumes the UE8M0 rounding factor rho is spread over [1, 2) (E[rho^2] = 3 / (2 ln 2)).
    """
    *lead, n = x.shape
    if n % block_size:
        raise ValueError(f"last axis {n} is not a multiple of the block size {block_size}")
    u = jax.random.uniform(key, (*lead, n // block_size, 1), jnp.float32)
    return (x.reshape(*lead, n // block_size, block_size) * jnp.exp2(u)).reshape(x.shape)

"""Block-diagonal randomized Hadamard rotation (QuaRot / QuIP# style, as in the paper's rotation study).

R = D H / sqrt(h): D a diagonal of random +-1 signs drawn from `key`, H the h x h Sylvester Hadamard matrix.
R is orthogonal (R R^T = I), so rotating both GEMM operands along the contracting axis with the same R leaves
their product unchanged: (x R) . (w R) = x . w. `rotate` applies R to consecutive chunks of h elements along
an axis (x_chunk -> x_chunk @ R, the row-vector convention), in float32 at HIGHEST matmul precision.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def check_size(h: int, length: int | None = None) -> int:
    """Validate a rotation size: a power of two >= 1 that divides `length` (if given)."""
    if not isinstance(h, int | np.integer) or isinstance(h, bool) or h < 1 or h & (h - 1):
        raise ValueError(f"Hadamard size must be a power of two (1, 2, 4, ..., 128, ...), got {h!r}")
    if length is not None and length % h:
        raise ValueError(f"Hadamard size {h} does not divide the rotated axis length {length}")
    return int(h)


@functools.lru_cache(maxsize=32)
def _sylvester_np(h: int) -> np.ndarray:
    H = np.ones((1, 1), np.float32)
    while H.shape[0] < h:
        H = np.block([[H, H], [H, -H]])
    return H


def sylvester(h: int) -> np.ndarray:
    """The h x h Sylvester Hadamard matrix of +-1 entries (float32, unnormalised; H H^T = h I)."""
    return _sylvester_np(check_size(h)).copy()


def random_signs(h: int, key) -> jax.Array:
    """h random +-1 values (float32) drawn from `key`."""
    return jax.random.rademacher(key, (check_size(h),), dtype=jnp.float32)


def random_hadamard(h: int, key) -> jax.Array:
    """The h x h orthogonal matrix diag(random +-1 signs) @ H_sylvester / sqrt(h), float32."""
    H = jnp.asarray(_sylvester_np(check_size(h)))
    return random_signs(h, key)[:, None] * H * np.float32(1.0 / np.sqrt(h))


def rotate(x, h: int, key, axis: int = -1, *, inverse: bool = False) -> jax.Array:
    """x with every chunk of h consecutive elements along `axis` multiplied by R (R^T if inverse); dtype kept.
    TypeError for non-float x (a rotation of integers would truncate), ValueError for a scalar or an axis outside
    [-ndim, ndim)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"hadamard.rotate takes real floating-point arrays; got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError("hadamard.rotate rotates chunks along an axis; got a scalar")
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis!r} is out of range for an array of rank {x.ndim}")
    axis = int(axis) % x.ndim
    n = x.shape[axis]
    R_hxh = random_hadamard(check_size(h, n), key)
    if inverse:
        R_hxh = R_hxh.T
    x_last = jnp.moveaxis(x, axis, -1).astype(jnp.float32)
    chunks = x_last.reshape(x_last.shape[:-1] + (n // h, h))
    y = jnp.matmul(chunks, R_hxh, precision=lax.Precision.HIGHEST).reshape(x_last.shape)
    return jnp.moveaxis(y, -1, axis).astype(x.dtype)

"""Block-diagonal randomized Hadamard rotation (QuaRot / QuIP# style, as in the paper's rotation study).

R = D H / sqrt(h): D a diagonal of random +-1 signs drawn from `key`, H the h x h Sylvester Hadamard matrix.
R is orthogonal (R R^T = I), so rotating both GEMM operands along the contracting axis with the same R leaves
their product unchanged: (x R) . (w R) = x . w. `rotate` applies R to consecutive chunks of h elements along
an axis (x_chunk -> x_chunk @ R, the row-vector convention), in float32: a HIGHEST-precision matmul for small h,
the fast Walsh-Hadamard transform (O(h log h) adds, no h x h matrix) for large h.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lowbit_jax._types import ArrayLike, Key


def check_size(h: int, length: int | None = None) -> int:
    """Validate a rotation size: a power of two >= 1 that divides `length` (if given)."""
    if not isinstance(h, int | np.integer) or isinstance(h, bool) or h < 1 or h & (h - 1):
        raise ValueError(f"Hadamard size must be a power of two (1, 2, 4, ..., 128, ...), got {h!r}")
    if length is not None and length % h:
        raise ValueError(f"Hadamard size {h} does not divide the rotated axis length {length}")
    return int(h)


# rotate multiplies by the h x h matrix below this size and runs the fast Walsh-Hadamard transform (log2 h butterfly
# stages, no matrix) from it on. Measured under jit on the 2-core CPU of the development machine (jax 0.10.2, best
# of 5-20 runs), matmul / FWHT time: 128 KiB input: h = 64: 0.48, 128: 0.98, 256: 1.15, 512: 2.8, 8192: 840;
# 4 MiB input: h = 64: 0.27, 128: 0.78, 256: 0.97, 512: 1.6, 8192: 54. The two cross between 128 and 512; 512
# keeps the (unchanged) matmul for the usual sizes up to 256.
FWHT_MIN_H = 512

# Matrices of sizes below FWHT_MIN_H are cached (they are what rotate multiplies by): all of them together hold
# sum_{k <= 8} 4^k float32 entries, 341 KiB. Larger ones are built on request and never kept.
_CACHED_MAX_H = FWHT_MIN_H // 2


def _build_sylvester(h: int) -> np.ndarray:
    H = np.ones((1, 1), np.float32)
    while H.shape[0] < h:
        H = np.block([[H, H], [H, -H]])
    return H


@functools.cache
def _cached_sylvester(h: int) -> np.ndarray:
    """The Sylvester matrix of a size below FWHT_MIN_H (read-only, shared)."""
    if h > _CACHED_MAX_H:
        raise ValueError(f"only Hadamard sizes up to {_CACHED_MAX_H} are cached, got {h}")
    H = _build_sylvester(h)
    H.flags.writeable = False
    return H


def _sylvester_np(h: int) -> np.ndarray:
    return _cached_sylvester(h) if h <= _CACHED_MAX_H else _build_sylvester(h)


def sylvester(h: int) -> np.ndarray:
    """The h x h Sylvester Hadamard matrix of +-1 entries (float32, unnormalised; H H^T = h I)."""
    h = check_size(h)
    return _cached_sylvester(h).copy() if h <= _CACHED_MAX_H else _build_sylvester(h)


def random_signs(h: int, key: Key) -> jax.Array:
    """h random +-1 values (float32) drawn from `key`."""
    return jax.random.rademacher(key, (check_size(h),), dtype=jnp.float32)


def random_hadamard(h: int, key: Key) -> jax.Array:
    """The h x h orthogonal matrix diag(random +-1 signs) @ H_sylvester / sqrt(h), float32."""
    return _signed_hadamard(random_signs(check_size(h), key))


def _signed_hadamard(signs: jax.Array) -> jax.Array:
    """diag(signs) @ H_sylvester / sqrt(h) for h = len(signs), float32."""
    h = signs.shape[0]
    return signs.astype(jnp.float32)[:, None] * jnp.asarray(_sylvester_np(h)) * np.float32(1.0 / np.sqrt(h))


def _along_last(v: jax.Array, ndim: int) -> jax.Array:
    """float32 vector v shaped to broadcast along the last of `ndim` axes (explicit, for rank promotion 'raise')."""
    return v.astype(jnp.float32).reshape((1,) * (ndim - 1) + (-1,))


def _fwht(x: jax.Array, signs: jax.Array | None = None) -> jax.Array:
    """float32 x @ diag(signs) @ H along the last axis (length h, a power of two; signs None: all +1), unnormalised:
    log2 h stages of butterflies (a + b, a - b) on elements s apart, s = 1, 2, 4, ... (the pairs and order of
    kernels.reference.rotate_rows, which differs only in the sign of zero results).

    Each butterfly is one correctly rounded float32 add, so every output is off from the exact value by at most
    gamma_k * sum |x| (k = log2 h stages, gamma_k = k u / (1 - k u), u = 2^-24)."""
    y = jnp.asarray(x, jnp.float32)
    h = check_size(y.shape[-1])
    lead = y.shape[:-1]
    if signs is not None:
        y = y * _along_last(signs, y.ndim)
    s = 1
    while s < h:
        pairs = y.reshape(*lead, h // (2 * s), 2, s)
        lo, hi = pairs[..., 0, :], pairs[..., 1, :]
        y = jnp.stack([lo + hi, lo - hi], axis=-2).reshape(*lead, h)
        s *= 2
    return y


def _rotate_chunks(chunks: jax.Array, signs: jax.Array, inverse: bool) -> jax.Array:
    """float32 (..., h) chunks times R = diag(signs) H / sqrt(h) (R^T if inverse)."""
    h = chunks.shape[-1]
    if h < FWHT_MIN_H:
        R_hxh = _signed_hadamard(signs)
        return jnp.matmul(chunks, R_hxh.T if inverse else R_hxh, precision=lax.Precision.HIGHEST)
    # x R = (x D) H / sqrt(h); x R^T = x H D / sqrt(h) (H is symmetric); the +-1 signs commute with the scaling.
    y = _fwht(chunks, None if inverse else signs) * np.float32(1.0 / np.sqrt(h))
    return y * _along_last(signs, y.ndim) if inverse else y


def check_signs(signs: ArrayLike, h: int | None = None) -> jax.Array:
    """A rotation's sign vector as float32: a 1-D array of +-1 values whose length is a power of two (== h if given)."""
    v = np.asarray(signs, np.float64) if not isinstance(signs, jax.Array) else None
    if v is not None:  # concrete values: check them now
        if v.ndim != 1 or not np.all(np.abs(v) == 1):
            raise ValueError(f"Hadamard signs must be a 1-D vector of +1/-1 values, got {np.asarray(signs)!r}")
        check_size(v.shape[0])
        if h is not None and v.shape[0] != h:
            raise ValueError(f"{v.shape[0]} Hadamard signs given for a rotation of size {h}")
    return jnp.asarray(signs, jnp.float32)


def _check_rotated(x: jax.Array, axis: int) -> int:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"hadamard.rotate takes real floating-point arrays; got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError("hadamard.rotate rotates chunks along an axis; got a scalar")
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis!r} is out of range for an array of rank {x.ndim}")
    return int(axis) % x.ndim


def rotate(x: ArrayLike, h: int, key: Key, axis: int = -1, *, inverse: bool = False) -> jax.Array:
    """x with every chunk of h consecutive elements along `axis` multiplied by R (R^T if inverse); dtype kept.
    Computed in float32: a HIGHEST-precision matmul for h < FWHT_MIN_H, from it on the fast Walsh-Hadamard
    transform (no h x h matrix). TypeError for non-float x (a rotation of integers would truncate), ValueError for a
    scalar or an axis outside [-ndim, ndim)."""
    x = jnp.asarray(x)
    axis = _check_rotated(x, axis)
    h = check_size(h, x.shape[axis])
    return _rotate_jit(x, random_signs(h, key), axis, bool(inverse))


def rotate_with_signs(x: ArrayLike, signs: ArrayLike, axis: int = -1, *, inverse: bool = False) -> jax.Array:
    """`rotate` with the diagonal of R given: h = len(signs) values +-1 (a fixed vector, e.g. one shared by all
    layers), instead of signs drawn from a key."""
    x = jnp.asarray(x)
    axis = _check_rotated(x, axis)
    signs = check_signs(signs)
    check_size(signs.shape[0], x.shape[axis])
    return _rotate_jit(x, signs, axis, bool(inverse))


# One compiled program per shape and size: run op by op, the log2 h butterfly stages cost seconds of dispatch.
@functools.partial(jax.jit, static_argnums=(2, 3))
def _rotate_jit(x: jax.Array, signs: jax.Array, axis: int, inverse: bool) -> jax.Array:
    h = signs.shape[0]
    x_last = jnp.moveaxis(x, axis, -1).astype(jnp.float32)
    chunks = x_last.reshape(x_last.shape[:-1] + (x_last.shape[-1] // h, h))
    y = _rotate_chunks(chunks, signs, inverse).reshape(x_last.shape)
    return jnp.moveaxis(y, -1, axis).astype(x.dtype)

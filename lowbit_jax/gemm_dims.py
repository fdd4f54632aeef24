"""GEMM geometry for dot_general dimension numbers: normalised dims, free dims, the dims each tensor is quantized
along in each GEMM role, and the canonical (batch..., free..., K) layout the quantized GEMMs run in."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def normalize_dims(dimension_numbers, lhs_ndim: int, rhs_ndim: int):
    """((lc, rc), (lb, rb)) as tuples of non-negative ints; negative dims count from the end; TypeError (as
    lax.dot_general raises) for a dim outside [-ndim, ndim) instead of wrapping it."""
    (lc, rc), (lb, rb) = dimension_numbers

    def norm(ds, n: int) -> tuple[int, ...]:
        out = []
        for d in ds:
            if isinstance(d, bool) or not isinstance(d, int | np.integer) or not -n <= d < n:
                raise TypeError(
                    f"dot_general dimension {d!r} is out of range for an operand of rank {n} "
                    f"(dimension numbers {dimension_numbers!r})"
                )
            out.append(int(d) % n)
        return tuple(out)

    return (norm(lc, lhs_ndim), norm(rc, rhs_ndim)), (norm(lb, lhs_ndim), norm(rb, rhs_ndim))


def free_dims(ndim: int, contract, batch) -> tuple[int, ...]:
    """Dims that are neither contracting nor batch, in increasing order."""
    return tuple(d for d in range(ndim) if d not in contract and d not in batch)


def operand_axes(dimension_numbers, lhs_ndim: int, rhs_ndim: int) -> dict[str, dict[str, tuple[int, ...]]]:
    """The dims each tensor is quantized along in each GEMM role: {'x': {'fwd', 'dw'}, 'w': {...}, 'dy': {...}}.

    dY is in dot_general's output layout (batch..., lhs free..., rhs free...).
    """
    (lc, rc), (lb, rb) = normalize_dims(dimension_numbers, lhs_ndim, rhs_ndim)
    lf, rf = free_dims(lhs_ndim, lc, lb), free_dims(rhs_ndim, rc, rb)
    nb, nlf = len(lb), len(lf)
    return {
        "x": {"fwd": lc, "dw": lf},
        "w": {"fwd": rc, "dx": rf},
        "dy": {"dx": tuple(range(nb + nlf, nb + nlf + len(rf))), "dw": tuple(range(nb, nb + nlf))},
    }


def canonical(x, batch, free, contract):
    """x transposed to (batch..., free..., contracting...) with the contracting dims merged into one last axis."""
    perm = tuple(batch) + tuple(free) + tuple(contract)
    xt = x if perm == tuple(range(x.ndim)) else jnp.transpose(x, perm)
    k = math.prod(x.shape[d] for d in contract)
    return xt.reshape(tuple(x.shape[d] for d in tuple(batch) + tuple(free)) + (k,))


def merged_matrix(x, axes):
    """x as (rest..., K): the given axes moved last and merged in order (works for numpy and jax arrays)."""
    rest = tuple(d for d in range(x.ndim) if d not in axes)
    perm = rest + tuple(axes)
    return x.transpose(perm).reshape(tuple(x.shape[d] for d in rest) + (math.prod(x.shape[d] for d in axes),))

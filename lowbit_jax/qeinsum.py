"""Two-operand einsums as one dot_general call: the front end of qdot_general for einsum-style layers."""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lowbit_jax._types import ArrayLike, DimensionNumbers, Key
from lowbit_jax.qdot import QDotConfig, with_config


def _expand_ellipsis(terms: list[str], ndims: list[int | None]) -> list[str]:
    """Replace '...' by fresh letters, right-aligned as in numpy broadcasting."""
    if not any("..." in t for t in terms):
        return terms
    fresh = [c for c in string.ascii_letters if c not in "".join(terms)]
    n_ell = [0 if "..." not in t else n - (len(t) - 3) for t, n in zip(terms, ndims, strict=True) if n is not None]
    n_out = max(n_ell)
    letters = "".join(fresh[:n_out])
    out = []
    for t, n in zip(terms, n_ell + [n_out], strict=True):
        out.append(t.replace("...", letters[n_out - n :]) if "..." in t else t)
    return out


def einsum_dims(
    subscripts: str, lhs_ndim: int, rhs_ndim: int
) -> tuple[tuple[int, ...], tuple[int, ...], DimensionNumbers, tuple[int, ...]]:
    """A two-operand einsum as (lhs_sum_axes, rhs_sum_axes, dimension_numbers, out_perm) for dot_general."""
    subscripts = subscripts.replace(" ", "")
    if "->" not in subscripts or subscripts.count(",") != 1:
        raise ValueError(
            f"einsum subscripts must be explicit ('ab,bc->ac') with exactly two operands, got {subscripts!r}"
        )
    ins, out = subscripts.split("->")
    lhs, rhs, out = _expand_ellipsis([*ins.split(","), out], [lhs_ndim, rhs_ndim, None])
    if len(lhs) != lhs_ndim or len(rhs) != rhs_ndim:
        raise ValueError(f"einsum subscripts {subscripts!r} does not match operand ranks {lhs_ndim} and {rhs_ndim}")
    for term in (lhs, rhs, out):
        if len(set(term)) != len(term):
            raise ValueError(f"einsum subscripts {subscripts!r}: repeated indices within one term are not supported")
    if set(out) - set(lhs) - set(rhs):
        raise ValueError(f"einsum subscripts {subscripts!r}: output indices missing from the operands")
    lhs_sum = tuple(i for i, c in enumerate(lhs) if c not in rhs and c not in out)
    rhs_sum = tuple(i for i, c in enumerate(rhs) if c not in lhs and c not in out)
    lhs = "".join(c for i, c in enumerate(lhs) if i not in lhs_sum)
    rhs = "".join(c for i, c in enumerate(rhs) if i not in rhs_sum)
    contract = [c for c in lhs if c in rhs and c not in out]
    batch = [c for c in lhs if c in rhs and c in out]
    dims = (
        (tuple(lhs.index(c) for c in contract), tuple(rhs.index(c) for c in contract)),
        (tuple(lhs.index(c) for c in batch), tuple(rhs.index(c) for c in batch)),
    )
    produced = batch + [c for c in lhs if c not in rhs] + [c for c in rhs if c not in lhs]
    return lhs_sum, rhs_sum, dims, tuple(produced.index(c) for c in out)


def einsum_via(
    dot_general: Callable[..., jax.Array], subscripts: str, lhs: ArrayLike, rhs: ArrayLike, **kwargs: Any
) -> jax.Array:
    """einsum(subscripts, lhs, rhs) computed by one call of `dot_general` (a lax.dot_general-compatible callable)."""
    lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
    lhs_sum, rhs_sum, dims, perm = einsum_dims(subscripts, lhs.ndim, rhs.ndim)
    lhs = jnp.sum(lhs, axis=lhs_sum) if lhs_sum else lhs
    rhs = jnp.sum(rhs, axis=rhs_sum) if rhs_sum else rhs
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    y = dot_general(lhs, rhs, dims, **kwargs)
    return y if perm == tuple(range(y.ndim)) else jnp.transpose(y, perm)


def qeinsum(
    subscripts: str,
    lhs: ArrayLike,
    rhs: ArrayLike,
    config: QDotConfig | None = None,
    *,
    key: Key | None = None,
    **kwargs: Any,
) -> jax.Array:
    """Two-operand einsum through qdot_general (lhs = activations X, rhs = weights W)."""
    return einsum_via(with_config(config or QDotConfig(), key), subscripts, lhs, rhs, **kwargs)

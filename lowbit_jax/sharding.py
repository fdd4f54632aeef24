"""Sharding helpers shared by the quantizers and qdot_general: Explicit-mesh specs and shard_map varying axes.

Explicit meshes (sharding in types): a quantized axis whose local shard is not a whole number of blocks cannot be
reshaped into blocks shard by shard, so it is gathered first (`gather_partial_blocks`) and the result given back in
the input's sharding; a block never straddles devices in the arithmetic, whatever the layout.
"""

from __future__ import annotations

import jax
from jax import lax
from jax.sharding import AxisType


def entries(spec, ndim: int) -> tuple:
    """A PartitionSpec's entries padded with None to one per dim."""
    return tuple(spec) + (None,) * (ndim - len(spec))


def varying_axes(x) -> frozenset:
    """The shard_map mesh axes along which x varies (empty outside shard_map)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)
    return frozenset(getattr(mat, "varying", ()) if mat is not None else getattr(aval, "vma", ()))


def same_varying_axes(*xs):
    """xs cast to vary along the union of their varying shard_map axes. lax.dot_general does this implicitly; a
    custom VJP must see it explicitly, so that each cotangent has its operand's type (the cast's transpose is the
    psum that an invariant operand's gradient needs)."""
    union = frozenset().union(*(varying_axes(x) for x in xs))
    out = []
    for x in xs:
        missing = tuple(sorted(union - varying_axes(x)))
        out.append(lax.pcast(x, missing, to="varying") if missing else x)
    return tuple(out)


def explicit_spec(x) -> tuple | None:
    """x's PartitionSpec entries, one per dim, when x is sharded on an Explicit mesh axis (else None)."""
    sharding = jax.typeof(x).sharding
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or AxisType.Explicit not in tuple(getattr(mesh, "axis_types", ())):
        return None
    return entries(sharding.spec, x.ndim)


def _axis_shards(mesh, entry) -> int:
    names = entry if isinstance(entry, tuple) else (entry,)
    n = 1
    for name in names:
        if name is not None:
            n *= mesh.shape[name]
    return n


def gather_partial_blocks(x: jax.Array, block: dict[int, int]) -> jax.Array:
    """x resharded so that every axis a in `block` whose local shard is not a multiple of block[a] is replicated
    (unchanged off Explicit meshes, and when every local shard holds whole blocks)."""
    spec = explicit_spec(x)
    if spec is None:
        return x
    mesh = jax.typeof(x).sharding.mesh
    new = list(spec)
    for a, b in block.items():
        n = _axis_shards(mesh, spec[a])
        if n > 1 and (x.shape[a] % n or (x.shape[a] // n) % b):
            new[a] = None
    if new == list(spec):
        return x
    return jax.sharding.reshard(x, jax.sharding.PartitionSpec(*new))


def reshard_like(y: jax.Array, x: jax.Array) -> jax.Array:
    """y in x's Explicit-mesh sharding (y unchanged if x has none or y already has it)."""
    spec = explicit_spec(x)
    if spec is None or explicit_spec(y) == spec:
        return y
    return jax.sharding.reshard(y, jax.sharding.PartitionSpec(*spec))

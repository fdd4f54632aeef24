"""qconv_general_dilated: lax.conv_general_dilated computed as the GEMM it is, quantized by qdot_general.

A convolution is patches(X) . W. `lax.conv_general_dilated_patches` gathers every output position's receptive
field; its features are reordered to (window taps..., input channel), channel innermost, and W is flattened in
the same order to (taps x in_channels, out_channels). `qdot_general` then applies the config's six quantizers
to that GEMM, so forward blocks run along input channels within a tap (as in implicit-GEMM hardware), dX comes
from Q(dY) . Q(W)^T (blocks along output channels) and dW from Q(patches)^T . Q(dY) (blocks along batch and
output positions). The patch gather is an exact copy (HIGHEST precision), and its transpose sums the
overlapping windows of dX in float32.

Grouped convolutions (feature_group_count G, depthwise included) run as G GEMMs, the group a batch dim of
qdot_general. Limits: batch_group_count > 1 raises NotImplementedError; an Inf or NaN in X reaches the
neighbouring patches as NaN (the gather is a one-hot convolution, and 0 * Inf = NaN); the patches take
prod(window) times the memory of X.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from lowbit_jax._types import ArrayLike, ConvDimensionNumbers, DTypeLike, Key, Precision
from lowbit_jax.qdot import QDotConfig, qdot_general


def _patch_matrix(lhs, window: tuple[int, ...], dn, groups: int, **patch_kwargs):
    """(G, N, out spatial..., taps * C/G) patches of lhs per channel group, features ordered (taps..., channel)
    with the channel innermost."""
    patches = lax.conv_general_dilated_patches(
        lhs, window, dimension_numbers=dn, precision=lax.Precision.HIGHEST, **patch_kwargs
    )
    out_spec = dn.out_spec
    p = jnp.transpose(patches, (out_spec[0], *out_spec[2:], out_spec[1]))  # (N, S..., C * taps), C-major
    c, taps = lhs.shape[dn.lhs_spec[1]], math.prod(window)
    p = p.reshape(p.shape[:-1] + (groups, c // groups, taps))
    p = jnp.moveaxis(jnp.swapaxes(p, -1, -2), -3, 0)  # (G, N, S..., taps, C/G)
    return p.reshape(p.shape[:-2] + (taps * (c // groups),))


def _kernel_matrix(rhs, dn, groups: int):
    """W as (G, taps * C/G, O/G): taps row-major over the spatial dims, in-channels innermost; output feature o
    belongs to group o // (O/G), as in lax.conv_general_dilated."""
    o, i, *spatial = dn.rhs_spec
    w = jnp.transpose(rhs, (*spatial, i, o))  # (S..., C/G, O)
    w = w.reshape(-1, w.shape[-1])
    w = w.reshape(w.shape[0], groups, w.shape[1] // groups)
    return jnp.moveaxis(w, 1, 0)


def qconv_general_dilated(
    lhs: ArrayLike,
    rhs: ArrayLike,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: ConvDimensionNumbers = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Precision = None,
    preferred_element_type: DTypeLike | None = None,
    *,
    config: QDotConfig | None = None,
    key: Key | None = None,
    out_sharding: NamedSharding | PartitionSpec | None = None,  # not supported: NotImplementedError
) -> jax.Array:
    """Drop-in for lax.conv_general_dilated whose GEMM (patches . W, one per channel group) is quantized per
    `config` (qdot_general)."""
    if batch_group_count != 1:
        raise NotImplementedError(f"qconv_general_dilated: batch_group_count must be 1, got {batch_group_count}")
    if out_sharding is not None:
        raise NotImplementedError("qconv_general_dilated: out_sharding is not supported")
    lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    groups, c, o = feature_group_count, lhs.shape[dn.lhs_spec[1]], rhs.shape[dn.rhs_spec[0]]
    if groups < 1 or c % groups or o % groups or rhs.shape[dn.rhs_spec[1]] * groups != c:
        raise ValueError(
            f"qconv_general_dilated: feature_group_count {groups} must divide the {c} input and {o} output "
            f"features, with {rhs.shape[dn.rhs_spec[1]]} kernel input features = {c} / groups"
        )
    window = tuple(rhs.shape[d] for d in dn.rhs_spec[2:])
    patches = _patch_matrix(
        lhs,
        window,
        dn,
        groups,
        window_strides=window_strides,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
    )
    kernel = _kernel_matrix(rhs, dn, groups)
    batch: tuple[tuple[int, ...], tuple[int, ...]]
    if groups == 1:  # one plain GEMM
        patches, kernel, batch = patches[0], kernel[0], ((), ())
    else:  # one GEMM per group, the group a batch dim
        batch = ((0,), (0,))
    contract = (((patches.ndim - 1,), (kernel.ndim - 2,)), batch)
    y = qdot_general(
        patches, kernel, contract, config, key=key, precision=precision, preferred_element_type=preferred_element_type
    )
    if groups > 1:  # (G, N, S..., O/G) -> (N, S..., O), group-major output features
        y = jnp.moveaxis(y, 0, -2)
        y = y.reshape(y.shape[:-2] + (o,))
    # y is (N, out spatial..., O); put each dim where dn.out_spec wants it
    out_spec = dn.out_spec
    source = {out_spec[0]: 0, out_spec[1]: y.ndim - 1} | {d: 1 + i for i, d in enumerate(out_spec[2:])}
    return jnp.transpose(y, tuple(source[d] for d in range(y.ndim)))


def with_conv_config(config: QDotConfig, key: Key | None = None) -> Callable[..., jax.Array]:
    """A lax.conv_general_dilated-compatible callable bound to `config` and `key` (for Conv hooks)."""
    return functools.partial(qconv_general_dilated, config=config, key=key)

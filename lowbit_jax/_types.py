"""Type aliases shared by lowbit_jax's signatures (a leaf module: it imports nothing from lowbit_jax).

Arrays follow jax.typing: inputs are `ArrayLike` (jax / numpy arrays and Python scalars), outputs `jax.Array`.
"""

from __future__ import annotations

from typing import TypeAlias

import jax
from jax import lax
from jax.typing import ArrayLike, DTypeLike

__all__ = ["ArrayLike", "Axis", "ConvDimensionNumbers", "DTypeLike", "DimensionNumbers", "Key", "Precision"]

# The quantized axis: one axis for 1-D blocks, per-channel and per-tensor formats, two (rows, cols) for 2-D tiles;
# negative axes count from the end.
Axis: TypeAlias = int | tuple[int, ...]
# A PRNG key: a typed key (jax.random.key) or a raw uint32[2] key (jax.random.PRNGKey).
Key: TypeAlias = jax.Array
# lax.dot_general's ((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch)).
DimensionNumbers: TypeAlias = lax.DotDimensionNumbers
# lax.conv_general_dilated's dimension_numbers: None, a (lhs, rhs, out) spec string triple or ConvDimensionNumbers.
ConvDimensionNumbers: TypeAlias = lax.ConvGeneralDilatedDimensionNumbers
# lax's precision argument (None, a Precision, a pair of them, or a DotAlgorithm).
Precision: TypeAlias = lax.PrecisionLike

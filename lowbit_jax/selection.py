"""Per-block choice among candidate formats: the block error metrics, and the element and scale objects of an
adaptive format (the union of its candidates' grids and scale rules, indexed by a per-block choice).

An adaptive format quantizes every block with each candidate (same block layout, same scale type, one shared
second-level scale), keeps the candidate whose dequantized block has the lowest error under `select`, ties to
the earliest candidate, and stores the choice where its storage allows (`selector_mode`):
  "scale_sign"  the candidates share one stored scale of a signed float type whose sign bit is otherwise always
                0 (E4M3 block scales): a set sign bit selects candidate 1 (IF4 / IF6). No extra bits.
  "scale"       the candidates share the element grid and differ only in the scale value (Four Over Six): the
                stored scale is the chosen one and decoding needs no selector. No extra bits.
  "separate"    a selector of ceil(log2 n) bits per block beside the scales (MX-style MXIF: UE8M0 has no spare
                bit), held in QArray.selectors as uint8.
The error of a block is computed from the candidate's dequantized float32 values y: d = fl(x - y), then
  mse: the sum of fl(d^2), mae: the sum of |d|, absmax: max |d|,
with float32 sums in a fixed order (the block's elements in row-major order over its axes, zero-padded to a
power of two, then halves added elementwise until one value is left), so that every implementation and an
independent transcription get the same bits. The products are kept apart from the sums by selects: XLA
contracts a * b + c into a fused multiply-add otherwise, which rounds differently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import jax
import jax.numpy as jnp
from jax import lax

from lowbit_jax._types import DTypeLike
from lowbit_jax.elements import ElemType, check_choice
from lowbit_jax.scaling import FloatScale, ScaleRule, Scales

SELECTS = ("mse", "mae", "absmax")
SELECTOR_MODES = ("scale_sign", "scale", "separate")


# --------------------------------------------------------------------------------------------- block errors
def _moved_to_end(a: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """`a` with the block `axes` (ascending) moved last and merged into one axis of the block's elements."""
    rest = [d for d in range(a.ndim) if d not in axes]
    moved = jnp.transpose(a, rest + list(axes))
    return moved.reshape(*moved.shape[: len(rest)], math.prod(a.shape[d] for d in axes))


def tree_sum(a: jax.Array) -> jax.Array:
    """The float32 sum over the last axis in the fixed order: zero-pad to a power of two, add halves."""
    n = a.shape[-1]
    width = 1 << max(0, (n - 1).bit_length())
    if width != n:
        a = jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, width - n)])
    while a.shape[-1] > 1:
        half = a.shape[-1] // 2
        a = a[..., :half] + a[..., half:]
    return a[..., 0]


def block_error(
    x_blocks: jax.Array, y_blocks: jax.Array, axes: tuple[int, ...], select: str, valid: jax.Array | None = None
) -> jax.Array:
    """The `select` error of every block of y against x (float32, keepdims over `axes`; NaN for blocks that
    hold NaN or Inf); elements outside `valid` (padding) count as exact."""
    check_choice("select", select, SELECTS)
    keep = jnp.isfinite(y_blocks)  # a select between each product and the sum that uses it (no FMA)
    d = jnp.where(keep, x_blocks - y_blocks, jnp.nan)
    if valid is not None:
        d = jnp.where(valid, d, 0.0)
    terms = jnp.where(keep, d * d, jnp.nan) if select == "mse" else jnp.abs(d)
    flat = _moved_to_end(terms, tuple(sorted(axes)))
    err = jnp.max(flat, axis=-1) if select == "absmax" else tree_sum(flat)
    shape = [1 if d in axes else n for d, n in enumerate(x_blocks.shape)]
    return err.reshape(shape)


def best_candidate(errors: list[jax.Array]) -> jax.Array:
    """Index (int32) of the lowest error per block; a later candidate wins only if strictly lower (ties and
    NaN keep the earlier one)."""
    choice = jnp.zeros(errors[0].shape, jnp.int32)
    best = errors[0]
    for i, err in enumerate(errors[1:], start=1):
        better = err < best
        choice = jnp.where(better, i, choice)
        best = jnp.where(better, err, best)
    return choice


def pick(choice: jax.Array, options: list[jax.Array]) -> jax.Array:
    """options[choice] elementwise (choice broadcasts against the options), as a select chain."""
    out = options[0]
    for i, opt in enumerate(options[1:], start=1):
        out = jnp.where(choice == i, opt, out)
    return out


def pick_scales(choice: jax.Array, scales: list[Scales]) -> Scales:
    """The chosen candidate's Scales per block (exp or value), the shared tensor scale, and the choice."""
    first = scales[0]  # the candidates share one scale type: all hold exponents, or all values
    exp = None if first.exp is None else pick(choice, cast(list[jax.Array], [s.exp for s in scales]))
    value = None if first.value is None else pick(choice, cast(list[jax.Array], [s.value for s in scales]))
    return Scales(exp, value, first.tensor, first.finite, None, choice)


# --------------------------------------------------------------------------------------------- elements
def _pattern(elem: ElemType, values: jax.Array) -> jax.Array:
    """Grid values -> their `elem.bits`-bit code patterns as int32 (INT: two's complement, masked)."""
    return elem.code_bytes(values).astype(jnp.int32) & ((1 << elem.bits) - 1)


def _from_pattern(elem: ElemType, pattern: jax.Array) -> jax.Array:
    """`elem.bits`-bit code patterns (int32) -> the element's values (float32)."""
    if elem.kind == "int":
        sign = 1 << (elem.bits - 1)
        return elem.decode(jnp.where(pattern >= sign, pattern - (1 << elem.bits), pattern))
    return elem.decode(pattern.astype(jnp.uint8))


@dataclass(frozen=True)
class AdaptiveElem:
    """The element grids of an adaptive format's candidates (equal widths). Codes are the chosen candidate's
    `bits`-bit pattern (FP: sign, exponent, mantissa; INT: two's complement; tables: the index), so every method
    that maps between values and codes takes the per-block choice; rounding happens per candidate only."""

    elems: tuple[ElemType, ...]

    kind = "adaptive"
    zero_point = False

    def __post_init__(self) -> None:
        if len(self.elems) < 2:
            raise ValueError(f"an adaptive element needs at least two candidate grids, got {len(self.elems)}")
        widths = {e.bits for e in self.elems}
        if len(widths) != 1:
            names = ", ".join(f"{e.name} ({e.bits} bits)" for e in self.elems)
            raise ValueError(f"adaptive candidates must have elements of one width, got {names}")
        if any(getattr(e, "zero_point", False) for e in self.elems):
            raise ValueError("zero-point INT elements cannot be adaptive candidates")

    @property
    def bits(self) -> int:
        return self.elems[0].bits

    @property
    def max(self) -> float:
        """The largest magnitude of any candidate grid."""
        return max(e.max for e in self.elems)

    @property
    def min(self) -> float:
        return -self.max

    @property
    def name(self) -> str:
        return "|".join(e.name for e in self.elems)

    @property
    def shared(self) -> ElemType | None:
        """The one grid of candidates that differ only in their scales (Four Over Six), else None."""
        return self.elems[0] if all(e == self.elems[0] for e in self.elems) else None

    @property
    def storage_dtype(self) -> DTypeLike:
        """The shared grid's own storage dtype; else uint4 (4-bit patterns) or uint8."""
        if self.shared is not None:
            return self.shared.storage_dtype
        return jnp.uint4 if self.bits <= 4 else jnp.uint8

    @property
    def byte_dtype(self) -> DTypeLike:
        return jnp.uint8 if self.shared is None else self.shared.byte_dtype

    @property
    def scale_shift(self) -> int:
        raise TypeError("an adaptive element has one scale shift per candidate; use its candidates' elements")

    def round(self, v: jax.Array, uniform: jax.Array | None = None) -> jax.Array:
        raise TypeError("an adaptive element rounds per candidate; quantize through lowbit_jax.codec")

    def code_bytes(self, values: jax.Array, choice: jax.Array | None) -> jax.Array:
        """Chosen candidates' values -> uint8 code patterns (choice broadcasts against values); a shared grid's
        own code bytes."""
        if self.shared is not None:
            return self.shared.code_bytes(values)
        assert choice is not None, "codes of different candidate grids need the per-block choice"
        return pick(choice, [_pattern(e, values) for e in self.elems]).astype(jnp.uint8)

    def encode(self, values: jax.Array, choice: jax.Array | None) -> jax.Array:
        if self.shared is not None:
            return self.shared.encode(values)
        return self.code_bytes(values, choice).astype(self.storage_dtype)

    def decode(self, codes: jax.Array, choice: jax.Array | None) -> jax.Array:
        """Codes -> float32 values of the chosen candidates (a shared grid needs no choice)."""
        if self.shared is not None:
            return self.shared.decode(codes)
        if choice is None:
            raise ValueError("decoding codes of different candidate grids needs the per-block choice")
        pattern = codes.astype(jnp.int32)
        return pick(choice, [_from_pattern(e, pattern) for e in self.elems])

    def codes_from_bytes(self, codes_u8: jax.Array) -> jax.Array:
        if self.shared is not None:
            return self.shared.codes_from_bytes(codes_u8)
        return codes_u8.astype(self.storage_dtype)


# --------------------------------------------------------------------------------------------- scales
def selector_mode(elems: tuple[ElemType, ...], rules: tuple[ScaleRule, ...]) -> str:
    """Where an adaptive format's choice lives (module docstring) given its candidates' elements and rules."""
    if all(e == elems[0] for e in elems):
        return "scale"
    shared = all(r == rules[0] for r in rules)
    if len(elems) == 2 and shared and isinstance(rules[0], FloatScale) and rules[0].kind == "e4m3":
        return "scale_sign"
    return "separate"


def selector_bits(mode: str, n: int) -> int:
    """Extra stored bits per block for the choice: 0 in the scale's sign or value, else ceil(log2 n)."""
    return 0 if mode != "separate" else max(1, math.ceil(math.log2(n)))


@dataclass(frozen=True)
class AdaptiveScale:
    """The candidates' scale rules (one type, one second level) with the choice stored per `mode`. Scales are
    computed by the codec per candidate; this object encodes the chosen ones and decodes stored ones."""

    rules: tuple[ScaleRule, ...]
    mode: str

    def __post_init__(self) -> None:
        check_choice("selector mode", self.mode, SELECTOR_MODES)
        first = self.rules[0]
        if any(type(r) is not type(first) or r.name != first.name for r in self.rules):
            names = ", ".join(r.name for r in self.rules)
            raise ValueError(f"adaptive candidates must share one scale type, got {names}")
        if any(r.has_tensor_scale != first.has_tensor_scale for r in self.rules):
            raise ValueError("adaptive candidates must all have a tensor scale, or none")

    @property
    def name(self) -> str:
        return self.rules[0].name

    @property
    def bits(self) -> int:
        return self.rules[0].bits

    @property
    def storage_dtype(self) -> DTypeLike:
        return self.rules[0].storage_dtype

    @property
    def byte_dtype(self) -> DTypeLike:
        return self.rules[0].byte_dtype

    @property
    def has_tensor_scale(self) -> bool:
        return self.rules[0].has_tensor_scale

    @property
    def dtype(self) -> str:
        return self.rules[0].dtype

    def check(self, elem: object) -> None:
        return None

    def scale_bytes(self, sc: Scales, elem: AdaptiveElem) -> jax.Array:
        """Stored scales of the chosen candidates as bytes (8-bit scale types) or their storage dtype."""
        per = [r.scale_bytes(sc, e) for r, e in zip(self.rules, elem.elems)]
        assert sc.choice is not None  # the codec's adaptive Scales carry the choice
        stored = pick(sc.choice, per)
        if self.mode != "scale_sign":
            return stored
        sign = jnp.where(sc.finite & (sc.choice == 1), 0x80, 0).astype(jnp.uint8)
        return stored | sign

    def encode(self, sc: Scales, elem: AdaptiveElem) -> jax.Array:
        return self.from_bytes(self.scale_bytes(sc, elem))

    def from_bytes(self, scales_bytes: jax.Array) -> jax.Array:
        return self.rules[0].from_bytes(scales_bytes)

    def decode(
        self,
        stored: jax.Array,
        elem: AdaptiveElem,
        tensor: jax.Array | None = None,
        selectors: jax.Array | None = None,
    ) -> Scales:
        """Stored scales (and, for "separate", the selectors) -> Scales of the chosen candidates with `choice`."""
        if self.mode == "scale":
            return self.rules[0].decode(stored, elem.elems[0], tensor)._replace(choice=None)
        if self.mode == "scale_sign":
            u8 = lax.bitcast_convert_type(stored, jnp.uint8)
            nan = (u8 & 0x7F) == 0x7F
            choice = jnp.where(nan, 0, (u8 >> 7).astype(jnp.int32))
            magnitude = self.rules[0].from_bytes(jnp.where(nan, u8, u8 & 0x7F))
            return self.rules[0].decode(magnitude, elem.elems[0], tensor)._replace(choice=choice)
        if selectors is None:
            raise ValueError("this adaptive format stores its choice beside the scales: pass the selectors")
        choice = selectors.astype(jnp.int32)
        per = [r.decode(stored, e, tensor) for r, e in zip(self.rules, elem.elems)]
        return pick_scales(choice, per)

"""Scale rules as objects: a UE8M0 power of two, or a float block scale (E4M3, UE5M3, FP32) with an optional
second level (a tensor scale: FP32, a power of two, or none).

Every rule has `name`, `bits` (storage per block scale), `storage_dtype` and the same four methods:
  block_scales(amax, elem, g=None) -> Scales   the scales of blocks with these amaxes (float32, >= 0, NaN/Inf
                                               for blocks holding them); g: the second-level scale, computed
                                               from these amaxes when the rule has one and g is None
  encode(sc, elem) -> stored scales            (float8_e8m0fnu, float8_e4m3fn, float32 (UE5M3 values), bf16)
  scale_bytes(sc, elem) -> bytes               the same as uint8 bit patterns where 8-bit (kernel outputs)
  decode(stored, elem, tensor) -> Scales       the inverse of encode
and `divide(x, sc, elem)` / `multiply(values, sc, elem)`, which apply Scales to element-domain values. The
formulas (paper Eq. 7-9, the OCP and torchao UE8M0 rules, the NV two-level rule) are written once, in the
functions below the classes' helpers. A FloatScale's `numerics` picks whose float32 arithmetic a two-level E4M3
scale runs: the library's exact contract ("exact", the default) or a peer's, operation by operation ("torchao",
"te"; `PeerNumerics`).
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
from jax import lax

from lowbit_jax._types import DTypeLike
from lowbit_jax.elements import ElemType, FPElem, check_choice, fp
from lowbit_jax.rounding import (
    F32_MAX,
    F32_MIN_NORMAL,
    div_exact,
    f32_bits,
    f32_exponent,
    f32_mantissa,
    mul_pow2,
    pow2,
    round_bf16,
    round_bf16_satfinite,
    round_fp,
)

E8M0_MIN_EXP, E8M0_MAX_EXP, E8M0_NAN = -127, 127, 255
E4M3_SCALE_MAX = 448.0
UE8M0_ROUNDINGS = ("ceil", "floor", "round", "even", "ceil_amax")
SCALE_DTYPES = ("float32", "bfloat16")
TENSOR_SCALES = ("fp32", "ue8m0", "none")
NUMERICS = ("exact", "torchao", "te")

E4M3 = fp(4, 3)  # OCP E4M3 ("fn": max 448), the NV block-scale type
UE5M3 = FPElem(5, 3, "none", signed=False)  # unsigned, bias 15, subnormals, no specials: max 122880, min 2^-17


class Scales(NamedTuple):
    """Per-block scales in the keepdims layout of a block statistic (a pytree).

    exp: power-of-two scales, scale = 2^exp (int32), else None;  value: other scales, the block scale as
    float32, else None;  tensor: the stored second level, a float32 scalar (the tensor scale g; numerics "te":
    the tensor amax, from which TransformerEngine derives both its scales) or None;  finite: blocks free of
    NaN/Inf;  zero: the integer zero points (float32) of zero-point INT blocks, else None;  choice: the chosen
    candidate (int32) of adaptive-format blocks, else None.
    """

    exp: jax.Array | None
    value: jax.Array | None
    tensor: jax.Array | None
    finite: jax.Array
    zero: jax.Array | None = None
    choice: jax.Array | None = None


# --------------------------------------------------------------------------------------------- UE8M0 rules
def _split_f32(v: float) -> tuple[int, int]:
    """(unbiased exponent, 23 mantissa bits) of a positive normal float32 constant."""
    bits = struct.unpack("<I", struct.pack("<f", v))[0]
    return ((bits >> 23) & 0xFF) - 127, bits & ((1 << 23) - 1)


def _sqrt2_thresholds(q_sig: int) -> tuple[int, int]:
    """Smallest 24-bit significands A with A^2 >= 2 Q^2 and with 2 A^2 >= Q^2 (exact integer arithmetic)."""
    up = math.isqrt(2 * q_sig * q_sig - 1) + 1
    down = math.isqrt((q_sig * q_sig - 1) // 2) + 1
    return up, down


def _significand_bits(elem: ElemType) -> int:
    """Mantissa bits of the element's magnitude (FP: m; INT(b): b - 2, since 2^(b-1) - 1 = 1.1..1 x 2^(b-2))."""
    if getattr(elem, "kind", None) == "fp":
        return cast(FPElem, elem).man_bits
    if getattr(elem, "kind", None) == "int":
        return elem.bits - 2
    raise ValueError(f"scale_rounding='even' rounds amax to the element's mantissa width; {elem.name} has none")


def pow2_exponent(amax: jax.Array, qmax: float, rule: str, mbits: int | None = None) -> jax.Array:
    """The unclamped exponent e (int32) of a power-of-two scale 2^e mapping `amax` to `qmax`.

    ceil:      the smallest e with amax <= qmax * 2^e (paper Eq. 9, "RCEIL"): no element ever clips.
    floor:     floor(log2 amax) - floor(log2 qmax) (OCP MX v1.0 example; the block maximum may saturate).
    round:     round(log2(amax / qmax)) (the authors' "round" option).
    even:      floor(log2(amax rounded to `mbits` mantissa bits)) - floor(log2 qmax) (torchao EVEN).
    ceil_amax: ceil(log2 amax) - floor(log2 qmax) (torchao CEIL; one binade above ceil when 0 < mantissa(amax)
               <= mantissa(qmax)).
    All are decided on exponent and mantissa bits, never with a floating-point log2.
    """
    q_exp, q_man = _split_f32(qmax)
    a_exp, a_man = f32_exponent(amax), f32_mantissa(amax)
    e = a_exp - q_exp
    if rule == "ceil":
        return e + (a_man > q_man).astype(jnp.int32)
    if rule == "round":
        up, down = _sqrt2_thresholds(q_man | 1 << 23)
        a_sig = a_man | 1 << 23
        return e + (a_sig >= up).astype(jnp.int32) - (a_sig < down).astype(jnp.int32)
    if rule == "even":
        assert mbits is not None, "scale_rounding='even' needs the element's mantissa bits"
        rounded = f32_bits(amax) + jnp.uint32(1 << (22 - mbits))  # half an ulp of the element's mantissa
        return ((rounded >> 23) & 0xFF).astype(jnp.int32) - 127 - q_exp
    if rule == "ceil_amax":
        return e + (a_man > 0).astype(jnp.int32)
    if rule == "floor":
        return e
    raise ValueError(f"scale_rounding must be one of {list(UE8M0_ROUNDINGS)}, got {rule!r}")


def ue8m0_exponent(amax: jax.Array, elem: ElemType, rule: str) -> jax.Array:
    """Exponent e (int32) of the UE8M0 scale 2^e of the element values for a block with this amax, clamped so
    that the stored OCP scale X = 2^(e + elem.scale_shift) lies in [2^-127, 2^127]."""
    mbits = _significand_bits(elem) if rule == "even" else None
    e = pow2_exponent(amax, elem.max, rule, mbits)
    return jnp.clip(e, E8M0_MIN_EXP - elem.scale_shift, E8M0_MAX_EXP - elem.scale_shift).astype(jnp.int32)


def ue8m0_exponent_bf16(amax: jax.Array, elem: ElemType, rule: str) -> jax.Array:
    """The authors' BF16 arithmetic: s = amax / Qmax and log2(s) in bfloat16, then ceil/floor/round.

    A negative control: log2 in bf16 can land on an integer and undo the ceil (docs/formats.md).
    """
    ops = {"ceil": jnp.ceil, "floor": jnp.floor, "round": jnp.round}
    if rule not in ops:
        raise ValueError(f"scale_dtype='bfloat16' supports scale_rounding {list(ops)}, got {rule!r}")
    s = round_bf16(div_exact(round_bf16_satfinite(amax), round_bf16(jnp.float32(elem.max))))
    log2_s = round_bf16(jnp.log2(s))
    e = jnp.where(s > 0, ops[rule](log2_s).astype(jnp.float32), E8M0_MIN_EXP - elem.scale_shift)
    return jnp.clip(e, E8M0_MIN_EXP - elem.scale_shift, E8M0_MAX_EXP - elem.scale_shift).astype(jnp.int32)


def e8m0_encode(e: jax.Array, finite: jax.Array, shift: int = 0) -> jax.Array:
    """Scale exponents -> float8_e8m0fnu scales 2^(e + shift), built from bits (0xFF = NaN for non-finite)."""
    return lax.bitcast_convert_type(e8m0_bytes(e, finite, shift), jnp.float8_e8m0fnu)


def e8m0_bytes(e: jax.Array, finite: jax.Array, shift: int = 0) -> jax.Array:
    """The uint8 E8M0 codes e + shift + 127 (0xFF for non-finite blocks)."""
    return jnp.where(finite, e + (shift + 127), E8M0_NAN).astype(jnp.uint8)


def e8m0_decode(scales_e8m0: jax.Array, shift: int = 0) -> tuple[jax.Array, jax.Array]:
    """float8_e8m0fnu scales -> (exponent of the element scale (int32), finite mask)."""
    code = lax.bitcast_convert_type(scales_e8m0, jnp.uint8).astype(jnp.int32)
    return code - (127 + shift), code != E8M0_NAN


@dataclass(frozen=True)
class UE8M0:
    """Power-of-two block scale stored as OCP E8M0 (X = 2^(e + scale_shift); INT elements are OCP fixed point).

    rounding: "ceil" (paper Eq. 9, default), "floor" (OCP example), "round", "even", "ceil_amax" (torchao);
    dtype "bfloat16": amax / Qmax and its log2 in bf16, and x rounded to bf16 first (the authors' arithmetic).
    """

    rounding: str = "ceil"
    dtype: str = "float32"

    name = "ue8m0"
    bits = 8
    storage_dtype = jnp.float8_e8m0fnu
    byte_dtype = jnp.uint8  # dtype of scale_bytes
    has_tensor_scale = False

    def __post_init__(self) -> None:
        check_choice("scale_rounding", self.rounding, UE8M0_ROUNDINGS)
        check_choice("scale_dtype", self.dtype, SCALE_DTYPES)

    def check(self, elem: ElemType) -> None:
        """ValueError if this rule cannot scale `elem`."""
        if self.rounding == "even":
            _significand_bits(elem)
        if self.dtype == "bfloat16" and self.rounding not in ("ceil", "floor", "round"):
            raise ValueError(f"scale_dtype='bfloat16' supports scale_rounding ceil/floor/round, not {self.rounding!r}")

    def block_scales(self, amax: jax.Array, elem: ElemType, g: jax.Array | None = None) -> Scales:
        rule = ue8m0_exponent_bf16 if self.dtype == "bfloat16" else ue8m0_exponent
        return Scales(rule(amax, elem, self.rounding), None, None, jnp.isfinite(amax))

    def encode(self, sc: Scales, elem: ElemType) -> jax.Array:
        assert sc.exp is not None  # UE8M0 scales are powers of two
        return e8m0_encode(sc.exp, sc.finite, elem.scale_shift)

    def scale_bytes(self, sc: Scales, elem: ElemType) -> jax.Array:
        assert sc.exp is not None
        return e8m0_bytes(sc.exp, sc.finite, elem.scale_shift)

    def from_bytes(self, scales_u8: jax.Array) -> jax.Array:
        return lax.bitcast_convert_type(scales_u8, jnp.float8_e8m0fnu)

    def decode(self, stored: jax.Array, elem: ElemType, tensor: jax.Array | None = None) -> Scales:
        exp, finite = e8m0_decode(stored, elem.scale_shift)
        return Scales(exp, None, None, finite)

    def divide(self, x: jax.Array, sc: Scales, elem: ElemType, may_overflow: bool = False) -> jax.Array:
        """x in the element domain (exact: powers of two)."""
        return divide(x, sc, self.dtype, may_overflow)

    def multiply(self, values: jax.Array, sc: Scales, elem: ElemType, may_overflow: bool = False) -> jax.Array:
        """Element-domain values back in x's domain (NaN for non-finite blocks)."""
        return multiply(values, sc, may_overflow)


# --------------------------------------------------------------------------------------------- float scales
def tensor_scale_fp32(amax_tensor: jax.Array, qmax_total: float) -> jax.Array:
    """FP32 second-level scale g = amax / qmax_total (NV: Qmax * 448); 1 for an all-zero tensor.

    Clamped below at the smallest normal float32 so that a tiny tensor never gets a flushed (zero) g.
    """
    g = div_exact(amax_tensor, jnp.float32(qmax_total))
    return jnp.where(amax_tensor > 0, jnp.maximum(g, F32_MIN_NORMAL), 1.0).astype(jnp.float32)


def tensor_scale_pow2(amax_tensor: jax.Array, qmax_total: float) -> jax.Array:
    """Power-of-two second-level scale: the smallest 2^e >= amax / qmax_total (the ceil rule; normal float32);
    1 for an all-zero tensor."""
    e = jnp.clip(pow2_exponent(amax_tensor, qmax_total, "ceil"), -126, 127)
    return jnp.where(amax_tensor > 0, pow2(e), 1.0).astype(jnp.float32)


def grid_block_scale(
    amax_block: jax.Array, g: jax.Array | None, elem: ElemType, grid: FPElem, qmax: float | None = None
) -> jax.Array:
    """Block scale = grid_RNE_saturating(amax / Qmax / g) as float32 (g None: amax / Qmax; Qmax: `qmax`, default
    the element's max); 0 for a zero or underflowing block, NaN for a block holding NaN/Inf."""
    # Two correctly rounded divisions: XLA rewrites (a / b) / c into a / (b * c), which rounds differently; the
    # max(., 0) (a no-op for amax >= 0, NaN kept) hides the inner divide. Plain ops, so Pallas kernels lower it too.
    s = div_exact(amax_block, jnp.float32(elem.max if qmax is None else qmax))
    if g is not None:
        s = div_exact(jnp.maximum(s, 0.0), g)
    # Rounded on bits, not by a float32 -> float8 -> float32 cast pair: XLA:GPU removes such pairs (excess
    # precision), which left unrounded scales on an H100 (2026-11-26). round_fp saturates at max as satfinite.
    return jnp.where(jnp.isfinite(amax_block), round_fp(s, grid), jnp.nan)


def fp32_scale(amax: jax.Array, elem: ElemType, scale_dtype: str = "float32", qmax: float | None = None) -> jax.Array:
    """Unrounded scale amax / Qmax (paper Eq. 7) in `scale_dtype`, returned as float32; at least the smallest
    normal float32 for a non-zero block, because XLA flushes a subnormal scale to zero, which would zero a block
    of normal values (such a block then uses fewer codes instead). `qmax`: the value amax maps to (default
    the element's max)."""
    q = jnp.float32(elem.max if qmax is None else qmax)
    if scale_dtype == "bfloat16":
        s = round_bf16(div_exact(round_bf16_satfinite(amax), round_bf16(q)))
    else:
        s = div_exact(amax, q)
    return jnp.where(amax > 0, jnp.maximum(s, F32_MIN_NORMAL), s)


def finite_tensor_amax(amax_blocks: jax.Array) -> jax.Array:
    """The tensor amax behind a second-level scale: the largest finite block amax (NaN/Inf blocks left out;
    0 for an empty array, whose tensor scale is then 1)."""
    return jnp.max(jnp.where(jnp.isfinite(amax_blocks), amax_blocks, 0.0), initial=0.0)


# --------------------------------------------------------------------------------------------- peer numerics
# Each peer's NVFP4 arithmetic, one float32 operation of its source at a time, each correctly rounded (IEEE),
# in its order. Arguments: amax (block amaxes), t (the stored second level, None for a single-level scale),
# s (block scales), qmax (the element's max), total (Qmax * 448, what a tensor scale divides the tensor amax
# by). div_exact keeps every division a correctly rounded one (XLA:CPU would turn x / broadcast(d) into
# x * (1 / d)); max(., 0), a no-op on these non-negative values, hides an inner quotient from XLA's rewrite of
# (a / b) / c into a / (b * c). Block scales are rounded on bits (round_fp, RNE, saturating at 448): XLA:GPU
# removes float32 -> float8 -> float32 cast pairs.
_TORCHAO_MIN_G = 2.0**-120  # keeps torchao's reciprocal fl(1 / g) / s (s >= 2^-6) finite: x * Inf would be NaN


def _torchao_tensor(amax_t: jax.Array, total: float) -> jax.Array:
    """torchao per_tensor_amax_to_scale: g = fl(amax / total); 1 for an all-zero tensor (torchao: 0, then NaN),
    at least 2^-120 (torchao: a subnormal or flushed g, whose reciprocal overflows)."""
    g = div_exact(amax_t, jnp.float32(total))
    return jnp.where(amax_t > 0, jnp.maximum(g, _TORCHAO_MIN_G), 1.0).astype(jnp.float32)


def _torchao_block(amax: jax.Array, t: jax.Array | None, qmax: float, total: float) -> jax.Array:
    """torchao nvfp4_quantize: E4M3(clamp(fl(fl(amax / Qmax) / g), 2^-6, 448)): the lower clamp is E4M3's
    smallest normal, so zero and underflowing blocks get 2^-6 instead of 0."""
    s = div_exact(amax, jnp.float32(qmax))
    if t is not None:
        s = div_exact(jnp.maximum(s, 0.0), t)
    return round_fp(jnp.maximum(s, E4M3.min_normal), E4M3)


def _torchao_divide(x: jax.Array, s: jax.Array, t: jax.Array | None, total: float) -> jax.Array:
    """torchao: x * fl(fl(1 / g) / s), a reciprocal multiply (single level: x * fl(1 / s))."""
    one = jnp.float32(1.0)
    r = div_exact(one, s) if t is None else div_exact(jnp.maximum(div_exact(one, t), 0.0), s)
    return x * r


def _torchao_multiply(values: jax.Array, s: jax.Array, t: jax.Array | None, total: float) -> jax.Array:
    """torchao dequantize: values * fl(g * s) (single level: values * s)."""
    return values * (s if t is None else t * s)


def _te_tensor(amax_t: jax.Array, total: float) -> jax.Array:
    """TransformerEngine keeps the tensor amax itself (ScaledTensor.amax) and derives both scales from it."""
    return amax_t.astype(jnp.float32)


def _te_encode_scale(t: jax.Array, total: float) -> jax.Array:
    """TE's tensor_scale = min(fl(total / amax), float32 max), 1 where that is 0 (an Inf amax)."""
    enc = jnp.minimum(div_exact(jnp.float32(total), t), F32_MAX)
    return jnp.where(enc == 0, 1.0, enc).astype(jnp.float32)


def _te_block(amax: jax.Array, t: jax.Array | None, qmax: float, total: float) -> jax.Array:
    """TE block_scale_inv = E4M3(min(fl(fl(amax / Qmax) * tensor_scale), float32 max)), saturating at 448; no
    lower clamp, so zero and underflowing blocks store 0."""
    assert t is not None  # FloatScale: TE numerics have a tensor scale
    bsi = jnp.maximum(div_exact(amax, jnp.float32(qmax)), 0.0) * _te_encode_scale(t, total)
    return round_fp(jnp.minimum(bsi, F32_MAX), E4M3)


def _te_divide(x: jax.Array, s: jax.Array, t: jax.Array | None, total: float) -> jax.Array:
    """TE: x * min(fl(1 / fl(s * fl(1 / tensor_scale))), float32 max) (a zero scale gives x * float32 max)."""
    assert t is not None  # FloatScale: TE numerics have a tensor scale
    one = jnp.float32(1.0)
    inv_t = div_exact(one, _te_encode_scale(t, total))
    return x * jnp.minimum(div_exact(one, s * inv_t), F32_MAX)


def _te_multiply(values: jax.Array, s: jax.Array, t: jax.Array | None, total: float) -> jax.Array:
    """TE's NVFP4 dequantizer: values * fl(s * fl(amax / total))."""
    assert t is not None  # FloatScale: TE numerics have a tensor scale
    return values * (s * div_exact(t, jnp.float32(total)))


@dataclass(frozen=True)
class PeerNumerics:
    """A peer's float32 arithmetic of an E4M3 block scale (with an FP32 tensor scale, or without one where the
    peer has that): the stored second level from the tensor amax, block scales, x into the element domain
    (before rounding onto the element grid) and grid values back."""

    source: str  # the peer code it follows
    tensors: tuple[str, ...]  # the tensor_scale kinds the peer has
    tensor: Callable[[jax.Array, float], jax.Array]
    block: Callable[[jax.Array, jax.Array | None, float, float], jax.Array]
    divide: Callable[[jax.Array, jax.Array, jax.Array | None, float], jax.Array]
    multiply: Callable[[jax.Array, jax.Array, jax.Array | None, float], jax.Array]


PEER_NUMERICS = {
    "torchao": PeerNumerics(
        "torchao 0.18 prototype/mx_formats/nvfp4_tensor.py (nvfp4_quantize, NVFP4Tensor.dequantize)",
        ("fp32", "none"),
        _torchao_tensor,
        _torchao_block,
        _torchao_divide,
        _torchao_multiply,
    ),
    "te": PeerNumerics(
        "TransformerEngine transformer_engine/jax/quantize/quantizer.py (NVFP4Quantizer._quantize_func) and "
        "dequantizer.py (NVFP4Dequantizer)",
        ("fp32",),
        _te_tensor,
        _te_block,
        _te_divide,
        _te_multiply,
    ),
}

_GRIDS = {"e4m3": E4M3, "ue5m3": UE5M3, "fp32": None}
_STORAGE = {"e4m3": jnp.float8_e4m3fn, "ue5m3": jnp.float32}


@dataclass(frozen=True)
class FloatScale:
    """A block scale amax / Qmax (/ g) rounded onto a float grid: "e4m3" (RNE, saturating at 448, stored as
    float8_e4m3fn), "ue5m3" (unsigned E5M3, bias 15, subnormals, no specials; XLA has no such dtype and the
    format has no NaN code, so its values are held in float32, NaN for blocks holding NaN/Inf) or "fp32"
    (unrounded; dtype "bfloat16": computed and applied in bf16, the paper's BF16 scale).

    tensor: the second level g: "fp32" (g = tensor amax / (Qmax * bound), NVFP4), "ue8m0" (the smallest power
    of two >= that), "none". bound: the largest block scale g maps the tensor amax to (default the grid max,
    448 for E4M3). target: the element value a block's amax maps to (default the element's max, Qmax; Four
    Over Six's second candidate maps it to 4 on the E2M1 grid); the tensor scale always uses Qmax * bound.
    A block whose amax / target / g falls outside the grid saturates or underflows (scale 0).
    numerics: "exact" (the library's contract) or a peer's NVFP4 arithmetic, "torchao" or "te"
    (PEER_NUMERICS; E4M3 block scales with an FP32 tensor scale, torchao also without one).
    """

    kind: str = "e4m3"
    dtype: str = "float32"
    tensor: str = "none"
    bound: float | None = None
    target: float | None = None
    numerics: str = "exact"

    def __post_init__(self) -> None:
        check_choice("scale", self.kind, tuple(_GRIDS))
        check_choice("scale_dtype", self.dtype, SCALE_DTYPES)
        check_choice("tensor_scale", self.tensor, TENSOR_SCALES)
        if self.kind == "fp32" and self.tensor != "none":
            raise ValueError("an unrounded FP32 block scale takes no tensor scale (tensor_scale='none')")
        if self.dtype != "float32" and self.kind != "fp32":
            raise ValueError(f"scale_dtype='bfloat16' applies to FP32 and UE8M0 scales, not {self.kind}")
        for what, v in (("bound", self.bound), ("target", self.target)):
            if v is not None and not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"{what} must be a positive finite number or None, got {v!r}")
        check_choice("numerics", self.numerics, NUMERICS)
        peer = self.peer
        if peer is not None and (
            self.kind != "e4m3" or self.tensor not in peer.tensors or (self.bound, self.target) != (None, None)
        ):
            kinds = " or ".join(f"tensor_scale={k}" for k in peer.tensors)
            raise ValueError(
                f"numerics={self.numerics!r} reproduces {peer.source}: an E4M3 block scale with {kinds}, no bound "
                f"or target; got scale={self.kind}, tensor_scale={self.tensor}, bound={self.bound}, "
                f"target={self.target}"
            )

    @property
    def name(self) -> str:
        return self.kind

    @property
    def grid(self) -> FPElem | None:
        return _GRIDS[self.kind]

    @property
    def bits(self) -> int:
        """Bits per stored block scale in the format (UE5M3: 8, although held in float32 here)."""
        return 8 if self.grid is not None else 8 * jnp.dtype(self.dtype).itemsize

    @property
    def storage_dtype(self) -> DTypeLike:
        return _STORAGE.get(self.kind, jnp.dtype(self.dtype))

    @property
    def byte_dtype(self) -> DTypeLike:
        return jnp.uint8 if self.kind == "e4m3" else self.storage_dtype

    @property
    def has_tensor_scale(self) -> bool:
        return self.tensor != "none"

    @property
    def peer(self) -> PeerNumerics | None:
        """The peer arithmetic this rule runs, None for the exact contract."""
        return PEER_NUMERICS.get(self.numerics)

    def check(self, elem: ElemType) -> None:
        """ValueError if the target lies above the element's max (its blocks would clip), or if peer numerics
        meet an element grid outside the NV family (Qmax < 2, where s * g may overflow, or a zero point)."""
        if self.target is not None and self.target > elem.max:
            raise ValueError(f"target {self.target} exceeds the largest {elem.name} value {elem.max}")
        if self.peer is not None and (elem.max < 2 or getattr(elem, "zero_point", False)):
            raise ValueError(
                f"numerics={self.numerics!r} applies to NV element grids (symmetric, Qmax >= 2); {elem.name} has "
                f"Qmax {elem.max}{' and a zero point' if getattr(elem, 'zero_point', False) else ''}"
            )

    def _total(self, elem: ElemType) -> float:
        """What the tensor scale divides the tensor amax by: Qmax * bound (bound: default the grid's max)."""
        assert self.grid is not None  # only grid scales have a second level
        return elem.max * (self.grid.max if self.bound is None else self.bound)

    def tensor_scale(self, amax_blocks: jax.Array, elem: ElemType) -> jax.Array | None:
        """The second-level scale g from the blocks' amaxes (None without a second level)."""
        if not self.has_tensor_scale:
            return None
        return self.tensor_scale_of(finite_tensor_amax(amax_blocks), elem)

    def tensor_scale_of(self, amax_tensor: jax.Array, elem: ElemType) -> jax.Array | None:
        """The second-level scale g of a tensor with this amax (a finite float32 scalar >= 0), None without one."""
        if not self.has_tensor_scale:
            return None
        peer = self.peer
        make = tensor_scale_fp32 if self.tensor == "fp32" else tensor_scale_pow2
        return (make if peer is None else peer.tensor)(amax_tensor, self._total(elem))

    def block_scales(self, amax: jax.Array, elem: ElemType, g: jax.Array | None = None) -> Scales:
        if self.grid is None:
            return Scales(None, fp32_scale(amax, elem, self.dtype, self.target), None, jnp.isfinite(amax))
        g = self.tensor_scale(amax, elem) if g is None else g
        peer = self.peer
        if peer is None:
            return Scales(None, grid_block_scale(amax, g, elem, self.grid, self.target), g, jnp.isfinite(amax))
        s = peer.block(amax, g, elem.max, self._total(elem))
        return Scales(None, jnp.where(jnp.isfinite(amax), s, jnp.nan), g, jnp.isfinite(amax))

    def encode(self, sc: Scales, elem: ElemType) -> jax.Array:
        assert sc.value is not None  # float scales carry their values
        if self.kind == "e4m3":
            return sc.value.astype(jnp.float8_e4m3fn)  # already on the E4M3 grid: an exact cast (NaN kept)
        return jnp.where(sc.finite, sc.value, jnp.nan).astype(self.storage_dtype)

    def scale_bytes(self, sc: Scales, elem: ElemType) -> jax.Array:
        if self.kind == "e4m3":
            return lax.bitcast_convert_type(self.encode(sc, elem), jnp.uint8)
        return self.encode(sc, elem)

    def from_bytes(self, scales_bytes: jax.Array) -> jax.Array:
        if self.kind == "e4m3":
            return lax.bitcast_convert_type(scales_bytes, jnp.float8_e4m3fn)
        return scales_bytes

    def decode(self, stored: jax.Array, elem: ElemType, tensor: jax.Array | None = None) -> Scales:
        s = stored.astype(jnp.float32)
        return Scales(None, s, tensor if self.has_tensor_scale else None, jnp.isfinite(s))

    def divide(self, x: jax.Array, sc: Scales, elem: ElemType, may_overflow: bool = False) -> jax.Array:
        """x in the element domain, before rounding onto the grid (exact: x / (s * g) correctly rounded)."""
        peer = self.peer
        if peer is None:
            return divide(x, sc, self.dtype, may_overflow)
        assert sc.value is not None  # float scales carry their values
        return peer.divide(x, sc.value, sc.tensor, self._total(elem))

    def multiply(self, values: jax.Array, sc: Scales, elem: ElemType, may_overflow: bool = False) -> jax.Array:
        """Element-domain values back in x's domain (NaN for non-finite blocks)."""
        peer = self.peer
        if peer is None:
            return multiply(values, sc, may_overflow)
        assert sc.value is not None  # float scales carry their values
        y = peer.multiply(values, sc.value, sc.tensor, self._total(elem))
        return jnp.where(sc.finite, y, jnp.nan)


ScaleRule = UE8M0 | FloatScale


def rule(
    scale: str, rounding: str = "ceil", dtype: str = "float32", tensor: str | None = None, numerics: str = "exact"
) -> ScaleRule:
    """The scale rule named `scale` ("ue8m0", "e4m3", "ue5m3", "fp32") with its parameters; tensor None: the
    default second level (FP32 for E4M3, none otherwise); numerics: whose arithmetic (FloatScale)."""
    check_choice("numerics", numerics, NUMERICS)
    if scale == "ue8m0":
        if tensor not in (None, "none"):
            raise ValueError("a UE8M0 block scale takes no tensor scale (tensor_scale='none')")
        _check_exact(numerics, "a UE8M0")
        return UE8M0(rounding, dtype)
    if rounding != "ceil":
        raise ValueError(f"scale_rounding applies to UE8M0 scales only; {scale} scales round to nearest")
    return FloatScale(scale, dtype, default_tensor_scale(scale) if tensor is None else tensor, numerics=numerics)


def with_numerics(r: ScaleRule, numerics: str) -> ScaleRule:
    """The rule `r` running `numerics` (ValueError where that arithmetic does not apply)."""
    check_choice("numerics", numerics, NUMERICS)
    if isinstance(r, UE8M0):
        _check_exact(numerics, "a UE8M0")
        return r
    return dataclasses.replace(r, numerics=numerics)


def _check_exact(numerics: str, what: str) -> None:
    if numerics != "exact":
        raise ValueError(
            f"numerics={numerics!r} reproduces a peer's NVFP4 arithmetic and applies to E4M3 block scales; "
            f"{what} block scale has the exact arithmetic only"
        )


def default_tensor_scale(scale: str) -> str:
    """The second level a scale type gets unless told otherwise: FP32 for E4M3 (NVFP4), none otherwise."""
    return "fp32" if scale == "e4m3" else "none"


# --------------------------------------------------------------------------------------------- applying scales
def divide(x: jax.Array, sc: Scales, dtype: str = "float32", may_overflow: bool = False) -> jax.Array:
    """x / scale in float32 (exact for powers of two, correctly rounded otherwise; 0 where the scale is 0), or
    in bf16 if asked. may_overflow: the block scale times the tensor scale can pass float32's max (element
    grids with Qmax < 2); where it does, x is divided by the two in turn."""
    if dtype == "bfloat16":
        x = round_bf16_satfinite(x)
    if sc.exp is not None:
        return mul_pow2(x, -sc.exp)
    assert sc.value is not None  # Scales hold either exponents or values
    divisor = sc.value if sc.tensor is None else sc.value * sc.tensor
    v = jnp.where(divisor > 0, div_exact(x, divisor), jnp.copysign(0.0, x))
    if may_overflow and sc.tensor is not None:
        by_g = lax.optimization_barrier(div_exact(x, sc.tensor))  # else XLA rewrites (x / g) / s as x / (g * s)
        v = jnp.where(jnp.isinf(divisor), div_exact(by_g, sc.value), v)
    return round_bf16(v) if dtype == "bfloat16" else v


def multiply(values: jax.Array, sc: Scales, may_overflow: bool = False) -> jax.Array:
    """values x scale in float32; NaN for blocks that held NaN or Inf. may_overflow: as for `divide`; where the
    product of the two scales passes float32's max, the values are multiplied by them in turn."""
    if sc.exp is not None:
        y = mul_pow2(values, sc.exp)
    else:
        assert sc.value is not None  # Scales hold either exponents or values
        if sc.tensor is None:
            y = values * sc.value
        else:
            both = sc.value * sc.tensor
            y = values * both
            if may_overflow:
                by_s = lax.optimization_barrier(values * sc.value)  # kept apart from the product of the scales
                y = jnp.where(jnp.isinf(both), by_s * sc.tensor, y)
    return jnp.where(sc.finite, y, jnp.nan)


def scales_may_overflow(fmt: Any) -> bool:  # fmt: a Format (lowbit_jax.formats imports this module)
    """Whether a format's block scale times its tensor scale can pass float32's max: s * g is about
    amax / Qmax (rounded up to at most 2x by a UE8M0 tensor scale), so only element grids with Qmax < 2 can."""
    formats = fmt.candidates if fmt.is_adaptive else (fmt,)
    return any(f.scale_rule.has_tensor_scale and f.elem.max < 2 for f in formats)

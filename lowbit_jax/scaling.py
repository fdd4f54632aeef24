"""Scale rules as objects: a UE8M0 power of two, or a float block scale (E4M3, UE5M3, FP32) with an optional
second level (a tensor scale: FP32, a power of two, or none).

Every rule has `name`, `bits` (storage per block scale), `storage_dtype` and the same four methods:
  block_scales(amax, elem, g=None) -> Scales   the scales of blocks with these amaxes (float32, >= 0, NaN/Inf
                                               for blocks holding them); g: the second-level scale, computed
                                               from these amaxes when the rule has one and g is None
  encode(sc, elem) -> stored scales            (float8_e8m0fnu, float8_e4m3fn, float32 (UE5M3 values), bf16)
  scale_bytes(sc, elem) -> bytes               the same as uint8 bit patterns where 8-bit (kernel outputs)
  decode(stored, elem, tensor) -> Scales       the inverse of encode
`divide` and `multiply` apply Scales to element-domain values. The formulas (paper Eq. 7-9, the OCP and
torchao UE8M0 rules, the NV two-level rule) are written once, in the functions below the classes' helpers.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
from jax import lax

from lowbit_jax._types import DTypeLike
from lowbit_jax.elements import ElemType, FPElem, check_choice, fp
from lowbit_jax.rounding import (
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

E4M3 = fp(4, 3)  # OCP E4M3 ("fn": max 448), the NV block-scale type
UE5M3 = FPElem(5, 3, "none", signed=False)  # unsigned, bias 15, subnormals, no specials: max 122880, min 2^-17


class Scales(NamedTuple):
    """Per-block scales in the keepdims layout of a block statistic (a pytree).

    exp: power-of-two scales, scale = 2^exp (int32), else None;  value: other scales, the block scale as
    float32, else None;  tensor: the second-level scale g (float32 scalar) or None;  finite: blocks free of
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
    """

    kind: str = "e4m3"
    dtype: str = "float32"
    tensor: str = "none"
    bound: float | None = None
    target: float | None = None

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

    def check(self, elem: ElemType) -> None:
        """ValueError if the target lies above the element's max (its blocks would clip)."""
        if self.target is not None and self.target > elem.max:
            raise ValueError(f"target {self.target} exceeds the largest {elem.name} value {elem.max}")

    def tensor_scale(self, amax_blocks: jax.Array, elem: ElemType) -> jax.Array | None:
        """The second-level scale g from the blocks' amaxes (None without a second level)."""
        if not self.has_tensor_scale:
            return None
        assert self.grid is not None  # __post_init__: an FP32 block scale has no second level
        total = elem.max * (self.grid.max if self.bound is None else self.bound)
        make = tensor_scale_fp32 if self.tensor == "fp32" else tensor_scale_pow2
        return make(finite_tensor_amax(amax_blocks), total)

    def block_scales(self, amax: jax.Array, elem: ElemType, g: jax.Array | None = None) -> Scales:
        if self.grid is None:
            return Scales(None, fp32_scale(amax, elem, self.dtype, self.target), None, jnp.isfinite(amax))
        g = self.tensor_scale(amax, elem) if g is None else g
        return Scales(None, grid_block_scale(amax, g, elem, self.grid, self.target), g, jnp.isfinite(amax))

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


ScaleRule = UE8M0 | FloatScale


def rule(scale: str, rounding: str = "ceil", dtype: str = "float32", tensor: str | None = None) -> ScaleRule:
    """The scale rule named `scale` ("ue8m0", "e4m3", "ue5m3", "fp32") with its parameters; tensor None: the
    default second level (FP32 for E4M3, none otherwise)."""
    if scale == "ue8m0":
        if tensor not in (None, "none"):
            raise ValueError("a UE8M0 block scale takes no tensor scale (tensor_scale='none')")
        return UE8M0(rounding, dtype)
    if rounding != "ceil":
        raise ValueError(f"scale_rounding applies to UE8M0 scales only; {scale} scales round to nearest")
    return FloatScale(scale, dtype, default_tensor_scale(scale) if tensor is None else tensor)


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

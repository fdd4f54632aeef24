"""Block scales: UE8M0 powers of two (ceil / floor / round), NV two-level E4M3 x FP32, and unrounded FP32.

Every rule takes the block amax (float32, >= 0, NaN/Inf for blocks holding them) and returns what both the
quantizer and the dequantizer need. Formulas: paper Eq. 7-9 and NOTES.md section 2; DESIGN.md section 4.
"""

from __future__ import annotations

import math
import struct

import jax.numpy as jnp
from jax import lax

from lowbit_jax.formats import E4M3_SCALE_MAX, ElemType, fp
from lowbit_jax.rounding import F32_MIN_NORMAL, div_exact, f32_exponent, f32_mantissa, round_bf16, round_fp

_E4M3 = fp(4, 3)  # OCP E4M3 ("fn": max 448), the NV block-scale type

E8M0_MIN_EXP, E8M0_MAX_EXP, E8M0_NAN = -127, 127, 255


def _split_f32(v: float) -> tuple[int, int]:
    """(unbiased exponent, 23 mantissa bits) of a positive normal float32 constant."""
    bits = struct.unpack("<I", struct.pack("<f", v))[0]
    return ((bits >> 23) & 0xFF) - 127, bits & ((1 << 23) - 1)


def _sqrt2_thresholds(q_sig: int) -> tuple[int, int]:
    """Smallest 24-bit significands A with A^2 >= 2 Q^2 and with 2 A^2 >= Q^2 (exact integer arithmetic)."""
    up = math.isqrt(2 * q_sig * q_sig - 1) + 1
    down = math.isqrt((q_sig * q_sig - 1) // 2) + 1
    return up, down


def ue8m0_exponent(amax: jnp.ndarray, elem: ElemType, rule: str) -> jnp.ndarray:
    """Scale exponent e (int32, clamped to [-127, 127]) of the UE8M0 scale 2^e for a block with this amax.

    ceil:  the smallest e with amax <= Qmax * 2^e (paper Eq. 9, "RCEIL"): no element ever clips.
    floor: floor(log2 amax) - floor(log2 Qmax) (OCP MX v1.0 example; the block maximum may saturate).
    round: round(log2(amax / Qmax)) (the authors' "round" option).
    All three are decided on exponent and mantissa bits, never with a floating-point log2.
    """
    q_exp, q_man = _split_f32(elem.max)
    a_exp, a_man = f32_exponent(amax), f32_mantissa(amax)
    e = a_exp - q_exp
    if rule == "ceil":
        e = e + (a_man > q_man).astype(jnp.int32)
    elif rule == "round":
        up, down = _sqrt2_thresholds(q_man | 1 << 23)
        a_sig = a_man | 1 << 23
        e = e + (a_sig >= up).astype(jnp.int32) - (a_sig < down).astype(jnp.int32)
    elif rule != "floor":
        raise ValueError(f"unknown scale_rounding {rule!r}")
    return jnp.clip(e, E8M0_MIN_EXP, E8M0_MAX_EXP).astype(jnp.int32)


def ue8m0_exponent_bf16(amax: jnp.ndarray, elem: ElemType, rule: str) -> jnp.ndarray:
    """The authors' BF16 arithmetic: s = amax / Qmax and log2(s) in bfloat16, then ceil/floor/round.

    A negative control: log2 in bf16 can land on an integer and undo the ceil (NOTES.md section 11).
    """
    s = round_bf16(div_exact(round_bf16(amax), round_bf16(jnp.float32(elem.max))))
    log2_s = round_bf16(jnp.log2(s))
    op = {"ceil": jnp.ceil, "floor": jnp.floor, "round": jnp.round}[rule]
    e = jnp.where(s > 0, op(log2_s).astype(jnp.float32), E8M0_MIN_EXP)
    return jnp.clip(e, E8M0_MIN_EXP, E8M0_MAX_EXP).astype(jnp.int32)


def e8m0_encode(e: jnp.ndarray, finite: jnp.ndarray) -> jnp.ndarray:
    """Scale exponents -> float8_e8m0fnu scales, built from bits (0xFF = NaN for non-finite blocks)."""
    code = jnp.where(finite, e + 127, E8M0_NAN).astype(jnp.uint8)
    return lax.bitcast_convert_type(code, jnp.float8_e8m0fnu)


def e8m0_decode(scales_e8m0: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """float8_e8m0fnu scales -> (exponent int32, finite mask)."""
    code = lax.bitcast_convert_type(scales_e8m0, jnp.uint8).astype(jnp.int32)
    return code - 127, code != E8M0_NAN


def nv_tensor_scale(amax_tensor: jnp.ndarray, elem: ElemType) -> jnp.ndarray:
    """FP32 second-level scale g = amax / (Qmax * 448); 1 for an all-zero tensor.

    Clamped below at the smallest normal float32 so that a tiny tensor never gets a flushed (zero) g.
    """
    g = div_exact(amax_tensor, jnp.float32(elem.max * E4M3_SCALE_MAX))
    return jnp.where(amax_tensor > 0, jnp.maximum(g, F32_MIN_NORMAL), 1.0).astype(jnp.float32)


def nv_block_scale(amax_block: jnp.ndarray, g: jnp.ndarray, elem: ElemType) -> jnp.ndarray:
    """E4M3 block scale = E4M3_RNE_saturating(amax / Qmax / g) as float32 (0 for a zero or underflowing block)."""
    # Two correctly rounded divisions: XLA rewrites (a / b) / c into a / (b * c), which rounds differently; the
    # max(., 0) (a no-op for amax >= 0, NaN kept) hides the inner divide. Plain ops, so Pallas kernels lower it too.
    s = div_exact(jnp.maximum(div_exact(amax_block, jnp.float32(elem.max)), 0.0), g)
    # Rounded on bits, not by a float32 -> float8 -> float32 cast pair: XLA:GPU removes such pairs (excess
    # precision), which left unrounded scales on an H100 (2026-11-26). round_fp saturates at 448 as satfinite.
    s_e4m3 = round_fp(s, _E4M3)
    return jnp.where(jnp.isfinite(amax_block), s_e4m3, jnp.nan)


def fp32_scale(amax: jnp.ndarray, elem: ElemType, scale_dtype: str = "float32") -> jnp.ndarray:
    """Unrounded scale amax / Qmax (paper Eq. 7) in `scale_dtype`, returned as float32."""
    if scale_dtype == "bfloat16":
        return round_bf16(div_exact(round_bf16(amax), round_bf16(jnp.float32(elem.max))))
    return div_exact(amax, jnp.float32(elem.max))

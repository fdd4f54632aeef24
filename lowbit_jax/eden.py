"""MS-EDEN (Quartet II, arXiv 2601.22813): NVFP4 quantization of backward-GEMM operands whose mean over random
rotations is the operand, up to a small bias along it (docs/rounding.md: -6e-4 of |x|^2, against RTN's -4.5e-3).

The input is already rotated: x_rot = x R, R = diag(random signs) H / sqrt(h) a random Hadamard rotation of size
h along the GEMM's contracting axis. The rotation belongs to the GEMM, not to this quantizer: both operands of a
backward GEMM are rotated with the same R (lowbit_jax.hadamard.rotate with one key), so their product is kept
(x R)(w R)^T = x w^T, and drawing a new R for every step is what makes the estimator unbiased over rotations.
With Qmax = 6 (E2M1), v = Qmax / scale_override and, along `axis`, blocks of `fmt.block_size` (16) elements
inside correction groups of `group` (= h) elements, in float32:
  1. tensor scale   s_t = amax / scale_bound / v  (amax: the tensor's max |x_rot|; 1 for an all-zero tensor);
  2. block scale    s_b = E4M3_RNE(amax_block / v / s_t), saturating at 448; a scale that rounds to 0 becomes 1;
  3. elements       q = RTN_E2M1(x_rot / (s_b s_t)), saturating at 6 (ties: see below);
  4. correction     S = <xs, xs> / <xs, q> over each group, xs = x_rot / (s_b s_t) the scaled elements
                    (S = 1 where <xs, q> = 0, i.e. a group that rounds to all zeros);
  5. scale SR       the corrected scale c = s_b S is rounded to one of its two E4M3 neighbours d <= c < u, up with
                    probability (c - d) / (u - d), so E[scale] = c (c >= 448 gives 448);
  6. output         y = (q scale) s_t, in x_rot's dtype (saturating, as lb.fake_quant).
EDEN (Vargaftik et al., arXiv 2108.08842) rescales a rotated, quantized vector by <x, x> / <x, q(x)>, which keeps
its projection on x exact, so that the randomness of the rotation leaves no bias; MS-EDEN applies the factor to
the group's E4M3 block scales and makes the scale's rounding stochastic, so the correction survives E4M3 storage.
The factor is taken in the scaled domain with blocks of different scales, so the projection identity holds
only approximately (docs/rounding.md reports the bias measured here).

Constants (Quartet II's backward pass):
  scale_bound = 255.99 (QUARTET2_SCALE_BOUND): the block scale the tensor amax maps to, in place of E4M3's 448.
      The largest block scale is then 256 after E4M3 rounding, leaving a factor 448 / 256 = 1.75 of headroom for
      S > 1 and for the scale's upper neighbour (288 for 256) before E4M3 saturates.
  scale_override = (17 / 16) * 0.93 (QUARTET2_BACKWARD_OVERRIDE): divides Qmax, so a block's amax maps to
      v = 6 / 0.988 = 6.07 before the scale's E4M3 rounding. The factor 17 / 16 alone (v = 5.65) is the headroom
      that keeps a block maximum from clipping at 6 however the E4M3 rounding lowers its scale (by at most a
      factor 16 / 17); the 0.93 is Quartet II's tuned setting for E4M3 scales (the MSE-optimal override of their
      unbiasedness notebook), under which block maxima may map slightly above 6 and clip, a loss of magnitude the
      correction S restores. scale_override=1 maps a block's amax to 6.

Ties (step 3): ties="away" (default) is the Triton kernel `eden_1x16s_fp4_kernel` of Quartet II's
src/models/quantization/schemes/quartet_2.py, whose thresholds 0.25, 0.75, 1.25, 1.75, 2.5, 3.5 and 5 round up;
ties="even" is round-to-nearest-even (this library's element rounding, and the cvt rounding of Quartet II's CUDA
kernel kernels/csrc/round_eden_fp4.cu, which also multiplies by a reciprocal scale and rounds the corrected scale
with 16 noise bits; neither is reproduced here). An exact +0 element stays +0 (the Triton kernel writes -0).

Arithmetic: every division is correctly rounded (rounding.div_exact), E4M3 rounding and the scale's neighbours
are computed on the float32 bits (the neighbours and the probability exactly), the output is the correctly
rounded product q * scale * s_t (q * scale is exact). The two group sums are float32 additions in a fixed order,
a pairwise tree (the group, zero-padded to a power of two, is folded in halves: v[:n/2] + v[n/2:]; the Triton
kernel's tl.sum leaves the order to the compiler), of terms built from exact partial products (`_group_terms`):
XLA contracts a multiplication feeding an addition into an FMA (measured on the CPU: the sum of squares of one
test group came out 1 ulp off a numpy evaluation), and with exact products the FMA and the separate operations
agree, so the sums are the same on every backend. Their rounding moves S by a few ulp. The scale's uniforms are
24-bit (rounding.uniform_from_bits), so P(up) is (c - d) / (u - d) rounded up to a multiple of 2^-24.

Non-finite input: a block holding NaN or Inf comes back NaN (the library's contract) and is left out of its
group's sums and of the tensor amax; the other blocks of the group keep finite values. A zero group gives zeros.
A tensor scale below the smallest normal float32 (amax under about 2^-115) is raised to it, as XLA flushes it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np

from lowbit_jax import blocks, codec, rounding, scaling
from lowbit_jax._types import ArrayLike, Key
from lowbit_jax.elements import FPElem
from lowbit_jax.formats import Format, get_format

QUARTET2_SCALE_BOUND = 255.99
QUARTET2_BACKWARD_OVERRIDE = (17 / 16) * 0.93
TIES = ("away", "even")
_E4M3 = scaling.E4M3
_BELOW_HALF = np.float32(np.nextafter(np.float32(0.5), np.float32(0.0)))  # u < frac iff frac >= 1/2: ties away


class EdenParts(NamedTuple):
    """MS-EDEN's pieces, in x_rot's layout: `values` the E2M1 grid values q (x's shape), `scales` the
    stochastically rounded E4M3 block scales and `rtn_scales` the E4M3 scales before correction (x's shape with
    the axis divided by the block size), `correction` S (the axis divided by the group size), `tensor_scale` s_t
    (scalar); NaN where a block held NaN or Inf. fake_quant = (values * scales) * tensor_scale."""

    values: jax.Array
    scales: jax.Array
    rtn_scales: jax.Array
    correction: jax.Array
    tensor_scale: jax.Array


@dataclasses.dataclass(frozen=True)
class _Config:
    elem: FPElem
    block: int
    group: int
    scale_override: float
    scale_bound: float
    ties: str


# --------------------------------------------------------------------------------------------- arithmetic
def _tree_sum(v: jax.Array) -> jax.Array:
    """Sum over the last axis as a fixed pairwise tree of float32 adds (zero-padded to a power of two)."""
    n = v.shape[-1]
    width = 1 << (n - 1).bit_length()
    if width != n:
        v = jnp.concatenate([v, jnp.zeros(v.shape[:-1] + (width - n,), v.dtype)], axis=-1)
    while v.shape[-1] > 1:
        half = v.shape[-1] // 2
        v = v[..., :half] + v[..., half:]
    return v[..., 0]


def _split(v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """v = hi + lo exactly: hi keeps the top 12 significant bits of v (sign included), lo the rest (<= 12 bits)."""
    hi = jax.lax.bitcast_convert_type(rounding.f32_bits(v) & jnp.uint32(0xFFFFF000), jnp.float32)
    return hi, v - hi


def _group_terms(xs: jax.Array, q: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per element, the terms of <xs, xs> and <xs, q>, from exact partial products only (xs = hi + lo, q has two
    significant bits), so that no FMA contraction can change them: xs q = RN(hi q + lo q), correctly rounded;
    xs^2 = RN(RN(hi^2 + 2 hi lo) + lo^2), RN(xs^2) but for rare double roundings."""
    hi, lo = _split(xs)
    return (hi * hi + (2.0 * hi) * lo) + lo * lo, hi * q + lo * q


def _e4m3_bracket(c: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(d, u, (c - d) / (u - d)) for c >= 0: the E4M3 values d <= c < u next to c, all exact (c - d and the
    division by the power-of-two step are exact); above 448, u is not an E4M3 value (the caller saturates)."""
    step_exp = jnp.maximum(rounding.f32_exponent(c), _E4M3.emin) - _E4M3.man_bits
    down = jnp.floor(c * rounding.pow2(-step_exp)) * rounding.pow2(step_exp)
    return down, down + rounding.pow2(step_exp), (c - down) * rounding.pow2(-step_exp)


def _round_e2m1(xs: jax.Array, elem: FPElem, ties: str) -> jax.Array:
    """Round to nearest on the element grid, saturating: ties away from zero, or to even."""
    if ties == "even":
        return elem.round(xs)
    return elem.round(xs, jnp.asarray(_BELOW_HALF))  # stochastic rounding's u < frac with u just below 1/2


def _val_max(cfg: _Config) -> jax.Array:
    """v = Qmax / scale_override, folded in double precision and rounded once, as Triton folds constexprs."""
    return jnp.float32(cfg.elem.max / cfg.scale_override)


def _tensor_scale(amax: jax.Array, cfg: _Config) -> jax.Array:
    """s_t = amax / bound / v as two correctly rounded divisions (1 for amax 0, at least the smallest normal)."""
    v = _val_max(cfg)
    d = rounding.div_exact(amax, jnp.float32(cfg.scale_bound))
    s = rounding.div_exact(jnp.maximum(d, 0.0), v)  # max(., 0) keeps XLA from merging the two divisions
    return jnp.where(amax > 0, jnp.maximum(s, rounding.F32_MIN_NORMAL), 1.0).astype(jnp.float32)


def _ms_eden_blocks(x_g, u_g, amax, cfg: _Config):
    """MS-EDEN of float32 x_g (..., G, nb, block) with uniforms u_g (..., G, nb, 1): (q, scale, rtn scale, S,
    s_t, finite), scales and finite (..., G, nb, 1), S (..., G, 1, 1)."""
    v = _val_max(cfg)
    amax_b = blocks.amax_along(x_g, x_g.ndim - 1)  # +Inf for blocks holding NaN or Inf
    finite = jnp.isfinite(amax_b)
    s_t = _tensor_scale(scaling.finite_tensor_amax(amax_b) if amax is None else amax, cfg)
    ratio = rounding.div_exact(jnp.maximum(rounding.div_exact(amax_b, v), 0.0), s_t)
    s_b = rounding.round_fp(ratio, _E4M3)  # RNE on the bits, saturating at 448
    s_b = jnp.where(s_b == 0, 1.0, s_b)
    p = s_b * s_t
    xs = jnp.where(p > 0, rounding.div_exact(x_g, p), 0.0)
    q = _round_e2m1(xs, cfg.elem, cfg.ties)
    xs0, q0 = jnp.where(finite, xs, 0.0), jnp.where(finite, q, 0.0)
    sq, cross = _group_terms(xs0, q0)
    lead = x_g.shape[:-2]
    num = _tree_sum(sq.reshape(lead + (cfg.group,)))[..., None, None]
    den = _tree_sum(cross.reshape(lead + (cfg.group,)))[..., None, None]
    corr = jnp.where(den > 0, rounding.div_exact(num, den), 1.0)
    c = s_b * corr
    down, up, prob = _e4m3_bracket(c)
    scale = jnp.where(c >= _E4M3.max, _E4M3.max, jnp.where(u_g < prob, up, down))
    return q, scale, s_b, corr, s_t, finite


def _grouped(x_last: jax.Array, cfg: _Config) -> jax.Array:
    lead, n = x_last.shape[:-1], x_last.shape[-1]
    return x_last.reshape(lead + (n // cfg.group, cfg.group // cfg.block, cfg.block))


def _run(x, u, amax, axis: int, cfg: _Config):
    """_ms_eden_blocks on x (any layout, blocks along `axis`) with u (one uniform per block, x's layout)."""
    x_g = _grouped(jnp.moveaxis(x, axis, -1).astype(jnp.float32), cfg)
    return _ms_eden_blocks(x_g, jnp.moveaxis(u, axis, -1).reshape(x_g.shape[:-1] + (1,)), amax, cfg)


def _back(a: jax.Array, axis: int) -> jax.Array:
    """(..., G, nb, k) -> the layout of x with the axis holding G * nb * k entries."""
    return jnp.moveaxis(a.reshape(a.shape[:-3] + (-1,)), -1, axis)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _parts_jit(x, u, amax, axis: int, cfg: _Config) -> EdenParts:
    q, scale, s_b, corr, s_t, finite = _run(x, u, amax, axis, cfg)
    nan = lambda a: _back(jnp.where(finite, a, jnp.nan), axis)
    return EdenParts(nan(q), nan(scale), nan(s_b), _back(corr, axis), s_t)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _fake_quant(x, u, amax, axis: int, cfg: _Config) -> jax.Array:
    return _fake_quant_jit(x, u, amax, axis, cfg)


@_fake_quant.defjvp
def _fake_quant_jvp(axis, cfg, primals, tangents):
    return _fake_quant(*primals, axis, cfg), tangents[0]  # straight-through, as lb.fake_quant


@functools.partial(jax.jit, static_argnums=(3, 4))
def _fake_quant_jit(x, u, amax, axis: int, cfg: _Config) -> jax.Array:
    q, scale, _, _, s_t, finite = _run(x, u, amax, axis, cfg)
    y = (q * scale) * s_t  # q * scale is exact: one rounding
    return codec.to_output(_back(jnp.where(finite, y, jnp.nan), axis), x.dtype)


# --------------------------------------------------------------------------------------------- checks
def _check_format(fmt: Format | str) -> Format:
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    if not isinstance(fmt, Format):
        raise TypeError(f"fmt must be a Format or a format spec string, got {type(fmt).__name__}")
    rule = fmt.scale_rule
    ok = (
        not fmt.is_adaptive
        and isinstance(fmt.elem, FPElem)
        and (fmt.elem.exp_bits, fmt.elem.man_bits, fmt.elem.signed) == (2, 1, True)
        and isinstance(fmt.block_size, int)
        and isinstance(rule, scaling.FloatScale)
        and rule.kind == "e4m3"
    )
    if not ok:
        raise ValueError(
            f"MS-EDEN quantizes to E2M1 (FP4) elements in 1-D blocks with E4M3 block scales (nvfp4); got {fmt.label}"
        )
    rule = cast(scaling.FloatScale, rule)
    if rule.tensor != "fp32" or rule.bound is not None or rule.target is not None:
        raise ValueError(
            f"{fmt.label}: MS-EDEN sets its own FP32 tensor scale (scale_bound=, scale_override=); pass a format "
            "with the default tensor scale, bound and target, such as 'nvfp4'"
        )
    return fmt


def _check_args(x_rot, fmt, key, uniform, axis, group, scale_override, scale_bound, ties):
    x = jnp.asarray(x_rot)
    if not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == jnp.float64:
        raise TypeError(f"MS-EDEN quantizes float32, bfloat16 and float16 arrays; got dtype {x.dtype}")
    fmt = _check_format(fmt)
    if x.ndim == 0:
        raise ValueError("MS-EDEN quantizes blocks along an axis; got a scalar")
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis!r} is out of range for an array of rank {x.ndim}")
    axis = int(axis) % x.ndim
    block = cast(int, fmt.block_size)
    if isinstance(group, bool) or not isinstance(group, int | np.integer) or group < 1 or group % block:
        raise ValueError(f"group must be a positive multiple of the block size {block}, got {group!r}")
    if x.shape[axis] % group:
        raise ValueError(f"the axis length {x.shape[axis]} is not a multiple of the correction group {group}")
    for name, v, hi in (("scale_override", scale_override, math.inf), ("scale_bound", scale_bound, _E4M3.max)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not (0 < v <= hi and math.isfinite(v)):
            raise ValueError(f"{name} must be a positive finite number{'' if hi == math.inf else ' <= 448'}, got {v!r}")
    if ties not in TIES:
        raise ValueError(f"ties must be one of {list(TIES)}, got {ties!r}")
    if (key is None) == (uniform is None):
        raise ValueError("MS-EDEN rounds its scales stochastically: pass exactly one of key= and uniform=")
    u_shape = x.shape[:axis] + (x.shape[axis] // block,) + x.shape[axis + 1 :]
    if key is not None:
        u = codec.uniform_like(key, u_shape)
    else:
        u = jnp.asarray(uniform, jnp.float32)
        if u.shape != u_shape:
            raise ValueError(f"uniform must have one value per block, shape {u_shape}; got {u.shape}")
    cfg = _Config(fmt.elem, block, int(group), float(scale_override), float(scale_bound), ties)
    return x, u, axis, cfg


# --------------------------------------------------------------------------------------------- public API
def ms_eden_fake_quant(
    x_rot: ArrayLike,
    fmt: Format | str,
    key: Key | None,
    *,
    axis: int = -1,
    group: int = 128,
    scale_override: float = QUARTET2_BACKWARD_OVERRIDE,
    scale_bound: float = QUARTET2_SCALE_BOUND,
    amax: ArrayLike | None = None,
    ties: str = "away",
    uniform: ArrayLike | None = None,
) -> jax.Array:
    """MS-EDEN fake quantization of rotated x_rot in blocks and correction groups along `axis` (module docstring):
    same shape and dtype, in the rotated domain; straight-through gradient. fmt: an E4M3-scaled E2M1 format
    ("nvfp4"); key: the scale SR's randomness, or None with `uniform` (one value in [0, 1) per block, x's shape
    with the axis divided by the block size); amax: the tensor amax to scale by (default max |x_rot|)."""
    x, u, axis, cfg = _check_args(x_rot, fmt, key, uniform, axis, group, scale_override, scale_bound, ties)
    a = None if amax is None else jnp.asarray(amax, jnp.float32)
    return _fake_quant(x, u, a, axis, cfg)


def ms_eden_parts(
    x_rot: ArrayLike,
    fmt: Format | str,
    key: Key | None,
    *,
    axis: int = -1,
    group: int = 128,
    scale_override: float = QUARTET2_BACKWARD_OVERRIDE,
    scale_bound: float = QUARTET2_SCALE_BOUND,
    amax: ArrayLike | None = None,
    ties: str = "away",
    uniform: ArrayLike | None = None,
) -> EdenParts:
    """The pieces of ms_eden_fake_quant (same arguments): grid values, chosen and uncorrected block scales,
    corrections and the tensor scale (EdenParts)."""
    x, u, axis, cfg = _check_args(x_rot, fmt, key, uniform, axis, group, scale_override, scale_bound, ties)
    a = None if amax is None else jnp.asarray(amax, jnp.float32)
    return _parts_jit(x, u, a, axis, cfg)

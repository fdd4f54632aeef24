"""The block quantizer as pure functions: block statistic -> scales -> element domain -> grid, and back.

Data flow: x -> `blocks` lays out blocks (zero-padded) -> block amax (zero-point INT: min and max, zero
included) -> the format's scale rule turns it into scales (and the second level) -> x / scale rounded onto the
element grid (RNE or stochastic, saturating) -> codes; dequantization multiplies back and crops. The same
functions run on a blocked view (`quantize_array`, any layout) and on a kernel tile whose rows are blocks
(the Pallas kernels call `tile_values` and the encoders below), so the kernels' reference is this module.
`fake_quant` values equal `dequantize(quantize(x))` bit for bit.
"""

from __future__ import annotations

import functools
from typing import cast

import jax
import jax.numpy as jnp

from lowbit_jax import blocks, rounding, scaling, selection
from lowbit_jax._types import ArrayLike, Axis, DTypeLike, Key
from lowbit_jax.elements import IntElem
from lowbit_jax.formats import AdaptiveFormat, Format, adaptive_parts, get_format, plain_parts
from lowbit_jax.qarray import QArray
from lowbit_jax.scaling import FloatScale, Scales
from lowbit_jax.sharding import gather_partial_blocks, reshard_like

Stat = jax.Array | tuple[jax.Array, jax.Array]  # a block statistic: amax, or (min, max) for zero-point INT


def block_stat(x_blocks: jax.Array, fmt: Format, axes: tuple[int, ...]) -> Stat:
    """What the scale rule reads, reduced over `axes` (keepdims): amax, or (min, max) for zero-point INT."""
    if getattr(fmt.elem, "zero_point", False):
        return blocks.min_max_along(x_blocks, axes)
    return blocks.amax_along(x_blocks, axes)


def stat_amax(stat: Stat) -> jax.Array:
    """The amax-like input of the scale rule: amax, or the span max - min of zero-point blocks (a finite span
    that overflows float32 saturates to its maximum: the block's extremes then clip, rather than turn NaN)."""
    if not isinstance(stat, tuple):
        return stat
    lo, hi = stat
    span = hi - lo
    return jnp.where(jnp.isfinite(lo) & jnp.isfinite(hi), jnp.minimum(span, rounding.F32_MAX), span)


def scales_from_stat(stat: Stat, fmt: Format, g: jax.Array | None = None) -> Scales:
    """Scales of blocks with this statistic; `g`: the second-level scale (default: from these blocks)."""
    elem, rule = plain_parts(fmt)
    sc = rule.block_scales(stat_amax(stat), elem, g)
    if not isinstance(stat, tuple):
        return sc
    assert isinstance(elem, IntElem)  # a (min, max) statistic belongs to zero-point INT blocks
    z = elem.round(scaling.divide(-stat[0], sc, rule.dtype), lo=0.0, hi=elem.max)
    return sc._replace(zero=z)


def _second_level_owner(fmt: Format) -> Format:
    """The plain format whose rule holds the second level: the format, or an adaptive one's first candidate (the
    candidates share it)."""
    return cast(AdaptiveFormat, fmt).candidates[0] if fmt.is_adaptive else fmt


def tensor_scale(stat: Stat, fmt: Format) -> jax.Array | None:
    """The stored second level from all blocks' statistics: the tensor scale g (numerics "te": the tensor amax;
    None if the rule has none; adaptive formats: their candidates' shared one)."""
    fmt = _second_level_owner(fmt)
    elem, rule = plain_parts(fmt)
    if not rule.has_tensor_scale:
        return None
    return cast(FloatScale, rule).tensor_scale(stat_amax(stat), elem)  # only float block scales have one


def has_tensor_scale(fmt: Format) -> bool:
    """Whether the format has a second-level (tensor) scale (adaptive formats: their candidates' shared one)."""
    fmt = _second_level_owner(fmt)
    return not fmt.is_identity and plain_parts(fmt)[1].has_tensor_scale


def given_tensor_scale(tensor_amax: jax.Array, fmt: Format) -> jax.Array:
    """The second-level scale of a format for a given tensor amax (a float32 scalar; NaN for a NaN, infinite or
    negative one, so that a bad amax shows in every block instead of silently rescaling them)."""
    fmt = _second_level_owner(fmt)
    elem, rule = plain_parts(fmt)
    a = jnp.asarray(tensor_amax, jnp.float32).reshape(())
    ok = jnp.isfinite(a) & (a >= 0)
    g = cast(FloatScale, rule).tensor_scale_of(jnp.where(ok, a, 0.0), elem)
    assert g is not None  # callers check has_tensor_scale
    return jnp.where(ok, g, jnp.nan)


def tensor_amax_array(x: jax.Array, fmt: Format, axes: tuple[int, ...]) -> jax.Array:
    """The tensor amax behind x's own second-level scale: the largest amax of its finite blocks (float32 scalar), so
    that quantizing x with tensor_amax=this is quantizing it without."""
    lay = blocks.layout(x.shape, fmt.block_size, axes)
    amax = blocks.amax_along(lay.to_blocks(x.astype(jnp.float32)), lay.block_axes)
    return scaling.finite_tensor_amax(amax)


def round_values(v: jax.Array, sc: Scales, fmt: Format, uniform: jax.Array | None = None) -> jax.Array:
    """Element-domain values onto the grid (zero-point blocks: integers in [-z, 2^b - 1 - z])."""
    elem, _ = plain_parts(fmt)
    if sc.zero is None:
        return elem.round(v, uniform)
    assert isinstance(elem, IntElem)  # zero points belong to zero-point INT blocks
    return elem.round(v, uniform, lo=-sc.zero, hi=elem.max - sc.zero)


def tile_values(
    x: jax.Array,
    fmt: Format,
    axes: tuple[int, ...],
    uniform: jax.Array | None = None,
    g: jax.Array | None = None,
    stat: Stat | None = None,
    valid: jax.Array | None = None,
) -> tuple[jax.Array, Scales]:
    """Grid values (float32, x's layout) and Scales of float32 blocks that run along `axes` of x (keepdims);
    `stat`: a precomputed block statistic (else reduced here), `g`: the second-level scale, `valid`: which
    elements are data rather than padding (adaptive formats leave padding out of the block error)."""
    if fmt.is_adaptive:
        return adaptive_tile_values(x, cast(AdaptiveFormat, fmt), axes, uniform, g, stat, valid)
    stat = block_stat(x, fmt, axes) if stat is None else stat
    sc = scales_from_stat(stat, fmt, g)
    elem, rule = plain_parts(fmt)
    v = rule.divide(x, sc, elem, scaling.scales_may_overflow(fmt))
    return round_values(v, sc, fmt, uniform), sc


def adaptive_tile_values(
    x: jax.Array,
    fmt: AdaptiveFormat,
    axes: tuple[int, ...],
    uniform: jax.Array | None = None,
    g: jax.Array | None = None,
    stat: Stat | None = None,
    valid: jax.Array | None = None,
) -> tuple[jax.Array, Scales]:
    """tile_values of an adaptive format: every candidate quantizes the blocks (RNE, one shared second-level
    scale), the lowest `fmt.select` error of the dequantized block's data (`valid`; default all) wins (ties: the
    earlier candidate); with `uniform` the chosen candidate is then rounded stochastically (the choice is made on
    the RNE results). Padding is left out because a grid without an exact zero (a lookup table, a zero-point
    INT) would charge each candidate for the padded zeros."""
    stat = blocks.amax_along(x, axes) if stat is None else stat
    g = tensor_scale(stat, fmt) if g is None else g
    rne = [tile_values(x, c, axes, None, g, stat) for c in fmt.candidates]
    errors = [
        selection.block_error(x, dequant_values(v, sc, c), axes, fmt.select, valid)
        for (v, sc), c in zip(rne, fmt.candidates, strict=True)
    ]
    choice = selection.best_candidate(errors)
    outs = rne if uniform is None else [tile_values(x, c, axes, uniform, g, stat) for c in fmt.candidates]
    values = selection.pick(choice, [v for v, _ in outs])
    return values, selection.pick_scales(choice, [sc for _, sc in outs])


def dequant_values(values: jax.Array, sc: Scales, fmt: Format) -> jax.Array:
    """Grid values -> x's values (float32; NaN for blocks that held NaN or Inf)."""
    if fmt.is_adaptive:  # candidates run the exact arithmetic (AdaptiveFormat refuses peer numerics)
        return scaling.multiply(values, sc, scaling.scales_may_overflow(fmt))
    elem, rule = plain_parts(fmt)
    return rule.multiply(values, sc, elem, scaling.scales_may_overflow(fmt))


def to_output(y_f32: jax.Array, dtype: DTypeLike) -> jax.Array:
    """float32 results in `dtype`, values beyond its range saturated to its largest finite value, so that a
    finite input never comes back as +-Inf (a block scale times a rounded-up element can pass float32's or the
    output dtype's maximum); NaN kept."""
    big = float(jnp.finfo(dtype).max)
    return jnp.clip(y_f32, -big, big).astype(dtype)


def code_values(values: jax.Array, sc: Scales) -> jax.Array:
    """Grid values as stored: 0 for non-finite blocks, shifted by the zero point for zero-point blocks."""
    kept = jnp.where(sc.finite, values, 0.0)
    return kept if sc.zero is None else kept + jnp.where(sc.finite, sc.zero, 0.0)


def encode_codes(values: jax.Array, sc: Scales, fmt: Format) -> jax.Array:
    """Grid values -> codes in the element's storage dtype."""
    kept = code_values(values, sc)
    if fmt.is_adaptive:
        return adaptive_parts(fmt)[1].encode(kept, sc.choice)
    return plain_parts(fmt)[0].encode(kept)


def encode_code_bytes(values: jax.Array, sc: Scales, fmt: Format) -> jax.Array:
    """Grid values -> codes as bytes (the element's byte dtype; kernels that cannot store sub-byte dtypes)."""
    kept = code_values(values, sc)
    if fmt.is_adaptive:
        return adaptive_parts(fmt)[1].code_bytes(kept, sc.choice)
    return plain_parts(fmt)[0].code_bytes(kept)


def decode_codes(codes: jax.Array, sc: Scales, fmt: Format) -> jax.Array:
    """Stored codes (blocked view) -> grid values (float32), zero points removed."""
    if fmt.is_adaptive:
        values = adaptive_parts(fmt)[1].decode(codes, sc.choice)
    else:
        values = plain_parts(fmt)[0].decode(codes)
    return values if sc.zero is None else values - sc.zero


def selectors_of(sc: Scales, fmt: Format) -> jax.Array | None:
    """The stored per-block choice (uint8, keepdims) of formats that keep it beside the scales, else None."""
    if not fmt.is_adaptive or cast(AdaptiveFormat, fmt).selector != "separate":
        return None
    assert sc.choice is not None  # adaptive Scales carry the choice
    return jnp.where(sc.finite, sc.choice, 0).astype(jnp.uint8)


def encode_zero(sc: Scales, fmt: Format) -> jax.Array | None:
    """Stored zero points (the element's code dtype) or None."""
    if sc.zero is None:
        return None
    return plain_parts(fmt)[0].encode(jnp.where(sc.finite, sc.zero, 0.0))


def uniform_like(key: Key | None, shape: tuple[int, ...], sr_bits: int | None = None) -> jax.Array | None:
    """Stochastic-rounding uniforms on the 2^-24 grid drawn for `key` in `shape` (None without a key); `sr_bits`:
    rounding decided by that many random bits (rounding.limit_sr_bits; None: all 24)."""
    if key is None:
        return None
    return rounding.uniform_from_bits(jax.random.bits(key, shape, jnp.uint32), sr_bits)


def _block_extent(lay: blocks.Layout, ndim: int) -> dict[int, int]:
    """Axis -> how many consecutive elements one block needs on one device (per tensor: every whole axis)."""
    if lay.per_tensor:
        return {a: lay.shape[a] for a in range(ndim)}
    return dict(zip(lay.axes, lay.block))


def quantize_blocks(
    x: jax.Array,
    fmt: Format,
    axes: tuple[int, ...],
    key: Key | None = None,
    rbits: jax.Array | None = None,
    sr_bits: int | None = None,
    tensor_amax: jax.Array | None = None,
) -> tuple[jax.Array, Scales, blocks.Layout]:
    """Grid values (blocked view), Scales and layout of x quantized along `axes` (normalised); stochastic
    rounding from `key`, or from explicit uint32 `rbits` in x's padded shape (kernels.sr_bits), decided by the
    top `sr_bits` random bits (None: 24; rounding.limit_sr_bits); `tensor_amax`: the amax the second-level scale
    is taken from (None: this tensor's)."""
    lay = blocks.layout(x.shape, fmt.block_size, axes)
    x = gather_partial_blocks(x, _block_extent(lay, x.ndim))
    uniform: jax.Array | None
    if rbits is not None:
        uniform = rounding.uniform_from_bits(rbits.reshape(lay.blocked_shape), sr_bits)
    else:
        uniform = uniform_like(key, lay.blocked_shape, sr_bits)
    valid = None
    if fmt.is_adaptive and lay.padded_shape != lay.shape:
        valid = lay.to_blocks(jnp.ones(x.shape, jnp.float32)) > 0
    g = None if tensor_amax is None else given_tensor_scale(tensor_amax, fmt)
    values, sc = tile_values(lay.to_blocks(x), fmt, lay.block_axes, uniform, g=g, valid=valid)
    return values, sc, lay


def fake_quant_array(
    x: jax.Array,
    fmt: Format,
    axes: tuple[int, ...],
    key: Key | None = None,
    rbits: jax.Array | None = None,
    sr_bits: int | None = None,
    tensor_amax: jax.Array | None = None,
) -> jax.Array:
    """dequantize(quantize(x)) in x's dtype."""
    if fmt.is_identity:  # rounded, not only cast: XLA:GPU drops a cast pair
        return rounding.round_to_dtype(x, fmt.passthrough_dtype).astype(x.dtype)
    values, sc, lay = quantize_blocks(x, fmt, axes, key, rbits, sr_bits, tensor_amax)
    return reshard_like(to_output(lay.from_blocks(dequant_values(values, sc, fmt)), x.dtype), x)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 4))
def fake_quant_ste(
    x: jax.Array,
    fmt: Format,
    axes: tuple[int, ...],
    key: Key | None,
    sr_bits: int | None = None,
    tensor_amax: jax.Array | None = None,
) -> jax.Array:
    """fake_quant_array with a straight-through (identity) derivative in x (none in tensor_amax), in forward and
    reverse mode."""
    return fake_quant_array(x, fmt, axes, key, sr_bits=sr_bits, tensor_amax=tensor_amax)


@fake_quant_ste.defjvp
def _fake_quant_ste_jvp(fmt, axes, sr_bits, primals, tangents):
    x, key, tensor_amax = primals
    # the rule itself again: straight-through at every order
    return fake_quant_ste(x, fmt, axes, key, sr_bits, tensor_amax), tangents[0]


def _axis_field(axes: tuple[int, ...]) -> Axis:
    return axes[0] if len(axes) == 1 else axes


def encode_scales(sc: Scales, fmt: Format) -> jax.Array:
    """Scales -> the stored block scales (the rule's storage dtype; adaptive formats: with their choice)."""
    if fmt.is_adaptive:
        _, elem_a, rule_a = adaptive_parts(fmt)
        return rule_a.encode(sc, elem_a)
    elem, rule = plain_parts(fmt)
    return rule.encode(sc, elem)


def quantize_array(
    x: jax.Array,
    fmt: Format,
    axes: tuple[int, ...],
    key: Key | None = None,
    rbits: jax.Array | None = None,
    sr_bits: int | None = None,
    tensor_amax: jax.Array | None = None,
) -> QArray:
    """The QArray of x quantized along `axes` (normalised)."""
    if fmt.is_identity:  # rounded, not only cast: XLA:GPU drops the pair cast here / cast back in dequantize
        codes = rounding.round_to_dtype(x, fmt.passthrough_dtype).astype(fmt.passthrough_dtype)
        return QArray(codes, None, None, fmt, _axis_field(axes), x.shape, x.dtype)
    values, sc, lay = quantize_blocks(x, fmt, axes, key, rbits, sr_bits, tensor_amax)
    codes = lay.from_blocks(encode_codes(values, sc, fmt), crop=False)
    scales = lay.stat_to_scales(encode_scales(sc, fmt))
    zero = encode_zero(sc, fmt)
    zero = None if zero is None else lay.stat_to_scales(zero)
    sel = selectors_of(sc, fmt)
    sel = None if sel is None else lay.stat_to_scales(sel)
    return QArray(codes, scales, sc.tensor, fmt, _axis_field(axes), x.shape, x.dtype, zero, sel)


def block_choices_array(x: jax.Array, fmt: Format, axes: tuple[int, ...]) -> jax.Array:
    """The chosen candidate (int32) of every block of an adaptive format, in the stored scales' shape."""
    _, sc, lay = quantize_blocks(x, fmt, axes)
    assert sc.choice is not None  # adaptive Scales carry the choice
    return lay.stat_to_scales(sc.choice)


def qarray_layout(q: QArray) -> blocks.Layout:
    return blocks.layout(q.shape, q.fmt.block_size, q.axis)


def scales_of(q: QArray, lay: blocks.Layout) -> Scales:
    """The Scales (keepdims layout) of a QArray's stored scales."""
    fmt = q.fmt
    assert q.scales is not None  # block formats store scales
    stored = lay.scales_to_stat(q.scales)
    if fmt.is_adaptive:
        _, elem_a, rule_a = adaptive_parts(fmt)
        sel = None if q.selectors is None else lay.scales_to_stat(q.selectors)
        return rule_a.decode(stored, elem_a, q.tensor_scale, sel)
    elem, rule = plain_parts(fmt)
    sc = rule.decode(stored, elem, q.tensor_scale)
    if q.zero_points is None:
        return sc
    return sc._replace(zero=lay.scales_to_stat(elem.decode(q.zero_points)))


def check_qarray(q: QArray) -> None:
    """ValueError unless the QArray's fields have the shapes and dtypes its format and metadata imply (catches
    swapped fields, a QArray built under vmap and used outside it, and a missing or stray zero point or
    selector)."""
    fmt = q.fmt
    if fmt.is_identity:
        return
    lay = qarray_layout(q)
    what = f"QArray({fmt.label}, shape={q.shape})"
    assert fmt.elem is not None and fmt.scale_rule is not None  # not an identity format
    want = {
        "codes": (q.codes, lay.padded_shape, fmt.elem.storage_dtype),
        "scales": (q.scales, lay.scales_shape, fmt.scale_rule.storage_dtype),
    }
    zero = getattr(fmt.elem, "zero_point", False)
    if zero:
        want["zero_points"] = (q.zero_points, lay.scales_shape, fmt.elem.storage_dtype)
    separate = fmt.is_adaptive and cast(AdaptiveFormat, fmt).selector == "separate"
    if separate:
        want["selectors"] = (q.selectors, lay.scales_shape, jnp.uint8)
    for name, (arr, shape, dtype) in want.items():
        if arr is None:
            raise ValueError(f"{what}: {name} is missing")
        if tuple(arr.shape) != tuple(shape) or jnp.dtype(arr.dtype) != jnp.dtype(dtype):
            raise ValueError(
                f"{what}: {name} has shape {tuple(arr.shape)} and dtype {jnp.dtype(arr.dtype).name}, expected "
                f"{tuple(shape)} and {jnp.dtype(dtype).name} (fields swapped, or a QArray built under vmap used "
                "outside it?)"
            )
    for name, arr, allowed in (("zero_points", q.zero_points, zero), ("selectors", q.selectors, separate)):
        if arr is not None and not allowed:
            raise ValueError(f"{what}: {fmt.label} has no {name}, but the QArray carries some")
    if fmt.scale_rule.has_tensor_scale and (q.tensor_scale is None or jnp.shape(q.tensor_scale) != ()):
        raise ValueError(f"{what}: {fmt.label} needs a scalar float32 tensor_scale")


def dequantize_array(q: QArray, dtype: DTypeLike) -> jax.Array:
    """Values of a QArray in `dtype`, cropped to the original shape."""
    if q.fmt.is_identity:
        return q.codes.astype(dtype)
    lay = qarray_layout(q)
    sc = scales_of(q, lay)
    values = decode_codes(q.codes.reshape(lay.blocked_shape), sc, q.fmt)
    return to_output(lay.from_blocks(dequant_values(values, sc, q.fmt)), dtype)


def check_input(x: ArrayLike, fmt: Format | str, axis: Axis | None = None) -> tuple[jax.Array, Format, tuple[int, ...]]:
    """Validate and normalise (x, fmt, axis) -> (array, Format, quantized axes); axis None: the format's
    default. Clear errors for non-float input, bad formats and out-of-range or mismatched axes."""
    if isinstance(fmt, str):
        fmt = get_format(fmt)
    if not isinstance(fmt, Format):
        raise TypeError(f"fmt must be a Format or a format spec string, got {type(fmt).__name__}")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"lowbit_jax quantizes real floating-point arrays; got dtype {x.dtype}")
    if x.dtype == jnp.float64:  # only reachable with jax_enable_x64
        raise TypeError(
            "lowbit_jax quantizes float32, bfloat16 and float16 arrays; a float64 input would be rounded to float32 "
            "first (a double rounding that can move values across a rounding midpoint): cast it explicitly"
        )
    if x.ndim == 0 and not (fmt.is_identity or fmt.block_size == blocks.PER_TENSOR):
        raise ValueError(f"{fmt.name} quantizes blocks along an axis; got a scalar")
    axis = fmt.default_axis if axis is None else axis
    if fmt.is_identity or fmt.block_size == blocks.PER_TENSOR:
        return x, fmt, blocks.normalize_axes(axis if isinstance(axis, int) else axis[-1], x.ndim, blocks.PER_TENSOR)
    if blocks.block_ndim(fmt.block_size) == 2 and x.ndim < 2:
        assert isinstance(fmt.block_size, tuple)  # 2-D blocks are (rows, cols) tiles
        r, c = fmt.block_size
        raise ValueError(f"{fmt.name} quantizes {r}x{c} tiles over two axes; got an array of rank {x.ndim}")
    return x, fmt, blocks.normalize_axes(axis, x.ndim, fmt.block_size)


# Jitted entry points (static format, axes and sr_bits), so that eager calls compile once per shape.
fake_quant_jit = jax.jit(fake_quant_ste, static_argnums=(1, 2, 4))
quantize_jit = jax.jit(quantize_array, static_argnums=(1, 2, 5))
tensor_amax_jit = jax.jit(tensor_amax_array, static_argnums=(1, 2))
dequantize_jit = jax.jit(dequantize_array, static_argnums=(1,))
block_choices_jit = jax.jit(block_choices_array, static_argnums=(1, 2))

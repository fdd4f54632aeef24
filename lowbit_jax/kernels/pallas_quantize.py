"""Pallas kernels: fused fake-quant, and quantize to codes + scales, for every block format (2-D, last axis).

Same signatures as `reference.py` plus static knobs (tiles, backend), bit-identical to it. The tile math is
the library's own code (codec.tile_values / dequant_values / code_values, the format's element grid and
scale rule), so the kernel and the core cannot drift apart.

Layout. Blocked formats (MX, NV, any int block size): x (M, L) is zero-padded to whole blocks and viewed,
for free, as (M * L/block, block), each block zero-padded to a power-of-two width; one grid step takes
`tiles.blocks` whole blocks, so the block amax is a row reduction inside the tile. The NV tensor amax is a
separate reduction outside the kernel; its tensor scale g comes in as a (1, 1) input. Per-channel formats whose
padded row fits `tiles.whole_row_max` run the same way with the row as the block (one pass over x). Longer
per-channel rows and per-tensor formats: the amax is reduced outside and comes in as an (M, 1) input; the
kernel tiles (tiles.rows, tiles.cols) freely. Arrays are zero-padded to whole tiles
(Pallas Triton does not mask partial tiles) and cropped after. Stochastic-rounding bits come in as a
uint32 input tiled like x. The Hadamard rotation is fused when h divides the block (the butterflies run as
exact permutation products in the tile); otherwise (h > block, per-channel, per-tensor) the same
`reference.rotate_rows` runs before the kernel.

Backends: "interpret" (CPU and tests), "triton" (GPU; primitives swapped by `substitute.TRITON_RULES`, or
`TRITON_RULES_RCP` with LOWBIT_JAX_TRITON_DIV=rcp; block sizes and tiles must be powers of two),
"interpret_portable" (interpret mode with the Triton-portable rules, to test them on a CPU). There is no Mosaic GPU
backend: jax 0.10 deprecated lowering pl.pallas_call to Mosaic GPU and jax 0.11.2 no longer has that lowering (an
AssertionError in pallas_call's gpu_lowering, seen on an H100, 2026-11-26); Mosaic GPU kernels are written with
plgpu.kernel, a different programming model. Outputs with dtypes Triton may not store (float4, int4, float8_e8m0fnu)
are written as bytes and converted outside with `byte_outputs`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from lowbit_jax import blocks, codec, rounding
from lowbit_jax._types import DTypeLike
from lowbit_jax.formats import Format
from lowbit_jax.kernels import reference, substitute

BACKENDS = ("interpret", "triton", "interpret_portable")
DEFAULT_GPU_BACKEND = "triton"


@dataclasses.dataclass(frozen=True)
class Tiles:
    """Tiling (static): `blocks` per grid step (blocked formats); rows x cols elements per step (per-channel and
    per-tensor; whole rows per step when a per-channel row fits `whole_row_max`)."""

    blocks: int = 256
    rows: int = 16
    cols: int = 512
    whole_row_max: int = 16384  # per-channel rows up to this padded length: one pass, amax inside the tile
    num_warps: int = 8  # Triton only; on an H100 8 was best, or within 1 % of 4, for every format and dtype
    num_stages: int = 1  # Triton only


def default_backend() -> str:
    """'interpret' off GPUs, else DEFAULT_GPU_BACKEND."""
    return DEFAULT_GPU_BACKEND if jax.default_backend() == "gpu" else "interpret"


def _pow2_at_least(n: int) -> int:
    """The smallest power of two >= n (Triton block shapes must be powers of two)."""
    return 1 << max(0, (n - 1).bit_length())


def _fit(n: int, tile: int) -> int:
    """The tile, or the smallest power of two covering n when n is smaller."""
    return tile if n >= tile else _pow2_at_least(n)


def _pad_to(a: jax.Array, rows: int, cols: int) -> jax.Array:
    """a zero-padded at the end to (rows, cols): whole tiles, since Pallas Triton does not mask partial ones."""
    extra = ((0, rows - a.shape[0]), (0, cols - a.shape[1]))
    return jnp.pad(a, extra) if any(e for _, e in extra) else a


# --------------------------------------------------------------------------------------------- tile math
def rotate_tile(x, signs_row, h: int):
    """reference.rotate_rows on a (rows, W) tile, h | W: butterflies with the partner from a 0/1 product."""
    w = x.shape[-1]
    col = lax.broadcasted_iota(jnp.int32, (1, w), 1)
    row = lax.broadcasted_iota(jnp.int32, (w, 1), 0)
    y = x * signs_row
    s = 1
    while s < h:
        partner = jnp.dot(y, (row == (col ^ s)).astype(jnp.float32), precision=lax.Precision.HIGHEST)
        y = reference.canonical_zero(jnp.where((col & s) == 0, y + partner, partner - y))
        s *= 2
    return y * reference.rotation_scale(h)


def tile_values(fmt: Format, h: int, x, bits, amax, g, signs):
    """Element values and BlockScale of a tile: rows are blocks (amax None) or use the given amax."""
    x = x.astype(jnp.float32)
    if signs is not None:
        x = rotate_tile(x, signs, h)
    uniform = None if bits is None else rounding.uniform_from_bits(bits)
    return codec.tile_values(x, fmt, (1,), uniform, g, amax)


def _body(fmt, h, out, out_dtype, byte_outputs, has, *arrays):
    """Tile function: arrays named by `has` in -> output tuple (fake: y; quantize: codes [, scales])."""
    got = dict(zip(has, arrays))
    values, sc = tile_values(fmt, h, got["x"], got.get("bits"), got.get("amax"), got.get("g"), got.get("signs"))
    if out == "fake":
        return (codec.to_output(codec.dequant_values(values, sc, fmt), out_dtype),)
    codes = codec.encode_code_bytes(values, sc, fmt) if byte_outputs else codec.encode_codes(values, sc, fmt)
    if out == "codes":
        return (codes,)
    rule = fmt.scale_rule
    scales = rule.scale_bytes(sc, fmt.elem) if byte_outputs else rule.encode(sc, fmt.elem)
    selectors = codec.selectors_of(sc, fmt)
    return (codes, scales) if selectors is None else (codes, scales, selectors)


def _kernel(tile_fn, n_in, *refs):
    outs = tile_fn(*(r[...] for r in refs[:n_in]))
    for ref, val in zip(refs[n_in:], outs):
        ref[...] = val


# --------------------------------------------------------------------------------------------- launch
def _compiler_kwargs(backend: str, tiles: Tiles) -> dict:
    if backend.startswith("interpret"):
        return {"interpret": True}
    if backend == "triton":
        from jax.experimental.pallas import triton as pltriton

        return {"compiler_params": pltriton.CompilerParams(num_warps=tiles.num_warps, num_stages=tiles.num_stages)}
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _rules(backend: str):
    """The primitive substitutions of a backend (None: none). Triton's float32 division is div.rn.f32, or
    substitute.div_rcp_fma (same bits) with LOWBIT_JAX_TRITON_DIV=rcp, read here, when the kernel is traced."""
    if backend == "triton":
        return substitute.triton_rules()
    return {"interpret_portable": substitute.PORTABLE_RULES}.get(backend)


def varying_like(struct: jax.ShapeDtypeStruct, arrays, backend: str) -> jax.ShapeDtypeStruct:
    """`struct` typed to vary along the shard_map axes its inputs vary along (unchanged outside shard_map), as
    pallas_call needs inside a shard_map that checks them."""
    types: list[Any] = [getattr(jax.typeof(a), "manual_axis_type", None) for a in arrays]
    types = [t for t in types if t is not None and getattr(t, "varying", None)]
    if not types:
        return struct
    if backend.startswith("interpret"):  # JAX's Pallas interpreter fails its own varying-axes check (jax 0.10)
        raise NotImplementedError(
            "impl='pallas' in interpret mode (CPU) inside jax.shard_map fails JAX's varying-axes check: pass "
            "check_vma=False to jax.shard_map, or use impl='xla' there"
        )
    widest = max(types, key=lambda t: len(t.varying))
    return jax.ShapeDtypeStruct(struct.shape, struct.dtype, manual_axis_type=widest)


def _launch(spec: dict, inputs: dict, outs: list, grid, backend: str, tiles: Tiles):
    """pallas_call over `grid`; inputs and outs as name -> (array, BlockSpec) and [(ShapeDtypeStruct, BlockSpec)]."""
    names = tuple(inputs)
    body = functools.partial(_body, spec["fmt"], spec["h"], spec["out"], spec["out_dtype"], spec["bytes"], names)
    kernel = functools.partial(
        _kernel, substitute.substituted(body, _rules(backend), plain_division=backend == "triton"), len(names)
    )
    arrays = [inputs[n][0] for n in names]
    return pl.pallas_call(
        kernel,
        out_shape=[varying_like(o[0], arrays, backend) for o in outs],
        grid=grid,
        in_specs=[inputs[n][1] for n in names],
        out_specs=[o[1] for o in outs],
        **_compiler_kwargs(backend, tiles),
    )(*(inputs[n][0] for n in names))


def _tensor_g(amax, fmt: Format, tensor_amax=None):
    """The (1, 1) second-level scale from block amaxes (or from a given tensor amax), None for rules without one."""
    if tensor_amax is not None:
        return codec.given_tensor_scale(tensor_amax, fmt).reshape(1, 1)
    g = codec.tensor_scale(amax, fmt)
    return None if g is None else g.reshape(1, 1)


def _amax_rows(x) -> jax.Array:
    return blocks.amax_along(x.astype(jnp.float32), 1)


def _code_dtype(fmt: Format, byte_outputs: bool) -> DTypeLike:
    assert fmt.elem is not None  # kernels run block formats only
    return fmt.elem.byte_dtype if byte_outputs else fmt.elem.storage_dtype


def _scale_dtype(fmt: Format, byte_outputs: bool) -> DTypeLike:
    assert fmt.scale_rule is not None  # kernels run block formats only
    return fmt.scale_rule.byte_dtype if byte_outputs else fmt.scale_rule.storage_dtype


def _codes_out(codes: jax.Array, fmt: Format) -> jax.Array:
    """Kernel codes (bytes or the storage dtype) -> the element's storage dtype."""
    assert fmt.elem is not None  # kernels run block formats only
    return codes if codes.dtype == fmt.elem.storage_dtype else fmt.elem.codes_from_bytes(codes)


def _scales_out(scales: jax.Array, fmt: Format) -> jax.Array:
    rule = fmt.scale_rule
    assert rule is not None  # kernels run block formats only
    return scales if scales.dtype == rule.storage_dtype else rule.from_bytes(scales)


def _run_blocked(x, fmt, rbits, signs, out, out_dtype, tiles, backend, byte_outputs, tensor_amax=None):
    """Rows of the (M * n_blocks, block) view are blocks, each zero-padded to a power-of-two width (zeros change
    no amax); the block amax is a row reduction in the tile and scales come out of the kernel. A per-channel
    format runs here with the whole row as its one block."""
    m, length = x.shape
    lay = blocks.layout((m, length), fmt.block_size, 1)
    (blk,), (n_blocks,) = lay.block, lay.n_blocks
    rows = m * n_blocks
    width = _pow2_at_least(blk)
    h = 0 if signs is None else signs.shape[0]
    if h and blk % h:
        x, signs, h = reference.rotate_rows(x, signs), None, 0
    pad = n_blocks * blk - length
    x = (jnp.pad(x, ((0, 0), (0, pad))) if pad else x).reshape(rows, blk)
    per_step = tiles.blocks if isinstance(fmt.block_size, int) else max(1, tiles.rows * tiles.cols // width)
    tr = max(_fit(rows, per_step), 16 if h and not backend.startswith("interpret") else 1)  # Triton dots: M >= 16
    steps = pl.cdiv(rows, tr)
    row_spec = pl.BlockSpec((tr, width), lambda i: (i, 0))
    one = lambda shape: pl.BlockSpec(shape, lambda i: (0, 0))
    if tensor_amax is None:  # the tensor amax pass over x; a given amax spares it
        g = _tensor_g(_amax_rows(x if not h else reference.rotate_rows(x, signs)), fmt)
    else:
        g = _tensor_g(None, fmt, tensor_amax)
    inputs = {"x": (_pad_to(x, steps * tr, width), row_spec)}
    if rbits is not None:
        inputs["bits"] = (_pad_to(rbits.reshape(rows, blk), steps * tr, width), row_spec)
    if g is not None:
        inputs["g"] = (g, one((1, 1)))
    if h:
        inputs["signs"] = (jnp.tile(signs.astype(jnp.float32), width // h).reshape(1, width), one((1, width)))
    spec = {"fmt": fmt, "h": h, "out": out, "out_dtype": out_dtype, "bytes": byte_outputs}
    code_dtype = out_dtype if out == "fake" else _code_dtype(fmt, byte_outputs)
    outs = [(jax.ShapeDtypeStruct((steps * tr, width), code_dtype), row_spec)]
    separate = fmt.is_adaptive and fmt.selector == "separate"
    if out == "quantize":
        scale_spec = pl.BlockSpec((tr, 1), lambda i: (i, 0))
        outs.append((jax.ShapeDtypeStruct((steps * tr, 1), _scale_dtype(fmt, byte_outputs)), scale_spec))
        if separate:
            outs.append((jax.ShapeDtypeStruct((steps * tr, 1), jnp.uint8), scale_spec))
    res = _launch(spec, inputs, outs, (steps,), backend, tiles)
    y = res[0][:rows, :blk].reshape(m, n_blocks * blk)
    if out == "fake":
        return y[:, :length] if pad else y
    tensor = None if g is None else g.reshape(())
    return (
        _codes_out(y, fmt),  # whole blocks, as QArray codes
        _scales_out(res[1][:rows].reshape(m, n_blocks), fmt),
        tensor,
        res[2][:rows].reshape(m, n_blocks) if separate else None,
    )


def _run_rowwise(x, fmt, rbits, signs, out, out_dtype, tiles, backend, byte_outputs, tensor_amax=None):
    """Per-channel / per-tensor formats: amax (and scales) reduced outside, tiles of (rows, cols)."""
    if fmt.is_adaptive:
        raise NotImplementedError(
            f"{fmt.label}: an adaptive format's per-block choice needs the whole block in one kernel tile; "
            "per-tensor blocks and per-channel rows longer than Tiles.whole_row_max have no kernel, use impl='xla'"
        )
    m, length = x.shape
    if signs is not None:
        x = reference.rotate_rows(x, signs)
    if fmt.block_size == "channel":
        amax = _amax_rows(x)
    else:
        amax = jnp.broadcast_to(_amax_rows(x.reshape(1, -1)), (m, 1))
    g = _tensor_g(amax, fmt, tensor_amax)
    tr, tc = _fit(m, tiles.rows), _fit(length, tiles.cols)
    grid = (pl.cdiv(m, tr), pl.cdiv(length, tc))
    mp, lp = grid[0] * tr, grid[1] * tc
    tile_spec = pl.BlockSpec((tr, tc), lambda i, j: (i, j))
    amax_spec = pl.BlockSpec((tr, 1), lambda i, j: (i, 0))
    inputs = {"x": (_pad_to(x, mp, lp), tile_spec), "amax": (_pad_to(amax, mp, 1), amax_spec)}
    if rbits is not None:
        inputs["bits"] = (_pad_to(rbits, mp, lp), tile_spec)
    if g is not None:
        inputs["g"] = (g, pl.BlockSpec((1, 1), lambda i, j: (0, 0)))
    spec = {"fmt": fmt, "h": 0, "out": "fake" if out == "fake" else "codes", "out_dtype": out_dtype}
    spec["bytes"] = byte_outputs
    code_dtype = out_dtype if out == "fake" else _code_dtype(fmt, byte_outputs)
    outs = [(jax.ShapeDtypeStruct((mp, lp), code_dtype), tile_spec)]
    [y] = _launch(spec, inputs, outs, grid, backend, tiles)
    y = y[:m, :length] if (mp, lp) != (m, length) else y
    if out == "fake":
        return y
    # Per tensor: the scale of the one (1, 1) amax, not of its broadcast, which XLA may fold into a reciprocal
    # multiply (a stored scale 1 ulp off in about half of random arrays).
    stat = amax if fmt.block_size == "channel" else amax[:1]
    scales = fmt.scale_rule.encode(codec.scales_from_stat(stat, fmt, g), fmt.elem)
    scales = scales if fmt.block_size == "channel" else scales[0, 0]
    return _codes_out(y, fmt), scales, None if g is None else g.reshape(()), None


def _run_tiles(x_2d, fmt, rbits, out, tiles, backend, byte_outputs, tensor_amax=None):
    """2-D tiles: one row of r * c elements per tile (`Layout.to_rows`), run as 1-D blocks, laid back."""
    lay = blocks.layout(x_2d.shape, fmt.block_size, (0, 1))
    rows = lay.to_rows(x_2d)
    bits = None if rbits is None else lay.blocked_to_rows(rbits.reshape(lay.blocked_shape))
    res = _run(rows, reference.row_format(fmt), bits, None, out, tiles, backend, byte_outputs, tensor_amax)
    if out == "fake":
        return codec.to_output(lay.from_rows(res), x_2d.dtype)
    codes, scales, tensor, selectors = res
    selectors = None if selectors is None else lay.rows_to_scales(selectors)
    return lay.from_rows(codes, crop=False), lay.rows_to_scales(scales), tensor, selectors


def _run(x_2d, fmt, rbits, rotation, out, tiles, backend, byte_outputs, tensor_amax=None):
    reference.check_2d(x_2d, fmt, rotation)
    backend = default_backend() if backend is None else backend
    byte_outputs = not backend.startswith("interpret") if byte_outputs is None else byte_outputs
    dtype = x_2d.dtype
    if isinstance(fmt.block_size, tuple):
        return _run_tiles(x_2d, fmt, rbits, out, tiles, backend, byte_outputs, tensor_amax)
    if isinstance(fmt.block_size, int):
        return _run_blocked(x_2d, fmt, rbits, rotation, out, dtype, tiles, backend, byte_outputs, tensor_amax)
    if fmt.block_size == "channel" and _pow2_at_least(x_2d.shape[1]) <= tiles.whole_row_max:
        if rotation is not None:  # per-channel rotation runs before the kernel, as in _run_rowwise
            x_2d, rotation = reference.rotate_rows(x_2d, rotation), None
        return _run_blocked(x_2d, fmt, rbits, None, out, dtype, tiles, backend, byte_outputs, tensor_amax)
    return _run_rowwise(x_2d, fmt, rbits, rotation, out, dtype, tiles, backend, byte_outputs, tensor_amax)


@functools.partial(jax.jit, static_argnames=("fmt", "tiles", "backend"))
def fake_quant_pallas(
    x_2d, fmt: Format, *, rbits=None, rotation=None, tiles: Tiles = Tiles(), backend=None, tensor_amax=None
):
    """Pallas twin of reference.fake_quant_ref; backend None: interpret off GPUs, DEFAULT_GPU_BACKEND on them;
    tensor_amax: the amax of the second-level scale (None: a reduction over x before the kernel)."""
    return _run(x_2d, fmt, rbits, rotation, "fake", tiles, backend, False, tensor_amax)


@functools.partial(jax.jit, static_argnames=("fmt", "tiles", "backend", "byte_outputs"))
def quantize_pallas(
    x_2d,
    fmt: Format,
    *,
    rbits=None,
    rotation=None,
    tiles: Tiles = Tiles(),
    backend=None,
    byte_outputs=None,
    tensor_amax=None,
):
    """Pallas twin of reference.quantize_ref -> (codes, scales, tensor_scale, selectors); byte_outputs None: on
    GPUs."""
    return _run(x_2d, fmt, rbits, rotation, "quantize", tiles, backend, byte_outputs, tensor_amax)

"""Quantized matmul on QArray operands: a (M, K) . b (N, K)^T in float32, both quantized along K (axis 1).

The kernel dequantizes each (rows, tk) tile with the core's own `dequantize` (decode + block scales, the same
code as lb.dequantize) and accumulates tile products in float32 over a loop on K. `qmatmul_ref` is
dot(dequantize(a), dequantize(b)^T) at HIGHEST precision, i.e. qdot_general's forward for these operands
(tested bit for bit). Kernel and reference add the K terms in different orders, so they agree to float32
rounding, not bitwise. Blocked formats only (MX, NV, any int block size); a and b may differ in format.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from lowbit_jax import codec
from lowbit_jax.elements import FPElem
from lowbit_jax.formats import Format
from lowbit_jax.kernels import pallas_quantize
from lowbit_jax.qarray import QArray

_DOT_T = (((1,), (1,)), ((), ()))  # contract the last axes: a @ b.T


@dataclasses.dataclass(frozen=True)
class MatTiles:
    """Output tile (m, n) per grid step and the K chunk `k` per loop step (a multiple of both block sizes)."""

    m: int = 64
    n: int = 64
    k: int = 128
    num_warps: int = 4  # Triton only
    num_stages: int = 1  # Triton only


def check_operands(a: QArray, b: QArray) -> int:
    """K (the common quantized length) of two 2-D QArrays blocked along axis 1; clear errors otherwise."""
    for name, q in (("a", a), ("b", b)):
        if not isinstance(q, QArray) or q.ndim != 2 or q.axis != 1 or not isinstance(q.fmt.block_size, int):
            raise ValueError(f"qmatmul takes 2-D QArrays in a blocked format quantized along axis 1; {name} is not")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"qmatmul: a has K = {a.shape[1]}, b has K = {b.shape[1]}")
    return a.shape[1]


def qmatmul_ref(a: QArray, b: QArray) -> jax.Array:
    """dequantize(a) @ dequantize(b).T in float32 at HIGHEST precision (qdot_general's forward)."""
    check_operands(a, b)
    a32, b32 = codec.dequantize_array(a, jnp.float32), codec.dequantize_array(b, jnp.float32)
    return lax.dot_general(a32, b32, _DOT_T, precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def _stored_block(fmt: Format, k: int) -> Format:
    """fmt with the block its QArrays of length k store: a block longer than K is clamped to K (blocks.layout)."""
    assert isinstance(fmt.block_size, int)  # check_operands: blocked formats only
    return fmt if fmt.block_size <= k else fmt.replace(block_size=k)


def _kernel_operand(q: QArray, fmt: Format, rows: int, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(codes, scales, tensor) padded to (rows, k) / (rows, k / block), as dtypes every backend loads."""
    codes, scales = q.codes, q.scales
    assert scales is not None and isinstance(fmt.block_size, int)  # check_operands: blocked formats only
    if isinstance(fmt.elem, FPElem) and fmt.elem.bits < 8 and codes.dtype != jnp.uint8:
        codes = fmt.elem.code_bytes(fmt.elem.decode(codes))  # float4 -> uint8 bit patterns
    elif not isinstance(fmt.elem, FPElem):
        codes = codes.astype(jnp.int8)
    if scales.dtype == jnp.float8_e8m0fnu:  # E8M0 is decoded from its bits (uint8) inside the kernel
        scales = lax.bitcast_convert_type(scales, jnp.uint8)
    codes = pallas_quantize._pad_to(codes, rows, k)
    scales = pallas_quantize._pad_to(scales, rows, k // fmt.block_size)
    tensor = jnp.ones((1, 1), jnp.float32) if q.tensor_scale is None else q.tensor_scale.reshape(1, 1)
    return codes, scales, tensor


def _tile(codes, scales, tensor, fmt) -> jax.Array:
    """float32 values of a (rows, tk) tile: lb.dequantize of the tile as a QArray."""
    t = tensor.reshape(()) if fmt.scale_rule.has_tensor_scale else None
    return codec.dequantize_array(QArray(codes, scales, t, fmt, 1, codes.shape, jnp.float32), jnp.float32)


def _kernel(fa, fb, tk, nk, ac, as_, at, bc, bs_, bt, out):
    def step(i, acc):
        ks = pl.ds(i * tk, tk)
        a = _tile(ac[:, ks], as_[:, pl.ds(i * (tk // fa.block_size), tk // fa.block_size)], at[...], fa)
        b = _tile(bc[:, ks], bs_[:, pl.ds(i * (tk // fb.block_size), tk // fb.block_size)], bt[...], fb)
        prod = lax.dot_general(a, b, _DOT_T, precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
        return acc + prod

    out[...] = lax.fori_loop(0, nk, step, jnp.zeros(out.shape, jnp.float32))


@functools.partial(jax.jit, static_argnames=("tiles", "backend"))
def qmatmul_pallas(a: QArray, b: QArray, *, tiles: MatTiles = MatTiles(), backend=None) -> jax.Array:
    """Pallas twin of qmatmul_ref: (M, N) float32."""
    k = check_operands(a, b)
    backend = pallas_quantize.default_backend() if backend is None else backend
    fa, fb = _stored_block(a.fmt, k), _stored_block(b.fmt, k)
    assert isinstance(fa.block_size, int) and isinstance(fb.block_size, int)  # check_operands: blocked formats
    tk = math.lcm(tiles.k, fa.block_size, fb.block_size)
    nk = -(-k // tk)
    tm, tn = pallas_quantize._fit(a.shape[0], tiles.m), pallas_quantize._fit(b.shape[0], tiles.n)
    grid = (-(-a.shape[0] // tm), -(-b.shape[0] // tn))
    ops_a = _kernel_operand(a, fa, grid[0] * tm, nk * tk)
    ops_b = _kernel_operand(b, fb, grid[1] * tn, nk * tk)
    row = lambda rows, cols, which: pl.BlockSpec((rows, cols), lambda i, j: (i if which == "a" else j, 0))
    one = pl.BlockSpec((1, 1), lambda i, j: (0, 0))
    specs = [row(tm, nk * tk, "a"), row(tm, nk * tk // fa.block_size, "a"), one]
    specs += [row(tn, nk * tk, "b"), row(tn, nk * tk // fb.block_size, "b"), one]
    y = pl.pallas_call(
        functools.partial(_kernel, fa, fb, tk, nk),
        out_shape=pallas_quantize.varying_like(
            jax.ShapeDtypeStruct((grid[0] * tm, grid[1] * tn), jnp.float32), [*ops_a, *ops_b], backend
        ),
        grid=grid,
        in_specs=specs,
        out_specs=pl.BlockSpec((tm, tn), lambda i, j: (i, j)),
        **pallas_quantize._compiler_kwargs(backend, pallas_quantize.Tiles(num_warps=tiles.num_warps)),
    )(*ops_a, *ops_b)
    return y[: a.shape[0], : b.shape[0]]

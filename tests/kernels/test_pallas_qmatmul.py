"""Quantized matmul on QArrays: reference == qdot_general's forward (bitwise); kernel == reference (float32 sums).

CPU: interpret mode on 3 x 2 grids. GPU (`-m gpu`): the Triton kernel on a realistic shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lowbit_jax as lb
from lowbit_jax import kernels
from lowbit_jax.kernels import pallas_qmatmul as pm

PAIRS = [("mxfp8", "mxfp8"), ("mxint8", "mxint8"), ("nvfp4", "nvfp4"), ("mxfp4", "nvint4")]
ON_GPU = jax.default_backend() == "gpu"
DOT_T = (((1,), (1,)), ((), ()))


def operands(m: int, n: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float32) * np.exp2(rng.integers(-6, 6, (m, 1))).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(rng.standard_normal((n, k)).astype(np.float32))


def assert_close_sums(got, want, k: int) -> None:
    """Equal up to float32 reordering of K products: |diff| <= K ulp of the largest |product| sum."""
    got, want = np.asarray(got), np.asarray(want)
    tol = k * np.finfo(np.float32).eps * np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)


@pytest.mark.parametrize("fa,fb", PAIRS)
def test_reference_is_qdot_forward_and_kernel_matches(fa, fb):
    x, w = operands(40, 24, 100)

    @jax.jit
    def refs(x, w):
        qa, qb = lb.quantize(x, fa), lb.quantize(w, fb)
        return qa, qb, pm.qmatmul_ref(qa, qb), lb.qdot_general(x, w, DOT_T, lb.QDotConfig(x_fwd=fa, w_fwd=fb))

    qa, qb, want, qdot = refs(x, w)
    np.testing.assert_array_equal(np.asarray(want), np.asarray(qdot))
    got = kernels.qmatmul(qa, qb, impl="pallas", tiles=pm.MatTiles(m=16, n=16, k=64))
    assert got.shape == (40, 24) and got.dtype == jnp.float32
    assert_close_sums(got, want, 100)


def test_block_longer_than_k_is_clamped_in_the_kernel_too():
    """A QArray stores a block longer than K clamped to K; the kernel tiles by that block, not by the format's
    (block_size 2^26 on K = 40 once padded every row to 2^26 codes)."""
    x, w = operands(8, 16, 40, 3)
    fa = lb.get_format("mxfp8", block_size=2**26)
    qa, qb = lb.quantize(x, fa), lb.quantize(w, "mxint8")
    assert pm._kernel_operand(qa, pm._stored_block(fa, 40), 8, 640)[0].shape == (8, 640)
    got = kernels.qmatmul(qa, qb, impl="pallas", tiles=pm.MatTiles(m=8, n=16, k=64))
    assert_close_sums(got, pm.qmatmul_ref(qa, qb), 40)


def test_errors_and_auto():
    x, w = operands(8, 8, 64)
    qa, qw, q32, qx0 = jax.jit(
        lambda x, w: (
            lb.quantize(x, "mxfp8"),
            lb.quantize(w, "mxfp8"),
            lb.quantize(w[:, :32], "mxfp8"),
            lb.quantize(x, "mxfp8", axis=0),
        )
    )(x, w)
    with pytest.raises(ValueError, match="K = 64"):
        pm.qmatmul_ref(qa, q32)
    with pytest.raises(ValueError, match="blocked format quantized along axis 1"):
        pm.qmatmul_ref(qx0, qa)
    if not ON_GPU:  # auto: XLA off GPUs
        np.testing.assert_array_equal(np.asarray(kernels.qmatmul(qa, qw)), np.asarray(jax.jit(pm.qmatmul_ref)(qa, qw)))


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a GPU")
@pytest.mark.parametrize("fa,fb", PAIRS)
def test_gpu_qmatmul_kernel(fa, fb):
    x, w = operands(512, 384, 1056)
    qa, qb = lb.quantize(x, fa), lb.quantize(w, fb)
    got = pm.qmatmul_pallas(qa, qb, backend="triton")
    assert_close_sums(got, jax.jit(pm.qmatmul_ref)(qa, qb), 1056)

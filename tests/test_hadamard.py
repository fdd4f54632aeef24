"""Hadamard rotation: orthogonality, block-diagonal application, invariance of products, crest-factor reduction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowbit_jax import hadamard


def crest(x_f32: np.ndarray, block: int) -> np.ndarray:
    """max|x| / rms of each block of `block` consecutive elements along the last axis."""
    b = x_f32.reshape(x_f32.shape[:-1] + (-1, block))
    return np.abs(b).max(-1) / np.sqrt((b * b).mean(-1))


@pytest.mark.parametrize("h", [1, 2, 16, 128])
def test_random_hadamard_is_orthogonal_with_entries_pm_inv_sqrt_h(h):
    R = np.asarray(hadamard.random_hadamard(h, jax.random.key(0)), np.float64)
    np.testing.assert_allclose(R @ R.T, np.eye(h), atol=1e-6)
    np.testing.assert_allclose(np.abs(R), 1 / np.sqrt(h), rtol=1e-6)


def test_sylvester_and_sign_structure():
    H = hadamard.sylvester(8)
    np.testing.assert_array_equal(H @ H.T, 8 * np.eye(8))
    R = np.asarray(hadamard.random_hadamard(8, jax.random.key(3)))
    signs = np.sign(R[:, 0])  # R = diag(d) H / sqrt(h) and H's first column is all ones
    np.testing.assert_allclose(R, signs[:, None] * H / np.sqrt(8), rtol=1e-6)


def test_seeded_signs():
    a = hadamard.random_hadamard(32, jax.random.key(1))
    np.testing.assert_array_equal(a, hadamard.random_hadamard(32, jax.random.key(1)))
    assert not np.array_equal(a, hadamard.random_hadamard(32, jax.random.key(2)))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_rotate_is_block_diagonal_matmul(axis):
    x = np.asarray(np.random.default_rng(0).standard_normal((16, 32, 8)).astype(np.float32))
    key = jax.random.key(5)
    h = 8
    R = np.asarray(hadamard.random_hadamard(h, key), np.float64)
    xm = np.moveaxis(x, axis, -1).astype(np.float64)
    expect = (xm.reshape(xm.shape[:-1] + (-1, h)) @ R).reshape(xm.shape)
    got = hadamard.rotate(x, h, key, axis=axis)
    np.testing.assert_allclose(np.moveaxis(np.asarray(got), axis, -1), expect, atol=1e-5)
    back = hadamard.rotate(got, h, key, axis=axis, inverse=True)
    np.testing.assert_allclose(back, x, atol=1e-5)


def test_rotation_leaves_products_unchanged_and_keeps_dtype():
    rng = np.random.default_rng(0)
    x, w = (
        jnp.asarray(rng.standard_normal((8, 64)), jnp.float32),
        jnp.asarray(rng.standard_normal((16, 64)), jnp.float32),
    )
    key = jax.random.key(7)
    xr, wr = hadamard.rotate(x, 32, key), hadamard.rotate(w, 32, key)
    f64 = lambda a: np.asarray(a, np.float64)  # numpy products: a GPU's default jnp matmul rounds inputs to TF32
    np.testing.assert_allclose(f64(xr) @ f64(wr).T, f64(x) @ f64(w).T, atol=1e-4)
    assert hadamard.rotate(x.astype(jnp.bfloat16), 16, key).dtype == jnp.bfloat16


def test_rotation_lowers_crest_factor_of_outliers():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 256)).astype(np.float32)
    x[np.arange(64), rng.integers(0, 256, 64)] *= 30.0  # one outlier per row
    before = crest(x, 32)
    after = crest(np.asarray(hadamard.rotate(x, 32, jax.random.key(1))), 32)
    assert np.median(after) < np.median(before)
    assert after.max() < 0.7 * before.max()  # an isolated outlier has crest ~sqrt(32) = 5.7


@pytest.mark.parametrize("h", [0, 3, 24, -4, 2.0])
def test_size_must_be_power_of_two(h):
    with pytest.raises(ValueError, match="power of two"):
        hadamard.rotate(jnp.ones((4, 48)), h, jax.random.key(0))


def test_size_must_divide_axis():
    with pytest.raises(ValueError, match="does not divide"):
        hadamard.rotate(jnp.ones((4, 48)), 32, jax.random.key(0))

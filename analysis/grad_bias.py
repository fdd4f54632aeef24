"""Gradient-bias statistics. The paper's Algorithm 1: how often x / (x / 127) lands on 128 in low precision."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lowbit_jax.rounding import div_exact

PROBE_DTYPES = ("bfloat16", "float16", "float32")


def _in_dtype(a: jax.Array, dtype) -> jax.Array:
    """Round float32 `a` to `dtype` and back: one operation evaluated in that precision (as PyTorch does)."""
    return a.astype(dtype).astype(jnp.float32)


@jax.jit(static_argnames=("dtype",))
def overflow_fraction(d: jax.Array, dtype: str) -> jax.Array:
    """Fraction of elements with round(D / S) == 128 where S = D / 127, every step rounded to `dtype`.

    Paper Algorithm 1 / Table 11 (BF16 16.82%, FP16 0.02%, FP32 0). Divisions are correctly rounded float32,
    then rounded to `dtype`, which is how PyTorch evaluates bf16/fp16 arithmetic on the CPU.
    """
    d = _in_dtype(d, dtype)
    s = _in_dtype(div_exact(d, jnp.float32(127.0)), dtype)
    ratio = _in_dtype(div_exact(jnp.abs(d), jnp.abs(s)), dtype)
    return jnp.mean((jnp.round(ratio) == 128.0).astype(jnp.float32))


def overflow_probe(key: jax.Array, shape=(4096, 4096), dtypes=PROBE_DTYPES) -> dict[str, float]:
    """Algorithm 1 on D ~ N(0, 1) of `shape`: {dtype: fraction mapped to 128}."""
    d = jax.random.normal(key, shape, jnp.float32)
    return {dt: float(overflow_fraction(d, dt)) for dt in dtypes}

"""Timing of jitted calls for the throughput benchmarks: median seconds per call, GB/s, the timed inputs and functions.

A kernel that does not lower on the backend in use is recorded (time_case: NaN and its error) instead of ending the
benchmark, so that one failing case does not lose the others.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax

import lowbit_jax as lb
from lowbit_jax import kernels


def median_seconds(fn, x, repeats: int, batch: int = 1) -> float:
    """Median over `repeats` batches of the time per call of fn(x), after one warm-up (compile) run.

    A batch queues `batch` calls back to back and waits once, so the host's dispatch and synchronisation
    (tens of microseconds on a GPU, a sizeable part of a 0.2 ms kernel) overlap the device work.
    """
    jax.block_until_ready(fn(x))
    # freeing the outputs is part of a call's cost (on a CPU, a few ms for 64 MB), as for one call
    return statistics.median(batch_seconds(fn, x, batch) for _ in range(repeats))


def time_case(fn, x, repeats: int, batch: int) -> tuple[float, str]:
    """(median seconds per call, "") or, for a kernel that does not lower on this backend, (NaN, its error)."""
    try:
        return median_seconds(fn, x, repeats, batch), ""
    except Exception as err:  # record it and keep going: one failing kernel must not lose the other rows
        return float("nan"), f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"


def batch_seconds(fn, x, batch: int) -> float:
    """Seconds per call of one batch of `batch` back-to-back calls (see median_seconds)."""
    t0 = time.perf_counter()
    ys = [fn(x) for _ in range(batch)]
    jax.block_until_ready(ys)
    del ys
    return (time.perf_counter() - t0) / batch


def interleaved_seconds(cases: list[tuple], repeats: int, batch: int) -> list[tuple[list[float], str]]:
    """Per case (fn, x): ([seconds per call in each round], "") or ([], the error of a case that does not lower).

    Every case is compiled and run once first; then `repeats` rounds each time one batch of every case in turn, so
    that a slow spell of a shared machine (the copy of a 64 MB array varies 18-30 ms from minute to minute on the
    2-core VMs) hits all cases of a round alike: ratios taken within a round cancel it."""
    out: list[tuple[list[float], str]] = []
    for fn, x in cases:
        try:
            jax.block_until_ready(fn(x))
            out.append(([], ""))
        except Exception as err:  # record it and keep going: one failing kernel must not lose the other rows
            out.append(([], f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"))
    for _ in range(repeats):
        for (fn, x), (times, error) in zip(cases, out):
            if not error:
                times.append(batch_seconds(fn, x, batch))
    return out


def bench_input(size: int, dtype: str, seed: int, device=None) -> jax.Array:
    """The (size, size) standard-normal array that every case of one dtype times."""
    x = jax.random.normal(jax.random.key(seed), (size, size), jnp.float32).astype(dtype)
    return x if device is None else jax.device_put(x, device)


def gbps(x: jax.Array, seconds: float) -> float:
    """GB/s counting one read of x and one write of a result of the same size."""
    return 2 * x.nbytes / seconds / 1e9


def quant_fn(name: str, impl: str, tiles=None):
    """jit(fake_quant) of one format through one implementation (`tiles`: the Pallas kernel's, None: default)."""
    if impl == "xla":
        return jax.jit(lambda v: lb.fake_quant(v, name))
    return jax.jit(lambda v: kernels.fake_quant(v, name, impl="pallas", tiles=tiles))


NAIVE_BLOCK = 32


def naive_mxint8(x: jax.Array) -> jax.Array:
    """A speed yardstick, not a quantizer to trust: the minimal single-rule MXINT8 in plain jnp. Blocks of 32 along
    the last axis (whose length they must divide), block amax, the power-of-two scale 2^(floor(log2 amax) - 6) built
    from the amax's exponent bits, round half to even, clip to +-127, rescale. No NaN / Inf blocks, no subnormal
    amax, no padding, no other rule: what a block quantizer costs at the least, measured in the same run."""
    x32 = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, NAIVE_BLOCK)
    amax = jnp.max(jnp.abs(x32), axis=-1, keepdims=True)
    biased = (lax.bitcast_convert_type(amax, jnp.int32) >> 23) & 0xFF
    exponent = jnp.clip(biased - 6, 1, 254)  # 2^(e - 6) as a float32 exponent field, kept normal
    scale = lax.bitcast_convert_type(exponent << 23, jnp.float32)
    inverse = lax.bitcast_convert_type((254 - exponent) << 23, jnp.float32)  # exactly 1 / scale
    q = jnp.clip(jnp.round(x32 * inverse), -127.0, 127.0)
    return (q * scale).reshape(x.shape).astype(x.dtype)

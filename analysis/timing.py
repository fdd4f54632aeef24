"""Timing of jitted calls for the throughput benchmarks: median seconds per call, GB/s, the timed inputs and functions.

A kernel that does not lower on the backend in use is recorded (time_case: NaN and its error) instead of ending the
benchmark, so that one failing case does not lose the others.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

import lowbit_jax as lb
from lowbit_jax import kernels


def median_seconds(fn, x, repeats: int, batch: int = 1) -> float:
    """Median over `repeats` batches of the time per call of fn(x), after one warm-up (compile) run.

    A batch queues `batch` calls back to back and waits once, so the host's dispatch and synchronisation
    (tens of microseconds on a GPU, a sizeable part of a 0.2 ms kernel) overlap the device work.
    """
    jax.block_until_ready(fn(x))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ys = [fn(x) for _ in range(batch)]
        jax.block_until_ready(ys)
        del ys  # freeing the outputs is part of a call's cost (on a CPU, a few ms for 64 MB), as for one call
        times.append((time.perf_counter() - t0) / batch)
    return statistics.median(times)


def time_case(fn, x, repeats: int, batch: int) -> tuple[float, str]:
    """(median seconds per call, "") or, for a kernel that does not lower on this backend, (NaN, its error)."""
    try:
        return median_seconds(fn, x, repeats, batch), ""
    except Exception as err:  # record it and keep going: one failing kernel must not lose the other rows
        return float("nan"), f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"


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

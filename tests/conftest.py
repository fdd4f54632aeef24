"""Strict JAX configuration for the whole suite, plus the independent oracles the core tests share.

Oracles here never call lowbit_jax: ml_dtypes numpy casts of clipped values (element rounding), gfloat 0.5.2
(`round_ndarray` on float64 for MX blocks), and a numpy float32 transcription of the NV two-level rule (docs/formats.md,
section "E4M3 with an FP32 tensor scale"). docs/theory.md, section "Test oracles" describes them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import platform
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
from gfloat import FormatInfo, RoundMode, round_ndarray
from gfloat.formats import (
    format_info_ocp_e2m1,
    format_info_ocp_e2m3,
    format_info_ocp_e3m2,
    format_info_ocp_e4m3,
    format_info_ocp_e5m2,
    format_info_ocp_int8,
)
from hypothesis import HealthCheck, settings

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


def _compilation_cache_dir() -> Path:
    """A persistent XLA cache folder per jax version and host CPU (model and feature flags), under .pytest_cache/."""
    cpu = ""
    if Path("/proc/cpuinfo").exists():
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
        cpu = "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    host = hashlib.sha256(f"{platform.machine()} {platform.processor()} {cpu}".encode()).hexdigest()[:12]
    return Path(__file__).resolve().parents[1] / ".pytest_cache" / f"jax-{jax.__version__}-{host}"


# Compiled executables persist between runs, so the second run of the fast loop skips most XLA compilation (about
# half its time); the key covers the computation, the jax version and the CPU. LOWBIT_JAX_TEST_CACHE=0 turns it off.
if os.environ.get("LOWBIT_JAX_TEST_CACHE", "1") != "0":
    jax.config.update("jax_compilation_cache_dir", str(_compilation_cache_dir()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

settings.register_profile(
    "lowbit", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("lowbit")

import lowbit_jax as lb  # noqa: E402  (after the config updates)
from tests.fuzz_oracle import gfloat_elem  # noqa: E402

# --- element types: (exp_bits, man_bits) -> ml_dtypes dtype and gfloat format info --------------------------------

ML_DTYPES = {  # (exp_bits, man_bits, special) -> ml_dtypes dtype with the same value set
    (4, 3, "fn"): ml_dtypes.float8_e4m3fn,
    (5, 2, "ieee"): ml_dtypes.float8_e5m2,
    (2, 3, "none"): ml_dtypes.float6_e2m3fn,
    (3, 2, "none"): ml_dtypes.float6_e3m2fn,
    (2, 1, "none"): ml_dtypes.float4_e2m1fn,
    (3, 4, "ieee"): ml_dtypes.float8_e3m4,
    (4, 3, "ieee"): ml_dtypes.float8_e4m3,
}


def gfloat_fp(exp_bits: int, man_bits: int, special: str) -> FormatInfo:
    """gfloat description of FP(e, m) with lowbit_jax's special-value convention ("none", "fn" or "ieee")."""
    return gfloat_elem(exp_bits, man_bits, special)


def gfloat_int(bits: int):
    """gfloat INT(b) element in OCP's MXINT convention: k/2^(b-2), range [-2, 2 - 2^-(b-2)] (gfloat's int8, b bits)."""
    return dataclasses.replace(format_info_ocp_int8, k=bits, precision=bits)


GFLOAT_FI = {
    "mxfp8_e4m3": format_info_ocp_e4m3,
    "mxfp8_e5m2": format_info_ocp_e5m2,
    "mxfp6_e2m3": format_info_ocp_e2m3,
    "mxfp6_e3m2": format_info_ocp_e3m2,
    "mxfp4": format_info_ocp_e2m1,
    "mxint8": gfloat_int(8),
    "mxint6": gfloat_int(6),
    "mxint4": gfloat_int(4),
}
MX_FORMATS = list(GFLOAT_FI)


def ml_round(v, elem) -> np.ndarray:
    """ml_dtypes' RNE cast of the value clipped to +-max (float32 in, float32 out)."""
    v = np.clip(np.asarray(v, np.float32), -elem.max, elem.max)
    return v.astype(ML_DTYPES[(elem.exp_bits, elem.man_bits, elem.special)]).astype(np.float32)


def bits32(x) -> np.ndarray:
    """uint32 view of a float32 array (compares values bit for bit, so -0.0 != +0.0 and NaN == same NaN)."""
    return np.asarray(x, np.float32).view(np.uint32)


def assert_same_bits(actual, expected, what: str = "") -> None:
    """Bitwise float32 equality with a readable report of the first mismatches (any NaN counts as NaN)."""
    a, e = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    assert a.shape == e.shape, (a.shape, e.shape)
    same = (bits32(a) == bits32(e)) | (np.isnan(a) & np.isnan(e))
    if not same.all():
        idx = np.argwhere(~same)[:8]
        rows = [f"{tuple(i)}: got {a[tuple(i)]!r} expected {e[tuple(i)]!r}" for i in idx]
        raise AssertionError(f"{what}: {int((~same).sum())} of {a.size} differ\n" + "\n".join(rows))


# --- MX oracle (gfloat 0.5.2 round_ndarray), float64 ---------------------------------------------------------------


def mx_scale_exponent(amax: np.ndarray, name: str, rule: str) -> np.ndarray:
    """Scale exponent per block on gfloat's element grid, float64 arithmetic (exact for float32 amax).

    floor: OCP floor(log2 amax) - emax_elem; ceil: paper Eq. 9 ceil(log2(amax / Qmax)); round: nearest integer.
    The [-127, 127] clamp applies to OCP's shared scale X, the E8M0 byte (for MXINT: the scale of the fixed-point
    elements k / 2^(b-2), gfloat's grid); an all-zero block gets byte 0. It only matters beyond 2^+-120.
    """
    fi = GFLOAT_FI[name]
    safe = np.where(amax > 0, amax, 1.0)
    if rule == "floor":
        e = np.floor(np.log2(safe)) - fi.emax
    elif rule == "ceil":
        e = np.ceil(np.log2(safe / fi.max))
    else:
        e = np.round(np.log2(safe / fi.max))
    return np.where(amax > 0, np.clip(e, -127, 127), -127)


def mx_reference(x, name: str, rule: str = "ceil", block: int = 32, asymmetric: bool = False) -> np.ndarray:
    """Fake-quantize float64 `x` in blocks along the last axis (zero-padded, cropped) with gfloat RNE elements.

    INT elements: gfloat's two's-complement grid reaches -2.0; the symmetric contract clips to +-max instead.
    Blocks holding NaN or Inf are all-NaN (docs/formats.md#edge-cases; gfloat itself maps Inf blocks differently).
    """
    fi = GFLOAT_FI[name]
    x = np.asarray(x, np.float64)
    n = x.shape[-1]
    pad = -n % block
    xp = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    xb = xp.reshape(*xp.shape[:-1], -1, block)
    finite = np.isfinite(xb).all(axis=-1, keepdims=True)
    xb = np.where(finite, xb, 0.0)
    amax = np.abs(xb).max(axis=-1, keepdims=True)
    e = mx_scale_exponent(amax, name, rule)
    q = round_ndarray(fi, xb / 2.0**e, RoundMode.TiesToEven, sat=True)
    if name.startswith("mxint") and not asymmetric:
        q = np.clip(q, -fi.max, fi.max)
    y = np.where(finite, q * 2.0**e, np.nan)
    return y.reshape(xp.shape)[..., :n]


# --- NV oracle: the two-level rule of docs/formats.md in numpy float32 (IEEE division) ----------------------------

E4M3_MAX = np.float32(448.0)


def nv_elem_round(v: np.ndarray, kind: str, qmax: float) -> np.ndarray:
    """RNE saturating element rounding: ml_dtypes E2M1 cast of the clipped value, or round-half-even for INT4."""
    v = np.clip(v, -qmax, qmax)
    if kind == "fp":
        return v.astype(ml_dtypes.float4_e2m1fn).astype(np.float32)
    r = np.round(v).astype(np.float32)  # numpy rounds half to even
    return np.where(r == 0, np.float32(0), r)  # INT codes have no -0


def nv_reference(x, kind: str, block: int = 16) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """(fake-quantized x, float32 E4M3 block scales, tensor scale g) along the last axis, all in numpy float32.

    g = amax / (Qmax * 448) (1 for an all-zero tensor); s = E4M3_RNE(clip(amax_b / Qmax / g, 0, 448));
    element = RNE_sat(x / (s * g)); value = element * (s * g); a zero scale gives zeros with x's sign.
    """
    qmax = np.float32(6.0 if kind == "fp" else 7.0)
    x = np.asarray(x, np.float32)
    n = x.shape[-1]
    xp = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, -n % block)])
    xb = xp.reshape(*xp.shape[:-1], -1, block)
    finite = np.isfinite(xb).all(axis=-1, keepdims=True)
    amax = np.abs(np.where(finite, xb, np.float32(0))).max(axis=-1, keepdims=True)
    amax_t = amax.max()
    g = amax_t / (qmax * E4M3_MAX) if amax_t > 0 else np.float32(1.0)
    g = np.float32(max(g, np.float32(2.0**-126))) if amax_t > 0 else g
    s = np.clip(amax / qmax / g, 0, E4M3_MAX).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    d = s * g
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(d > 0, xb / d, np.copysign(np.float32(0), xb))
    q = nv_elem_round(v.astype(np.float32), kind, float(qmax))
    y = np.where(finite, q * d, np.float32(np.nan)).astype(np.float32)
    s = np.where(finite, s, np.float32(np.nan))
    return y.reshape(xp.shape)[..., :n], s[..., 0], np.float32(g)


# --- jitted entry points (one compilation per format, shape and dtype; XLA:CPU compiles cost ~0.1-0.5 s) -----------


def _canon(fmt):
    """Format objects for every name (aliases and names share one jit cache entry)."""
    return lb.get_format(fmt) if isinstance(fmt, str) else fmt


@functools.cache
def _jit_fake_quant():
    return jax.jit(lb.fake_quant, static_argnames=("fmt", "axis"))


@functools.cache
def _jit_quantize():
    return jax.jit(lb.quantize, static_argnames=("fmt", "axis"))


@functools.cache
def _jit_dequantize():
    return jax.jit(lb.dequantize)


def fq(x, fmt, axis: int = -1, key=None) -> np.ndarray:
    """Jitted fake_quant as a numpy array."""
    return np.asarray(_jit_fake_quant()(x, fmt=_canon(fmt), axis=axis, key=key))


def qz(x, fmt, axis: int = -1, key=None):
    """Jitted quantize (a QArray)."""
    return _jit_quantize()(x, fmt=_canon(fmt), axis=axis, key=key)


def dq(q) -> np.ndarray:
    """Jitted dequantize as a numpy array."""
    return np.asarray(_jit_dequantize()(q))


@functools.cache
def _fq_many(fmts: tuple):
    return jax.jit(lambda x: tuple(lb.fake_quant(x, f) for f in fmts))


def fq_many(x, fmts) -> list[np.ndarray]:
    """fake_quant of x under several formats in one compilation."""
    return [np.asarray(y) for y in _fq_many(tuple(_canon(f) for f in fmts))(x)]


def heavy_blocks(rng: np.random.Generator, rows: int, n: int, block: int, lo: int = -20, hi: int = 20) -> np.ndarray:
    """float32 test data: Gaussian, Student-t and uniform entries, each block with its own power-of-two magnitude."""
    kind = rng.integers(0, 3, size=(rows, n))
    vals = np.where(kind == 0, rng.normal(size=(rows, n)), rng.standard_t(2, size=(rows, n)))
    vals = np.where(kind == 2, rng.uniform(-1, 1, size=(rows, n)), vals)
    nb = -(-n // block)
    mag = 2.0 ** rng.integers(lo, hi, size=(rows, nb)).repeat(block, axis=1)[:, :n]
    return (vals * mag).astype(np.float32)


# --- the fast loop ------------------------------------------------------------------------------------------------
FAST_PARAMS = 3  # parameter sets of one test that `-m "not slow"` runs: the first, the middle and the last


def _spread(n: int, k: int) -> set[int]:
    """k indices spread evenly over range(n), both ends included (all of them when n <= k)."""
    if n <= k:
        return set(range(n))
    return {round(i * (n - 1) / (k - 1)) for i in range(k)}


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark slow every parameter set of a parametrized test beyond FAST_PARAMS spread over its list, so the fast loop
    samples each test's cases while the whole suite runs all of them."""
    groups: dict[tuple[str, str], list[pytest.Item]] = {}
    for item in items:
        if getattr(item, "callspec", None) is not None:
            groups.setdefault((str(item.path), item.originalname), []).append(item)
    for members in groups.values():
        keep = _spread(len(members), FAST_PARAMS)
        for i, item in enumerate(members):
            if i not in keep:
                item.add_marker(pytest.mark.slow)

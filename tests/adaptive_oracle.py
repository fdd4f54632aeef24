"""Independent numpy float32 transcription of the per-block adaptive formats and their selection rule.

Written from the definitions alone, never from lowbit_jax's adaptive code: IF4 / IF6 ("Adaptive Block-Scaled Data
Types", arXiv 2603.28765: an FP candidate and an INT grid stretched to the FP maximum, sharing one E4M3 block scale
and an FP32 tensor scale), MXIF4/6/8 (MXFP vs MXINT, each with its own UE8M0 ceil scale, block 32) and Four Over
Six (arXiv 2512.02010: E2M1 with the block amax mapped to 6 or to 4, tensor bound 256 instead of 448).

Arithmetic: numpy float32 operations (correctly rounded IEEE) with every result flushed to zero below 2^-126, the
way XLA:CPU treats float32 subnormals; ml_dtypes casts of clipped values for the E4M3 / E2M1 / E2M3 RNE grids; the
INT grids w_k = fl32(Q k / N) rounded directly from the exact rational with fractions.Fraction; nearest-w_k
rounding decided against the exact midpoints (float64 sums of two float32 grid values, which are exact). MX
candidates use the gfloat oracle of tests/conftest.py (float64, exact for these values).
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import ml_dtypes
import numpy as np

from tests.conftest import mx_reference

F32 = np.float32
TINY = F32(2.0**-126)
E4M3_MAX = F32(448.0)
SELECTS = ("mse", "mae", "absmax")


def ftz(a) -> np.ndarray:
    """Flush float32 subnormals to zero with their sign (XLA:CPU's treatment of inputs and results)."""
    a = np.asarray(a, F32)
    return np.where(np.abs(a) < TINY, np.copysign(F32(0.0), a), a).astype(F32)


def fraction_to_f32(q: Fraction) -> np.float32:
    """The float32 nearest to the rational q, ties to even significand (normal range), without float64 rounding."""
    if q == 0:
        return F32(0.0)
    a = abs(q)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    if not -126 <= e <= 127:
        raise ValueError(f"{q} is outside float32's normal range")
    ulp = Fraction(2) ** (e - 23)
    m = a / ulp  # in [2^23, 2^24)
    k = math.floor(m)
    rem = m - k
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and k % 2 == 1):
        k += 1
    value = k * ulp  # at most 24 significant bits: exact in float64 and in float32
    return F32(math.copysign(float(value), float(q)))


def int_grid(qmax: Fraction, n: int) -> np.ndarray:
    """The stretched INT grid w_k = fl32(qmax * k / n) for k = -n..n, ascending (index i holds k = i - n)."""
    return np.array([fraction_to_f32(qmax * k / n) for k in range(-n, n + 1)], F32)


IF4_GRID = int_grid(Fraction(6), 7)
IF6_GRID = int_grid(Fraction(15, 2), 31)


def round_to_grid(v: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(w_k, k) nearest to each float32 v on an ascending symmetric grid; exact ties go to the even k; saturating.

    Non-finite v give k = 0 (the caller masks those blocks)."""
    n = (grid.size - 1) // 2
    mids = (grid[:-1].astype(np.float64) + grid[1:].astype(np.float64)) / 2  # exact
    v64 = np.where(np.isfinite(v), v, 0.0).astype(np.float64)
    idx = np.searchsorted(mids, v64, side="left")  # number of midpoints strictly below v
    on_mid = (idx < mids.size) & (mids[np.minimum(idx, mids.size - 1)] == v64)
    lower_k = idx - n  # on a midpoint, idx is the lower neighbour and idx + 1 the upper
    idx = np.where(on_mid & (lower_k % 2 != 0), idx + 1, idx)
    return grid[idx], (idx - n).astype(np.int32)


def fp_round(v: np.ndarray, elem: str) -> np.ndarray:
    """RNE saturating E2M1 / E2M3 rounding: the ml_dtypes cast of the value clipped to +-max (float32 out)."""
    dtype, vmax = {"e2m1": (ml_dtypes.float4_e2m1fn, 6.0), "e2m3": (ml_dtypes.float6_e2m3fn, 7.5)}[elem]
    return np.clip(v, -vmax, vmax).astype(dtype).astype(F32)


@dataclasses.dataclass(frozen=True)
class NVCandidate:
    """An NV-style candidate: block 16, s = E4M3_RNE_sat(fl(fl(amax_b / scale_q) / g)), g = amax_t / (tensor_q * bound).

    elem: "e2m1" / "e2m3" (FP elements) or "int4" / "int6" (the stretched grids IF4_GRID / IF6_GRID)."""

    elem: str
    scale_q: float
    tensor_q: float
    bound: float = 448.0
    block: int = 16


@dataclasses.dataclass(frozen=True)
class NVResult:
    """Per-block arrays (..., nb) and per-element arrays (..., nb, block) of one NV candidate, padded layout."""

    y: np.ndarray  # dequantized float32 (NaN for non-finite blocks)
    elements: np.ndarray  # float32 element values (FP value or w_k)
    k: np.ndarray | None  # int32 grid index for INT grids
    scales: np.ndarray  # float32 E4M3 block scale (NaN for non-finite blocks)
    g: np.float32  # tensor scale
    finite: np.ndarray  # bool per block


def to_blocks(x: np.ndarray, block: int) -> np.ndarray:
    """(..., n) -> (..., nb, block), zero-padded at the end of the last axis."""
    n = x.shape[-1]
    xp = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, -n % block)])
    return xp.reshape(*xp.shape[:-1], -1, block)


def from_blocks(xb: np.ndarray, n: int) -> np.ndarray:
    """Inverse of to_blocks, cropped to n elements."""
    return xb.reshape(*xb.shape[:-2], -1)[..., :n]


def nv_candidate(x: np.ndarray, c: NVCandidate) -> NVResult:
    """Fake-quantize float32 x along its last axis with one NV-style candidate (padded block layout)."""
    xb = ftz(to_blocks(np.asarray(x, F32), c.block))
    finite = np.isfinite(xb).all(axis=-1)
    xz = np.where(finite[..., None], xb, F32(0.0))
    amax_b = np.abs(xz).max(axis=-1)
    amax_t = amax_b.max() if amax_b.size else F32(0.0)
    if amax_t > 0:
        g = F32(max(F32(amax_t / (F32(c.tensor_q) * F32(c.bound))), TINY))
    else:
        g = F32(1.0)
    t = ftz(ftz(amax_b / F32(c.scale_q)) / g)
    s = np.clip(t, 0, E4M3_MAX).astype(ml_dtypes.float8_e4m3fn).astype(F32)
    d = ftz(s * g)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(d > 0, ftz(xz / d), np.copysign(F32(0.0), xz))
    if c.elem in ("e2m1", "e2m3"):
        q, k = fp_round(v, c.elem), None
    else:
        q, k = round_to_grid(v, IF4_GRID if c.elem == "int4" else IF6_GRID)  # k = 0 gives +0 (no -0 code)
    y = np.where(finite[..., None], ftz(q * d), F32(np.nan)).astype(F32)
    return NVResult(y, q, k, np.where(finite, s, F32(np.nan)).astype(F32), g, finite)


# --- the adaptive formats: candidates by definition, and the lowbit_jax names of the same candidates ---------------

NV_CANDIDATES = {
    "if4": (NVCandidate("e2m1", 6.0, 6.0), NVCandidate("int4", 6.0, 6.0)),
    "if6": (NVCandidate("e2m3", 7.5, 7.5), NVCandidate("int6", 7.5, 7.5)),
    "nvfp4_4over6": (NVCandidate("e2m1", 6.0, 6.0, 256.0), NVCandidate("e2m1", 4.0, 6.0, 256.0)),
}
MX_CANDIDATES = {
    "mxif4": ("mxfp4", "mxint4"),
    "mxif6": ("mxfp6_e2m3", "mxint6"),
    "mxif8": ("mxfp8_e4m3", "mxint8"),
}
CANDIDATE_NAMES = {
    "if4": ("nvfp4", "if4_int"),
    "if6": ("nvfp6", "if6_int"),
    "nvfp4_4over6": ("nvfp4_to6", "nvfp4_to4"),
    **MX_CANDIDATES,
}
ADAPTIVE = tuple(CANDIDATE_NAMES)
BLOCK = {name: 16 if name in NV_CANDIDATES else 32 for name in ADAPTIVE}


def mx_candidate(x: np.ndarray, name: str) -> np.ndarray:
    """Fake-quantized float32 x (padded block layout) of a plain MX format with the ceil scale rule (gfloat oracle)."""
    y = mx_reference(np.asarray(x, F32), name, "ceil", block=32).astype(F32)
    return ftz(to_blocks(y, 32))


def candidate_blocks(x: np.ndarray, fmt: str) -> list[np.ndarray]:
    """Each candidate's dequantized float32 blocks (..., nb, block) of the adaptive format `fmt`, along axis -1."""
    if fmt in NV_CANDIDATES:
        return [nv_candidate(x, c).y for c in NV_CANDIDATES[fmt]]
    return [mx_candidate(x, name) for name in MX_CANDIDATES[fmt]]


# --- selection -------------------------------------------------------------------------------------------------------


def tree_sum(a: np.ndarray) -> np.ndarray:
    """float32 sum over the last axis: zero-pad to a power of two, then add halves elementwise until one is left."""
    n = a.shape[-1]
    p = 1 << max(n - 1, 0).bit_length()
    a = np.pad(ftz(a), [(0, 0)] * (a.ndim - 1) + [(0, p - n)])
    while a.shape[-1] > 1:
        h = a.shape[-1] // 2
        a = ftz(a[..., :h] + a[..., h:])
    return a[..., 0]


def block_error(xb: np.ndarray, yb: np.ndarray, select: str) -> np.ndarray:
    """The metric per block: d = fl(x - y); mse: tree sum of fl(d^2); mae: tree sum of |d|; absmax: max |d|."""
    d = ftz(ftz(xb) - yb)
    if select == "mse":
        return tree_sum(ftz(d * d))
    if select == "mae":
        return tree_sum(np.abs(d))
    if select == "absmax":
        return np.abs(d).max(axis=-1)
    raise ValueError(select)


def choose(errors: list[np.ndarray], finite: np.ndarray) -> np.ndarray:
    """Index of the first candidate with the strictly lowest error per block (0 for non-finite blocks)."""
    best, choice = errors[0], np.zeros(errors[0].shape, np.int32)
    for c, err in enumerate(errors[1:], start=1):
        better = err < best  # NaN never wins
        choice = np.where(better, c, choice)
        best = np.where(better, err, best)
    return np.where(finite, choice, 0).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class AdaptiveResult:
    """Oracle output along axis -1: y (x's shape), choices (..., nb), candidate blocks and per-block errors."""

    y: np.ndarray
    choices: np.ndarray
    candidates: list[np.ndarray]
    errors: list[np.ndarray]
    finite: np.ndarray


def adaptive_reference(x: np.ndarray, fmt: str, select: str = "mse") -> AdaptiveResult:
    """The adaptive format `fmt` along the last axis of float32 x: per block the candidate of least error."""
    x = np.asarray(x, F32)
    xb = to_blocks(x, BLOCK[fmt])
    finite = np.isfinite(xb).all(axis=-1)
    cands = candidate_blocks(x, fmt)
    errors = [block_error(xb, yb, select) for yb in cands]
    choices = choose(errors, finite)
    yb = np.take_along_axis(np.stack(cands, axis=-2), choices[..., None, None], axis=-2)[..., 0, :]
    return AdaptiveResult(from_blocks(yb, x.shape[-1]), choices, cands, errors, finite)

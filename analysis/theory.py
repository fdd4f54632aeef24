"""QSNR theory of the paper's §4 / App. B: Theorem 1 (INT), Theorem 2 (FP) and the INT/FP crossover κ*.

Every formula of the paper's §4 lives here (NOTES.md §6). σ-units: X_i ~ N(0, σ²) i.i.d. in a block of g,
Z ~ N(0, 1), pdf φ, cdf Φ.

  QSNR  = −10·log10(‖X − Xq‖² / ‖X‖²) dB                                  (Eq. 10, 21)
  κ     = max|X| / σ, a free parameter                                     (Eq. 11, 15)
  s     = max|X| / Q_ref, stored scale s' = ρ·s                            (Eq. 17)
  INT(b), uniform noise Δ = s', E[e²] = Δ²/12, Q ≈ 2^(b−1)                 (Eq. 22–26)
    UE8M0: R = (ρκ)² / (12·Q²),  QSNR ≈ 4.78 + 6.02·b − 20·log10 ρ − 20·log10 κ           (Eq. 13)
    E4M3:  R = (ρκ)² / (12·Q²) · (g − 1)/g  (the block max is exact: + 10·log10(g/(g−1)) dB)  (Eq. 13)
  FP(E, M, B, Qmax): c = ρκ/Qmax = s'/σ, T_N/σ = τ1 = c·2^(1−B), S_min = 2^(1−B−M)
    α_M = 1 / (24·2^(2M))                normal-region relative error       (Eq. 34)
    E[e²·1{sub}] = s'²·S_min²/12 · p_sub  constant subnormal step           (Eq. 35–36)
    β = 2^(2(1−B−M)) / (12·Qmax²),  R = α_M·w_norm + β·(ρκ)²·p_sub          (Eq. 37–39)
    UE8M0: QSNR = −10·log10(α_M·w_norm + β·(ρκ)²·p_sub)                     (Eq. 40)
    ceiling (w_norm = 1, p_sub = 0): −10·log10 α_M = 13.80 + 6.02·M         (Eq. 41)
    E4M3:  QSNR = −10·log10(α_M·(w_norm − κ²/g) + β·κ²·p_sub)               (Eq. 43)
  Gaussian split (τ0 = c·2^(−B−M), half a subnormal step; authors' script, NOTES §6.4):
    w_norm = E[Z²·1{|Z| ≥ τ1}] = 2·[τ1·φ(τ1) + 1 − Φ(τ1)] = Q(3/2, τ1²/2)  (regularized upper gamma)
    p_sub  = P(τ0 ≤ |Z| < τ1)  = erf(τ1/√2) − erf(τ0/√2)
    w_zero = E[Z²·1{|Z| < τ0}] = 2·Φ(τ0) − 1 − 2·τ0·φ(τ0) = P(3/2, τ0²/2), energy flushed to zero

Variants (NOTES §6.5):
  "paper":     Eq. 13/40/43 as printed: ρ = 1.5 (UE8M0), 1 (E4M3); no w_zero; p_sub = P(|Z| < τ1) (τ0 = 0);
               no floor on w_norm − κ²/g; INT R = (ρκ)²/(12·4^(b−1)) (exact constant 4.771, printed 4.78).
  "reference": the authors' script model with the exact INT constant: ρ = 1.5, 1.05; R gains w_zero,
               p_sub excludes the flushed region, w_norm − κ²/g is floored at 0.
  "script":    the script as coded: "reference" with the MX-INT law 10.8 + 6.02·(b−1) − 20·log10 ρκ.
               Use crossover(..., method="grid") for its 600-point linear interpolation.
FP32 scales (per channel) are exact too: ρ = 1 and the κ²/g term when g is an int, else none.

Findings (checked against NOTES.md §6.5/§6.6 by re-derivation from the formulas above, nothing tuned):
  - Every κ* of NOTES §6.5 / §16.1 is reproduced: reference 7.5425/1.9579/2.0396/2.3899 (31.864/31.537/
    19.141/21.143 dB); paper 7.5425/1.9579/2.0397/2.4628; script with method="grid" 7.5459/1.9593/2.0415/
    2.3899. Script curves with exact roots give 7.5459/1.9592/2.0415/2.3899: the 600-point grid moves κ* by
    < 3e-5. "reference" with rho=1 for NV gives 2.4627 (NOTES §6.5 sensitivity line), and "paper" with
    rho=1.05 gives 2.38996: the NV gap between the variants is all ρ; w_zero and the narrowed p_sub offset.
  - The §6.6 curve table matches every entry to 0.01 dB for "reference" (INT "exact" rows) and "script".
    NOTES says "FP and NV rows are the same in every variant": true for those two, not for "paper", which
    moves the NV rows (ρ = 1: NVINT4 +0.42 dB; NVFP4 20.80 instead of 20.76 dB at κ = 2) and the MX-FP rows
    at large κ (no w_zero: MXFP4 7.27 instead of 7.45 dB at κ = 12).
  - The NVFP4 peak (23.246 dB at κ = 3.855) is the kink where w_norm − κ²/16 reaches 0 (κ = 3.8547).
  - Without the floor ("paper"), Eq. 43's normal term turns negative past κ = 3.872 for NVFP4 and the curve
    rises (28.40 dB at κ = 5) until R < 0 at κ ≈ 5.617 (NaN beyond). The printed model is meaningless there;
    its κ* (2.46) is far below. (A block's own RMS gives κ ≤ √g, but the model's σ is the population one.)
  - Beyond the paper ("reference"): with E4M3 scales the 4-bit κ* grows with the block, 2.390/2.611/2.749/
    2.828/2.870 for g = 16/32/64/128/256 (UE8M0 κ* does not depend on g); MXINT8 vs MXFP8-E5M2 meets at
    κ* = 15.08 (outside 1..12); an INT5 element with an E4M3 block scale cuts the NVFP4 hump twice (3.80, 4.11).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import optimize, special

from lowbit_jax.formats import Format, FPElem, IntElem, get_format

Variant = Literal["paper", "reference", "script"]
VARIANTS = ("paper", "reference", "script")
RHO_UE8M0 = 1.5
RHO_E4M3 = {"paper": 1.0, "reference": 1.05, "script": 1.05}
UE8M0_WORST_LOSS_DB = 20.0 * math.log10(2.0)  # ρ → 2: a power-of-two scale costs up to 6.02 dB


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {list(VARIANTS)}, got {variant!r}")


def _db(r: np.ndarray) -> np.ndarray:
    """−10·log10(r), NaN where r ≤ 0 (only the unfloored 'paper' Eq. 43 can get there)."""
    r = np.asarray(r, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r > 0, -10.0 * np.log10(np.where(r > 0, r, 1.0)), np.nan)


def default_rho(scale: str, variant: Variant = "reference") -> float:
    """ρ = s'/s assumed by `variant` for a scale type: UE8M0 1.5, E4M3 1 (paper) or 1.05, FP32 1."""
    _check_variant(variant)
    rhos = {"ue8m0": RHO_UE8M0, "e4m3": RHO_E4M3[variant], "fp32": 1.0}
    if scale not in rhos:
        raise ValueError(f"no QSNR theory for scale {scale!r}; expected one of {list(rhos)}")
    return rhos[scale]


def alpha_m(man_bits: int) -> float:
    """α_M = 1/(24·2^(2M)), the normal-region relative error energy (Eq. 34)."""
    return 1.0 / (24.0 * 4.0**man_bits)


def fp_ceiling_db(man_bits: int) -> float:
    """−10·log10(α_M) = 13.80 + 6.02·M dB, the ample-range FP QSNR (Eq. 41)."""
    return -10.0 * math.log10(alpha_m(man_bits))


def beta_fp(elem: FPElem) -> float:
    """β = 2^(2(1−B−M)) / (12·Qmax²), the subnormal error coefficient (Eq. 37–39)."""
    return 4.0 ** (1 - elem.bias - elem.man_bits) / (12.0 * elem.max**2)


def gaussian_split(tau0, tau1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(w_norm, p_sub, w_zero) of Z ~ N(0,1) for thresholds τ0 ≤ τ1 (closed forms of NOTES §6.4)."""
    t0, t1 = np.asarray(tau0, np.float64), np.asarray(tau1, np.float64)
    w_norm = special.gammaincc(1.5, 0.5 * t1**2)
    p_sub = special.erf(t1 / math.sqrt(2.0)) - special.erf(t0 / math.sqrt(2.0))
    w_zero = special.gammainc(1.5, 0.5 * t0**2)
    return w_norm, p_sub, w_zero


def int_qsnr_db(bits: int, kappa, *, rho: float, g: int | None = None, variant: Variant = "reference") -> np.ndarray:
    """Theorem 1 (Eq. 13, 22–26): INT(b) QSNR in dB at crest factor κ; g = block size when the max is exact."""
    _check_variant(variant)
    k = np.asarray(kappa, dtype=np.float64)
    if variant == "script" and g is None:
        return 10.8 + 6.02 * (bits - 1) - 20.0 * math.log10(rho) - 20.0 * np.log10(k)
    r = (rho * k) ** 2 / (12.0 * 4.0 ** (bits - 1))
    return _db(r if g is None else r * (g - 1) / g)


def fp_qsnr_db(elem: FPElem, kappa, *, rho: float, g: int | None = None, variant: Variant = "reference") -> np.ndarray:
    """Theorem 2 (Eq. 14, 37–43): FP(E, M) QSNR in dB at crest factor κ; g = block size when the max is exact."""
    _check_variant(variant)
    k = np.asarray(kappa, dtype=np.float64)
    c = rho * k / elem.max
    tau1 = c * 2.0 ** (1 - elem.bias)
    tau0 = np.zeros_like(c) if variant == "paper" else c * 2.0 ** (-elem.bias - elem.man_bits)
    w_norm, p_sub, w_zero = gaussian_split(tau0, tau1)
    if g is not None:
        w_norm = w_norm - k**2 / g
        if variant != "paper":
            w_norm = np.maximum(w_norm, 0.0)
    return _db(alpha_m(elem.man_bits) * w_norm + beta_fp(elem) * (rho * k) ** 2 * p_sub + w_zero)


def _exact_max_g(fmt: Format, g: int | None) -> int | None:
    """Block size entering the exact-max terms: None for UE8M0 (no element is exact) or a non-integer block."""
    if fmt.scale == "ue8m0":
        return None
    if g is not None:
        return int(g)
    return fmt.block_size if isinstance(fmt.block_size, int) else None


def qsnr_curve(
    fmt: Format | str, kappa, variant: Variant = "reference", *, rho: float | None = None, g: int | None = None
) -> np.ndarray:
    """Theoretical QSNR (dB) of a block format at crest factors κ; ρ and g override the variant's defaults."""
    fmt = get_format(fmt)
    if fmt.is_identity:
        raise ValueError(f"{fmt.name} is an identity format; the QSNR theory covers INT and FP block formats")
    rho = default_rho(fmt.scale, variant) if rho is None else float(rho)
    gg = _exact_max_g(fmt, g)
    if isinstance(fmt.elem, IntElem):
        return int_qsnr_db(fmt.elem.bits, kappa, rho=rho, g=gg, variant=variant)
    return fp_qsnr_db(fmt.elem, kappa, rho=rho, g=gg, variant=variant)


@dataclass(frozen=True)
class Crossover:
    """κ* where QSNR_INT = QSNR_FP (the first crossing), the INT-curve QSNR there, and every crossing found."""

    kappa: float
    qsnr_db: float
    all_kappa: tuple[float, ...]
    int_wins_below: bool  # INT has the higher QSNR just below κ*


def _int_fp(a: Format | str, b: Format | str) -> tuple[Format, Format]:
    """The (INT, FP) pair from two formats given in either order; ValueError unless one is INT and one FP."""
    fa, fb = get_format(a), get_format(b)
    kinds = tuple(None if f.is_identity else f.elem.kind for f in (fa, fb))
    if kinds == ("int", "fp"):
        return fa, fb
    if kinds == ("fp", "int"):
        return fb, fa
    raise ValueError(f"crossover needs one INT and one FP format; got {fa.name} ({kinds[0]}), {fb.name} ({kinds[1]})")


def _pair(value) -> tuple:
    """A per-format override: one value for both formats, or an (int, fp) pair."""
    return tuple(value) if isinstance(value, tuple | list) else (value, value)


def _sign_changes(d: np.ndarray) -> np.ndarray:
    """Indices i where d changes sign between i and i+1 (or d[i] == 0), both finite."""
    finite = np.isfinite(d[:-1]) & np.isfinite(d[1:])
    return np.flatnonzero(finite & ((np.sign(d[:-1]) * np.sign(d[1:]) < 0) | (d[:-1] == 0)))


def crossover(
    int_fmt: Format | str,
    fp_fmt: Format | str,
    variant: Variant = "reference",
    kappa_range: tuple[float, float] = (1.0, 12.0),
    *,
    rho=None,
    g=None,
    method: Literal["root", "grid"] = "root",
    num: int | None = None,
) -> Crossover:
    """κ* where the INT and FP curves meet in kappa_range: brentq on a fine scan ("root") or the script's grid.

    rho and g take one value or an (int, fp) pair. "grid" is the authors' script: linspace(lo, hi, num=600) and
    linear interpolation of the sign change, its QSNR interpolated on the INT curve.
    """
    fi, ff = _int_fp(int_fmt, fp_fmt)
    if method not in ("root", "grid"):
        raise ValueError(f"method must be 'root' or 'grid', got {method!r}")
    lo, hi = map(float, kappa_range)
    if not 0 < lo < hi:
        raise ValueError(f"kappa_range must satisfy 0 < lo < hi, got {kappa_range!r}")
    (ri, rf), (gi, gf) = _pair(rho), _pair(g)

    def q_int(k):
        return qsnr_curve(fi, k, variant, rho=ri, g=gi)

    def diff(k):
        return q_int(k) - qsnr_curve(ff, k, variant, rho=rf, g=gf)

    grid = np.linspace(lo, hi, num or (600 if method == "grid" else 4001))
    d = diff(grid)
    idx = _sign_changes(d)
    if idx.size == 0:
        better = fi.name if np.nanmean(d) > 0 else ff.name
        raise ValueError(
            f"no crossover of {fi.label} and {ff.label} ({variant}) for kappa in [{lo}, {hi}]: "
            f"{better} has the higher QSNR throughout; widen kappa_range"
        )
    if method == "grid":
        t = d[idx] / (d[idx] - d[idx + 1])
        roots = grid[idx] + t * (grid[idx + 1] - grid[idx])
        qi = q_int(grid)
        q0 = float(qi[idx[0]] + t[0] * (qi[idx[0] + 1] - qi[idx[0]]))
    else:
        roots = np.array(
            [grid[i] if d[i] == 0 else optimize.brentq(diff, grid[i], grid[i + 1], xtol=1e-13) for i in idx]
        )
        q0 = float(q_int(roots[0]))
    below = d[idx[0] - 1] if d[idx[0]] == 0 and idx[0] > 0 else d[idx[0]]
    return Crossover(float(roots[0]), q0, tuple(float(r) for r in roots), bool(below > 0))

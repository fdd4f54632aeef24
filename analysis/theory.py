"""QSNR theory of the paper's §4 / App. B: Theorem 1 (INT), Theorem 2 (FP) and the INT/FP crossover κ*.

Every formula of the paper's §4 and App. B lives here. σ-units: X_i ~ N(0, σ²) i.i.d. in a block of g,
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
  Gaussian split (τ0 = c·2^(−B−M), half a subnormal step, as in the authors' script):
    w_norm = E[Z²·1{|Z| ≥ τ1}] = 2·[τ1·φ(τ1) + 1 − Φ(τ1)] = Q(3/2, τ1²/2)  (regularized upper gamma)
    p_sub  = P(τ0 ≤ |Z| < τ1)  = erf(τ1/√2) − erf(τ0/√2)
    w_zero = E[Z²·1{|Z| < τ0}] = 2·Φ(τ0) − 1 − 2·τ0·φ(τ0) = P(3/2, τ0²/2), energy flushed to zero

Variants:
  "paper":     Eq. 13/40/43 as printed: ρ = 1.5 (UE8M0), 1 (E4M3); no w_zero; p_sub = P(|Z| < τ1) (τ0 = 0);
               no floor on w_norm − κ²/g; INT R = (ρκ)²/(12·4^(b−1)) (exact constant 4.771, printed 4.78).
  "reference": the authors' script model with the exact INT constant: ρ = 1.5, 1.05; R gains w_zero,
               p_sub excludes the flushed region, w_norm − κ²/g is floored at 0.
  "script":    the script as coded: "reference" with the MX-INT law 10.8 + 6.02·(b−1) − 20·log10 ρκ.
               Use crossover(..., method="grid") for its 600-point linear interpolation.
FP32 scales (per channel) are exact too: ρ = 1 and the κ²/g term when g is an int, else none.

Findings (checked by re-deriving the formulas above and against the authors' script; nothing tuned):
  - The crossovers, recomputed independently: reference 7.5425/1.9579/2.0396/2.3899 (31.864/31.537/
    19.141/21.143 dB); paper 7.5425/1.9579/2.0397/2.4628; script with method="grid" 7.5459/1.9593/2.0415/
    2.3899. Script curves with exact roots give 7.5459/1.9592/2.0415/2.3899: the 600-point grid moves κ* by
    < 3e-5. "reference" with rho=1 for NV gives 2.4627 (the ρ sensitivity), and "paper" with
    rho=1.05 gives 2.38996: the NV gap between the variants is all ρ; w_zero and the narrowed p_sub offset.
  - The Fig. 3 curve values recomputed independently (docs/theory.md, section "Curve values") agree to 0.01 dB
    with "reference" (INT "exact" rows) and "script". "paper" moves the NV rows (ρ = 1: NVINT4 +0.42 dB; NVFP4
    20.80 instead of 20.76 dB at κ = 2) and the MX-FP rows at large κ (no w_zero: MXFP4 7.27 instead of 7.45 dB
    at κ = 12).
  - The NVFP4 peak (23.246 dB at κ = 3.855) is the kink where w_norm − κ²/16 reaches 0 (κ = 3.8547).
  - Without the floor ("paper"), Eq. 43's normal term turns negative past κ = 3.872 for NVFP4 and the curve
    rises (28.40 dB at κ = 5) until R < 0 at κ ≈ 5.617 (NaN beyond). The printed model is meaningless there;
    its κ* (2.46) is far below. (A block's own RMS gives κ ≤ √g, but the model's σ is the population one.)
  - Beyond the paper ("reference"): with E4M3 scales the 4-bit κ* grows with the block, 2.390/2.611/2.749/
    2.828/2.870 for g = 16/32/64/128/256 (UE8M0 κ* does not depend on g); MXINT8 vs MXFP8-E5M2 meets at
    κ* = 15.08 (outside 1..12); an INT5 element with an E4M3 block scale cuts the NVFP4 hump twice (3.80, 4.11).

Per-block adaptive formats (beyond arXiv 2510.25602; IF4/IF6 arXiv 2603.28765, Four Over Six arXiv 2512.02010):
  Every block takes the candidate with the lower error. The theory's block takes the candidate whose curve is
  higher at its κ (predict_choice), so the adaptive curve is the upper envelope of the candidate curves
  (adaptive_qsnr_curve) and a two-candidate format has a threshold κ*: candidate 1 wins for κ < κ*
  (adaptive_threshold: crossover()'s root finder on candidates 1 and 0).
  - MXIF4/6/8: MXINT(b) vs MXFP, each with its own UE8M0 ceil scale: the paper's pairs, κ* = crossover().
  - IF4/IF6: the INT candidate shares the FP candidate's E4M3 scale s' = ρ·amax/Qmax_fp (Qmax_fp = 6, 7.5) and
    its grid is INT(b) stretched to Qmax_fp, step Qmax_fp/(2^(b−1)−1) per unit of scale: in the signal its step
    is ρ·amax/(2^(b−1)−1), NVINT(b)'s (amax/7 · ρ for IF4). ρ is NVINT(b)'s too, block by block, not only in
    distribution: the tensor scale is amax_t/(Qmax·448) with each grid's own Qmax, so both E4M3 codes are
    E4M3(448·amax_b/amax_t). The block max lands on the top code (6 = 7·6/7), so Theorem 1 with the E4M3 ρ
    and the exact-max factor (g−1)/g applies unchanged: the IF4 INT curve is NVINT4's, κ*(IF4) = κ*(NVINT4/
    NVFP4), and IF6's INT curve is that of INT6 with an E4M3 scale (fake_quant agrees to float32 rounding).
  - Block max mapped to a grid value T other than Qmax (Four Over Six: E2M1 with amax -> 4 or -> 6, tensor
    bound 256): s' = ρ·amax/T, so c = ρκ/T, τ1 = c·2^(1−B), τ0 = c·2^(−B−M), the subnormal coefficient is
    β_T = 2^(2(1−B−M))/(12·T²) (step s'·S_min), and the κ²/g term holds because T is on the grid. The bound
    256 leaves ρ alone: E4M3's relative rounding error does not depend on the binade, and only blocks under
    2^-6/256 of the tensor amax reach E4M3's subnormals.
    With these alone Eq. 43's normal term α_M·w_norm is the same for every T (α_M assumes each binade is used
    whole), so mapping to 4 only moves mass into the subnormals and never wins: no threshold. What Four Over Six
    exploits is E2M1's top binade: with the max at 6, [4, 6] holds only 4 and 6, r ∈ [1, 1.5] and E[1/r²] = 2/3
    instead of 1/2. Top-binade term (top=True): 2^e < T ≤ 2^(e+1), r_T = T/2^e, w_top = Q(3/2, (c·2^e)²/2),
      R = α_M·[(w_norm − w_top) + (2/r_T)·(w_top − κ²/g)] + β_T·(ρκ)²·p_sub + w_zero
    the max being in the top binade ("reference" floors w_top − κ²/g at 0, "paper" does not). r_T = 2 (T = 4)
    gives Eq. 43 with T; T = 6 raises the top binade's error by 4/3. It is used for every candidate of a format
    whose candidates differ only in T (uses_top_binade), not for IF4/IF6/MXIF, which keep the paper's curves.
  - κ* reference / paper (ρ_E4M3 = 1.05 / 1): IF4 2.3899 / 2.4628, IF6 2.3357 / 2.4098, MXIF4 2.0396 / 2.0397,
    MXIF6 1.9579 / 1.9579, MXIF8 7.5425 / 7.5425 ("script" with method="grid": 2.04 / 1.96 / 7.55 as printed),
    NVFP4 Four Over Six 1.9532 / 2.0294. Each is the only crossing in 1..12 ("reference") and in 1..√g ("paper",
    whose unfloored Eq. 43 FP curve turns NaN past κ = 4.52 (IF6), 4.14 (Four Over Six), 5.62 (IF4), beyond any
    block's own crest factor √16 = 4; a NaN curve never wins, so the choice flips back to candidate 1 there).
  Where it is approximate (Monte-Carlo, 2^24 N(0, 1) elements, the real quantizers, κ* by a quadratic fit of the
  blocks' relative error difference against their own κ, ± its standard error):
  - Measured κ*: IF4 2.277 ± 0.001, IF6 2.558 ± 0.001, MXIF4 1.732 ± 0.002, Four Over Six 1.988 ± 0.001 (1.996
    with exact FP32 scales). For Four Over Six ρ = 1 and 1.05 bracket it; with exact scales the 0.034 left is the
    Gaussian model's (α_M's uniform r, the Gaussian tail beyond the max that κ²/g stands in for).
  - Theorem 1 takes Q ≈ 2^(b−1) while the NV and IF grids step ρ·amax/(2^(b−1)−1): 20·log10(8/7) = 1.16 dB
    optimistic for 4 bits, 0.28 dB for 6. With the true step (ρ·8/7 for the INT curve) κ*(IF4) = 2.1505 and
    κ*(IF6) = 2.2824 (reference). The top-binade term on NVFP4 itself (r_T = 1.5) would give κ*(IF4) = 2.4115.
  - The exact-max term puts the max on T; an E4M3-rounded scale puts it at T/ρ_b, ρ_b within 1 ± 2^-4.
  - The envelope is the better candidate on average; the selector compares each block's own errors, so it does
    better (E[min] ≤ min E): measured gains over the better candidate reach 0.7 dB (IF4, κ ≈ 2.2), 0.8 dB (Four
    Over Six, κ ≈ 2.0), 0.9 dB (MXIF4, κ ≈ 1.6), and near κ* a block's choice is close to a coin flip (half of
    the Four Over Six blocks at κ = 2 take 4). The theory's choice is the mean-squared-error one (select="mse").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import optimize, special

from analysis.crossing import interpolated_roots, sign_changes
from lowbit_jax.formats import Format, FPElem, get_format

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


def beta_fp(elem: FPElem, target: float | None = None) -> float:
    """β = 2^(2(1−B−M)) / (12·T²), the subnormal error coefficient (Eq. 37–39); T = target, default Qmax."""
    t = elem.max if target is None else float(target)
    return 4.0 ** (1 - elem.bias - elem.man_bits) / (12.0 * t**2)


def check_target(elem: FPElem, target: float) -> float:
    """`target` as a float if it is a normal value of the FP grid (so a block max mapped onto it is exact)."""
    t = float(target)
    lo = 2.0 ** (1 - elem.bias)
    if not (math.isfinite(t) and lo <= t <= elem.max):
        raise ValueError(f"target {target!r} must be a normal {elem.name} value in [{lo}, {elem.max}]")
    mant = t / 2.0 ** math.floor(math.log2(t)) * 2**elem.man_bits
    if mant != round(mant):
        raise ValueError(f"target {target!r} is not on the {elem.name} grid, so the block max would not be exact")
    return t


def top_binade(target: float) -> tuple[float, float]:
    """(2^e, r_T): the binade [2^e, 2^(e+1)) whose part [2^e, T] a block mapped to T occupies, 2^e < T ≤ 2^(e+1)."""
    base = 2.0 ** (math.ceil(math.log2(target)) - 1)
    return base, target / base


def gaussian_split(tau0, tau1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(w_norm, p_sub, w_zero) of Z ~ N(0,1) for thresholds τ0 ≤ τ1 (closed forms)."""
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


def fp_qsnr_db(
    elem: FPElem,
    kappa,
    *,
    rho: float,
    g: int | None = None,
    variant: Variant = "reference",
    target: float | None = None,
    top: bool = False,
) -> np.ndarray:
    """Theorem 2 (Eq. 14, 37–43): FP(E, M) QSNR in dB at crest factor κ; g = block size when the max is exact.

    target T: the grid value the block max maps to (default Qmax; module docstring, "block max mapped to T").
    top: weight the occupied part [2^e, T] of the top binade by E[1/r²] = 1/r_T instead of 1/2.
    """
    _check_variant(variant)
    k = np.asarray(kappa, dtype=np.float64)
    t = elem.max if target is None else check_target(elem, target)
    c = rho * k / t
    tau1 = c * 2.0 ** (1 - elem.bias)
    tau0 = np.zeros_like(c) if variant == "paper" else c * 2.0 ** (-elem.bias - elem.man_bits)
    w_norm, p_sub, w_zero = gaussian_split(tau0, tau1)
    if top:
        base, r_t = top_binade(t)
        if base < 2.0 ** (1 - elem.bias):
            raise ValueError(f"the binade below target {t} is not normal in {elem.name}; no top-binade term")
        w_top = special.gammaincc(1.5, 0.5 * (c * base) ** 2)
        w_max = w_top if g is None else w_top - k**2 / g
        if variant != "paper":
            w_max = np.maximum(w_max, 0.0)
        w_norm = w_norm - w_top + (2.0 / r_t) * w_max
    elif g is not None:
        w_norm = w_norm - k**2 / g
        if variant != "paper":
            w_norm = np.maximum(w_norm, 0.0)
    return _db(alpha_m(elem.man_bits) * w_norm + beta_fp(elem, t) * (rho * k) ** 2 * p_sub + w_zero)


def _exact_max_g(fmt: Format, g: int | None) -> int | None:
    """Block size entering the exact-max terms: None for UE8M0 (no element is exact) or a non-integer block."""
    if fmt.scale_rule.name == "ue8m0":
        return None
    if g is not None:
        return int(g)
    return fmt.block_size if isinstance(fmt.block_size, int) else None


def scale_target(fmt: Format) -> float | None:
    """The element value a block's max maps to when the scale rule sets one other than Qmax (Four Over Six: 4)."""
    return getattr(fmt.scale_rule, "target", None)


def qsnr_curve(
    fmt: Format | str,
    kappa,
    variant: Variant = "reference",
    *,
    rho: float | None = None,
    g: int | None = None,
    top: bool = False,
) -> np.ndarray:
    """Theoretical QSNR (dB) of a block format at crest factors κ; ρ and g override the variant's defaults.

    INT elements follow Theorem 1 (a stretched grid too: its step is ρ·amax/(2^(b−1)−1), INT(b)'s), FP elements
    Theorem 2 with the scale's target; top: the top-binade term (FP only). Adaptive formats dispatch to
    adaptive_qsnr_curve, which sets `top` itself.
    """
    fmt = get_format(fmt)
    if getattr(fmt, "is_adaptive", False):
        return adaptive_qsnr_curve(fmt, kappa, variant, rho=rho, g=g)
    if fmt.is_identity:
        raise ValueError(f"{fmt.name} is an identity format; the QSNR theory covers INT and FP block formats")
    rho = default_rho(fmt.scale_rule.name, variant) if rho is None else float(rho)
    gg = _exact_max_g(fmt, g)
    if fmt.elem.kind == "int":
        return int_qsnr_db(fmt.elem.bits, kappa, rho=rho, g=gg, variant=variant)
    if not isinstance(fmt.elem, FPElem):
        raise ValueError(f"no QSNR theory for {fmt.name}'s element {fmt.elem.name}; it covers INT and FP grids")
    return fp_qsnr_db(fmt.elem, kappa, rho=rho, g=gg, variant=variant, target=scale_target(fmt), top=top)


@dataclass(frozen=True)
class Crossover:
    """κ* where QSNR_INT = QSNR_FP (the first crossing), the INT-curve QSNR there, and every crossing found."""

    kappa: float
    qsnr_db: float
    all_kappa: tuple[float, ...]
    int_wins_below: bool  # INT (adaptive_threshold: candidate 1) has the higher QSNR just below κ*


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


def _first_crossing(q_a, q_b, lo: float, hi: float, method: str, num: int | None):
    """(Crossover, None) for the crossings of curves q_a − q_b on [lo, hi] ("root": brentq on a 4001-point scan;
    "grid": the script's 600-point linear interpolation, its QSNR interpolated on q_a), or (None, the scan's
    differences) when the sign never changes. int_wins_below: q_a is the higher just below κ*."""
    if method not in ("root", "grid"):
        raise ValueError(f"method must be 'root' or 'grid', got {method!r}")
    if not 0 < lo < hi:
        raise ValueError(f"kappa_range must satisfy 0 < lo < hi, got {(lo, hi)!r}")

    def diff(k):
        return q_a(k) - q_b(k)

    grid = np.linspace(lo, hi, num or (600 if method == "grid" else 4001))
    d = diff(grid)
    idx = sign_changes(d)
    if idx.size == 0:
        return None, d
    if method == "grid":
        roots, t = interpolated_roots(grid, d, idx)
        qa = q_a(grid)
        q0 = float(qa[idx[0]] + t[0] * (qa[idx[0] + 1] - qa[idx[0]]))
    else:
        roots = np.array(
            [grid[i] if d[i] == 0 else optimize.brentq(diff, grid[i], grid[i + 1], xtol=1e-13) for i in idx]
        )
        q0 = float(q_a(roots[0]))
    below = d[idx[0] - 1] if d[idx[0]] == 0 and idx[0] > 0 else d[idx[0]]
    return Crossover(float(roots[0]), q0, tuple(float(r) for r in roots), bool(below > 0)), None


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
    lo, hi = map(float, kappa_range)
    (ri, rf), (gi, gf) = _pair(rho), _pair(g)
    found, d = _first_crossing(
        lambda k: qsnr_curve(fi, k, variant, rho=ri, g=gi),
        lambda k: qsnr_curve(ff, k, variant, rho=rf, g=gf),
        lo,
        hi,
        method,
        num,
    )
    if found is None:
        better = fi.name if np.nanmean(d) > 0 else ff.name
        raise ValueError(
            f"no crossover of {fi.label} and {ff.label} ({variant}) for kappa in [{lo}, {hi}]: "
            f"{better} has the higher QSNR throughout; widen kappa_range"
        )
    return found


# ------------------------------------------------------------------------------------------- adaptive formats
def _adaptive(fmt) -> Format:
    """fmt as an adaptive Format; ValueError for plain ones."""
    fmt = get_format(fmt)
    if not getattr(fmt, "is_adaptive", False):
        raise ValueError(f"{fmt.name} is not an adaptive format (e.g. if4, mxif4, nvfp4_4over6)")
    return fmt


def uses_top_binade(fmt: Format | str) -> bool:
    """Whether an adaptive format's candidates share one FP grid and differ only in where the block max lands
    (Four Over Six): then Eq. 43 alone cannot tell them apart and the top-binade term is used for all of them."""
    cands = _adaptive(fmt).candidates
    same_grid = all(isinstance(c.elem, FPElem) and c.elem == cands[0].elem for c in cands)
    targets = {cands[0].elem.max if scale_target(c) is None else float(scale_target(c)) for c in cands}
    return same_grid and len(targets) > 1


def candidate_labels(fmt: Format | str) -> tuple[str, ...]:
    """The candidates' labels in candidate order (an index suffix '#i' where two would coincide)."""
    labels = [c.label for c in _adaptive(fmt).candidates]
    return tuple(f"{lab}#{i}" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels))


def candidate_curves(
    fmt: Format | str, kappa, variant: Variant = "reference", *, rho: float | None = None, g: int | None = None
) -> dict[str, np.ndarray]:
    """Candidate label -> theoretical QSNR (dB) at crest factors κ, in candidate order (qsnr_curve of each)."""
    fmt = _adaptive(fmt)
    top = uses_top_binade(fmt)
    return {
        lab: qsnr_curve(c, kappa, variant, rho=rho, g=g, top=top)
        for lab, c in zip(candidate_labels(fmt), fmt.candidates, strict=True)
    }


def adaptive_qsnr_curve(
    fmt: Format | str, kappa, variant: Variant = "reference", *, rho: float | None = None, g: int | None = None
) -> np.ndarray:
    """QSNR (dB) per κ when every block takes the candidate the theory prefers: the max of the candidate curves
    (a curve that is NaN, the unfloored "paper" Eq. 43, never wins; NaN only where all are)."""
    return np.fmax.reduce(np.stack(list(candidate_curves(fmt, kappa, variant, rho=rho, g=g).values())), axis=0)


def predict_choice(
    fmt: Format | str, kappa, variant: Variant = "reference", *, rho: float | None = None, g: int | None = None
) -> np.ndarray:
    """int array (κ's shape): the index of the candidate with the highest theoretical QSNR at each κ; ties and
    all-NaN go to the earlier candidate, as the selector breaks ties."""
    q = np.stack(list(candidate_curves(fmt, kappa, variant, rho=rho, g=g).values()))
    return np.argmax(np.where(np.isnan(q), -np.inf, q), axis=0).astype(np.int32)


def adaptive_threshold(
    fmt: Format | str,
    variant: Variant = "reference",
    kappa_range: tuple[float, float] = (1.0, 12.0),
    *,
    rho: float | None = None,
    g: int | None = None,
    method: Literal["root", "grid"] = "root",
    num: int | None = None,
) -> Crossover:
    """κ* where the curves of candidates 1 and 0 of a two-candidate adaptive format first meet (as crossover()
    finds it); `int_wins_below` here means candidate 1 (INT; 'to4' for Four Over Six) wins just below κ*, and
    qsnr_db is the QSNR there. ValueError if they do not meet in kappa_range."""
    fmt = _adaptive(fmt)
    if len(fmt.candidates) != 2:
        raise ValueError(f"{fmt.name} has {len(fmt.candidates)} candidates; a threshold needs exactly two")
    lo, hi = map(float, kappa_range)
    top = uses_top_binade(fmt)
    c0, c1 = fmt.candidates
    found, d = _first_crossing(
        lambda k: qsnr_curve(c1, k, variant, rho=rho, g=g, top=top),
        lambda k: qsnr_curve(c0, k, variant, rho=rho, g=g, top=top),
        lo,
        hi,
        method,
        num,
    )
    if found is None:
        better = c1.label if np.nanmean(d) > 0 else c0.label
        raise ValueError(
            f"no threshold for {fmt.label} ({variant}) for kappa in [{lo}, {hi}]: {better} has the higher "
            "theoretical QSNR throughout; widen kappa_range"
        )
    return found


def expected_adaptive_qsnr_db(fmt: Format | str, kappas, variant: Variant = "reference", weights=None) -> float:
    """Expected tensor QSNR (dB) from its blocks' crest factors: −10·log10(Σ w_b·R(κ_b) / Σ w_b).

    R(κ_b) = 10^(−Q(κ_b)/10) is block b's relative error energy from the curve of its predicted choice
    (adaptive_qsnr_curve; plain formats use qsnr_curve), so w_b·R(κ_b) is its expected error energy when w_b
    is its signal energy: the ratio is expected error energy over signal energy, as the tensor QSNR is. Pass
    weights = the blocks' sums of squares for a real tensor; None weighs every block equally, which is right
    only when all blocks share one σ (the model's i.i.d. tensor), since a block's QSNR says nothing of its
    energy. An average of per-block dB values would be a different (geometric) mean and is not used.
    """
    k = np.asarray(kappas, dtype=np.float64).ravel()
    w = np.ones_like(k) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if w.shape != k.shape:
        raise ValueError(f"weights must have one value per block: {w.size} weights for {k.size} crest factors")
    if not (np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0):
        raise ValueError("weights must be finite, non-negative and not all zero")
    used = w > 0
    if not np.all(np.isfinite(k[used]) & (k[used] >= 1.0)):
        raise ValueError("crest factors must be finite and >= 1 (max|x| >= RMS); drop all-zero blocks first")
    r = 10.0 ** (-qsnr_curve(fmt, k[used], variant) / 10.0)
    return float(-10.0 * np.log10(np.sum(w[used] * r) / np.sum(w[used])))

"""Goldens and properties of analysis.theory (paper §4, App. B), and of its adaptive-format rule.

Each golden names its source: "printed" = in the paper; "recomputed" = an independent recomputation of the
paper's formulas and the authors' script (high-precision root finding).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

import lowbit_jax as lb
from analysis import theory as th
from analysis.advise import predicted_from_block_stats
from analysis.crest import block_stats
from lowbit_jax.formats import Format, fp, get_format, int_

PAIRS = [("mxint8", "mxfp8"), ("mxint6", "mxfp6"), ("mxint4", "mxfp4"), ("nvint4", "nvfp4")]
KAPPAS = np.array([1, 1.5, 2, 2.5, 3, 4, 5, 6, 7.55, 8, 10, 12])

# Recomputed: "Script model, exact INT constant" column.
REFERENCE = [(7.5425, 31.864), (1.9579, 31.537), (2.0396, 19.141), (2.3899, 21.143)]
# Recomputed: "Paper formulas as printed" column.
PAPER = [(7.5425, 31.864), (1.9579, 31.537), (2.0397, 19.140), (2.4628, 21.305)]
# Recomputed: "Script as coded" column (rounds to the printed 7.55/1.96/2.04/2.39).
SCRIPT = [(7.5459, 31.864), (1.9593, 31.536), (2.0415, 19.139), (2.3899, 21.143)]
PRINTED = [(7.55, 31.86), (1.96, 31.54), (2.04, 19.14), (2.39, 21.14)]  # paper Fig. 3, printed


@pytest.mark.parametrize(("pair", "want"), list(zip(PAIRS, REFERENCE, strict=True)))
def test_crossover_reference(pair, want):
    c = th.crossover(*pair, variant="reference")
    assert c.kappa == pytest.approx(want[0], abs=1e-4)
    assert c.qsnr_db == pytest.approx(want[1], abs=1e-3)
    assert c.all_kappa == (c.kappa,) and c.int_wins_below


@pytest.mark.parametrize(("pair", "want"), list(zip(PAIRS, PAPER, strict=True)))
def test_crossover_paper(pair, want):
    c = th.crossover(*pair, variant="paper")
    assert (c.kappa, c.qsnr_db) == pytest.approx(want, abs=1e-3)


@pytest.mark.parametrize(("pair", "want", "printed"), list(zip(PAIRS, SCRIPT, PRINTED, strict=True)))
def test_crossover_script(pair, want, printed):
    grid = th.crossover(*pair, variant="script", method="grid")
    assert (grid.kappa, grid.qsnr_db) == pytest.approx(want, abs=1e-4 + 1e-3)
    assert round(grid.kappa, 2) == printed[0] and round(grid.qsnr_db, 2) == printed[1]
    assert th.crossover(*pair, variant="script").kappa == pytest.approx(want[0], abs=2e-4)


def test_crossover_roots_are_roots():
    for a, b in PAIRS:
        for variant in th.VARIANTS:
            c = th.crossover(a, b, variant)
            qa, qb = th.qsnr_curve(a, c.kappa, variant), th.qsnr_curve(b, c.kappa, variant)
            assert qa == pytest.approx(qb, abs=1e-9) and qa == pytest.approx(c.qsnr_db, abs=1e-12)


def test_nv_rho_sensitivity():
    # Recomputed: "With rho_NV = 1 and w_zero kept, NV gives 2.4627".
    assert th.crossover("nvint4", "nvfp4", rho=1.0).kappa == pytest.approx(2.4627, abs=1e-4)


def test_fp_ceilings_and_int_offsets():
    # Eq. 41 ceilings (exact 31.864, 19.823), E4M3 gain 10 log10(g/(g-1)), UE8M0 loss.
    assert th.fp_ceiling_db(3) == pytest.approx(31.864, abs=5e-4)
    assert th.fp_ceiling_db(1) == pytest.approx(19.823, abs=5e-4)
    assert th.fp_ceiling_db(3) - th.fp_ceiling_db(2) == pytest.approx(20 * math.log10(2))
    ue8m0 = th.qsnr_curve(get_format("nvint4", scale="ue8m0"), KAPPAS, "paper", rho=1.0)
    for g, gain in [(16, 0.280), (32, 0.138)]:
        nv = th.qsnr_curve(get_format("nvint4", block_size=g), KAPPAS, "paper")
        np.testing.assert_allclose(nv - ue8m0, gain, atol=5e-4)
    loss = th.qsnr_curve("mxint4", 3.0, rho=1.0) - th.qsnr_curve("mxint4", 3.0, rho=2.0)
    assert loss == pytest.approx(th.UE8M0_WORST_LOSS_DB) and loss == pytest.approx(6.02, abs=1e-3)


def test_mxfp8_is_at_its_ceiling():
    np.testing.assert_allclose(th.qsnr_curve("mxfp8", KAPPAS), th.fp_ceiling_db(3), atol=1e-4)


@pytest.mark.parametrize(
    ("fmt", "kappa", "variant", "want"),
    [  # spot checks, recomputed
        ("mxint8", 1.0, "reference", 49.41),
        ("mxint8", 1.0, "script", 49.42),
        ("mxfp6", 3.0, "reference", 30.81),
        ("mxfp4", 2.0, "reference", 19.18),
        ("nvfp4", 4.0, "reference", 22.79),
    ],
)
def test_curve_spot_checks(fmt, kappa, variant, want):
    assert float(th.qsnr_curve(fmt, kappa, variant)) == pytest.approx(want, abs=5e-3)


def test_nvfp4_peak():
    # Recomputed: peak 23.246 dB at kappa 3.855, where w_norm - kappa^2/16 reaches 0.
    k = np.linspace(3.0, 5.0, 20001)
    q = th.qsnr_curve("nvfp4", k)
    assert q.max() == pytest.approx(23.246, abs=1e-3)
    assert k[q.argmax()] == pytest.approx(3.855, abs=2e-3)


# Recomputed table. Rows hold for "reference" (INT: the "exact" rows) and "script".
ROWS = {
    "mxint8_exact": [49.41, 45.89, 43.39, 41.46, 39.87, 37.37, 35.43, 33.85, 31.86, 31.35, 29.41, 27.83],
    "mxint8_script": [49.42, 45.90, 43.40, 41.46, 39.88, 37.38, 35.44, 33.86, 31.86, 31.36, 29.42, 27.83],
    "mxint4_script": [25.34, 21.82, 19.32, 17.38, 15.80, 13.30, 11.36, 9.78, 7.78, 7.28, 5.34, 3.75],
    "mxfp6": [31.82, 31.71, 31.52, 31.22, 30.81, 29.76, 28.51, 27.22, 25.35, 24.85, 22.89, 21.28],
    "mxfp4": [19.73, 19.53, 19.18, 18.66, 18.01, 16.47, 14.88, 13.39, 11.41, 10.90, 8.98, 7.45],
    "nvint4": [28.71, 25.19, 22.69, 20.75, 19.17, 16.67, 14.73, 13.15, 11.15, 10.65, 8.71, 7.13],
    "nvfp4": [20.07, 20.36, 20.76, 21.26, 21.88, 22.79, 20.07, 17.91, 15.31, 14.68, 12.35, 10.59],
}


@pytest.mark.parametrize("row", list(ROWS))
def test_curve_rows(row):
    name, _, kind = row.partition("_")
    variants = {"exact": ["reference"], "script": ["script"], "": ["reference", "script"]}[kind]
    for variant in variants:
        np.testing.assert_allclose(th.qsnr_curve(name, KAPPAS, variant), ROWS[row], atol=5e-3)


def test_paper_variant_differs_where_documented():
    # Module docstring findings: rho_NV = 1 shifts NVINT4 by 20 log10(1.05); no w_zero lifts MXFP4 at kappa 12.
    diff = th.qsnr_curve("nvint4", KAPPAS, "paper") - th.qsnr_curve("nvint4", KAPPAS)
    np.testing.assert_allclose(diff, 20 * math.log10(1.05))
    assert float(th.qsnr_curve("mxfp4", 12.0, "paper")) == pytest.approx(7.27, abs=5e-3)
    assert np.isnan(th.qsnr_curve("nvfp4", 6.0, "paper"))  # Eq. 43 unfloored: R < 0 past kappa 5.62


def test_gaussian_split_against_closed_forms_and_quadrature():
    t0, t1 = 0.1, 0.7
    w_norm, p_sub, w_zero = th.gaussian_split(t0, t1)
    n = stats.norm
    assert w_norm == pytest.approx(2 * (t1 * n.pdf(t1) + n.sf(t1)), rel=1e-12)
    assert p_sub == pytest.approx(2 * (n.cdf(t1) - n.cdf(t0)), rel=1e-12)
    assert w_zero == pytest.approx(2 * n.cdf(t0) - 1 - 2 * t0 * n.pdf(t0), rel=1e-9)
    assert w_zero == pytest.approx(2 * integrate.quad(lambda z: z * z * n.pdf(z), 0, t0)[0], rel=1e-9)
    assert w_norm + w_zero + 2 * integrate.quad(lambda z: z * z * n.pdf(z), t0, t1)[0] == pytest.approx(1.0)


def test_any_pair_and_block_size():
    # Beyond the paper: E5M2 sits at its ceiling, so INT8/E5M2 meets where 49.41 - 20 log10 k = 25.84 (k ~ 15.08).
    c = th.crossover("mxint8", "mxfp8_e5m2", kappa_range=(1, 30))
    assert c.kappa == pytest.approx(10 ** ((th.qsnr_curve("mxint8", 1.0) - th.fp_ceiling_db(2)) / 20), rel=1e-4)
    c = th.crossover(Format("mxint6_like", int_(6)), "mxfp6_e3m2")
    assert 1 < c.kappa < 12 and c.qsnr_db == pytest.approx(float(th.qsnr_curve("mxfp6_e3m2", c.kappa)), abs=1e-9)
    kappas = [th.crossover(Format("i4", int_(4), g, "e4m3"), Format("f4", fp(2, 1), g, "e4m3")).kappa
              for g in (16, 32, 64, 128, 256)]  # fmt: skip
    assert kappas[0] == pytest.approx(2.3899, abs=1e-4) and np.all(np.diff(kappas) > 0)
    mx = [th.crossover(get_format("mxint4", block_size=g), get_format("mxfp4", block_size=g)).kappa for g in (16, 256)]
    assert mx[0] == mx[1]  # UE8M0 formats do not depend on the block size
    assert 1 < th.crossover("mxint4", "nvfp4").kappa < th.crossover("nvint4", "mxfp4").kappa < 12


def test_several_crossings():
    # An INT5 element with an E4M3 block scale cuts the NVFP4 hump twice: INT, then FP, then INT again.
    c = th.crossover(Format("nvint5", int_(5), 16, "e4m3"), "nvfp4")
    assert len(c.all_kappa) == 2 and c.kappa == c.all_kappa[0] and c.int_wins_below
    assert c.all_kappa == pytest.approx((3.7976, 4.1095), abs=1e-4)


def test_order_overrides_and_errors():
    assert th.crossover("mxfp4", "mxint4") == th.crossover("mxint4", "mxfp4")
    # Module docstring finding: the paper/reference NV gap is all rho (paper with rho 1.05 gives 2.38996).
    assert th.crossover("nvint4", "nvfp4", "paper", rho=(1.05, 1.05)).kappa == pytest.approx(2.3899, abs=2e-4)
    assert th.crossover("nvint4", "nvfp4", g=16) == th.crossover("nvint4", "nvfp4")
    with pytest.raises(ValueError, match="no crossover.*mxint8 has the higher QSNR"):
        th.crossover("mxint8", "mxfp8_e5m2")
    with pytest.raises(ValueError, match="one INT and one FP"):
        th.crossover("mxint8", "mxint4")
    with pytest.raises(ValueError, match="one INT and one FP"):
        th.crossover("mxint8", "bf16")
    with pytest.raises(ValueError, match="variant"):
        th.qsnr_curve("mxfp4", 2.0, "exact")
    with pytest.raises(ValueError, match="method"):
        th.crossover("mxint4", "mxfp4", method="bisect")
    with pytest.raises(ValueError, match="kappa_range"):
        th.crossover("mxint4", "mxfp4", kappa_range=(3, 2))
    with pytest.raises(ValueError, match="identity"):
        th.qsnr_curve("bf16", 2.0)


def test_vectorised_shapes():
    k = np.linspace(1, 12, 24).reshape(2, 3, 4)
    for name in ("mxint4", "nvfp4", "fp8_channel"):
        assert th.qsnr_curve(name, k).shape == (2, 3, 4)
    assert np.ndim(th.qsnr_curve("mxfp4", 2.0)) == 0


# ------------------------------------------------------------------------------------------- adaptive formats
ADAPTIVE = ("if4", "if6", "mxif4", "mxif6", "mxif8", "nvfp4_4over6")
MX_ADAPTIVE = [("mxif4", "mxint4", "mxfp4"), ("mxif6", "mxint6", "mxfp6"), ("mxif8", "mxint8", "mxfp8")]


@pytest.mark.parametrize("name", ADAPTIVE)
@pytest.mark.parametrize("variant", th.VARIANTS)
def test_adaptive_curve_is_the_max_of_the_candidates(name, variant):
    k = np.linspace(1, 12, 221)
    cands = th.candidate_curves(name, k, variant)
    fmt = get_format(name)
    assert list(cands) == [c.label for c in fmt.candidates]
    for c, curve in zip(fmt.candidates, cands.values(), strict=True):  # each is its candidate's own curve
        np.testing.assert_array_equal(curve, th.qsnr_curve(c, k, variant, top=th.uses_top_binade(fmt)))
    q0, q1 = cands.values()
    want = np.where(np.isnan(q0), q1, np.where(np.isnan(q1), q0, np.maximum(q0, q1)))
    np.testing.assert_array_equal(th.adaptive_qsnr_curve(name, k, variant), want)
    np.testing.assert_array_equal(th.qsnr_curve(name, k, variant), want)  # qsnr_curve dispatches
    choice = th.predict_choice(name, k, variant)
    assert choice.dtype == np.int32 and choice.shape == k.shape
    picked = np.where(choice == 1, q1, q0)
    np.testing.assert_array_equal(picked[np.isfinite(want)], want[np.isfinite(want)])


@pytest.mark.parametrize(("name", "int_name", "fp_name"), MX_ADAPTIVE)
@pytest.mark.parametrize("variant", th.VARIANTS)
def test_mx_thresholds_are_the_pairs_crossovers(name, int_name, fp_name, variant):
    assert th.adaptive_threshold(name, variant) == th.crossover(int_name, fp_name, variant)


def test_mx_and_if4_thresholds_round_to_fig3():
    # Paper Fig. 3, printed: 2.04 / 1.96 / 7.55 for the MX pairs (the script's grid), 2.39 for NVINT4/NVFP4.
    got = [round(th.adaptive_threshold(n, "script", method="grid").kappa, 2) for n in ("mxif4", "mxif6", "mxif8")]
    assert got == [2.04, 1.96, 7.55]
    assert round(th.adaptive_threshold("if4").kappa, 2) == 2.39


def test_if_int_candidates_have_the_nvint_theory_and_quantizer():
    # Module docstring: the stretched grid's step is rho*amax/(2^(b-1)-1) and its E4M3 code is NVINT(b)'s.
    nvint6 = Format("nvint6", int_(6), 16, "e4m3")
    k = np.linspace(1, 12, 111)
    for variant in th.VARIANTS:
        np.testing.assert_array_equal(th.qsnr_curve("if4_int", k, variant), th.qsnr_curve("nvint4", k, variant))
        np.testing.assert_array_equal(th.qsnr_curve("if6_int", k, variant), th.qsnr_curve(nvint6, k, variant))
        assert th.adaptive_threshold("if4", variant) == th.crossover("nvint4", "nvfp4", variant)
        assert th.adaptive_threshold("if6", variant) == th.crossover(nvint6, "nvfp6", variant)


@pytest.mark.parametrize("bits", [4, 6])
def test_if_int_candidates_quantize_like_nvint(bits):
    # The theory's claim about the quantizer: IF(b)'s INT candidate has NVINT(b)'s step and E4M3 scale code.
    rows = np.exp(np.asarray(jax.random.normal(jax.random.key(4), (64, 1))))  # blocks over many E4M3 binades
    x = jnp.asarray(np.asarray(jax.random.normal(jax.random.key(3), (64, 1024))) * rows)
    a = np.asarray(lb.fake_quant(x, f"if{bits}_int"))
    b = np.asarray(lb.fake_quant(x, Format(f"nvint{bits}", int_(bits), 16, "e4m3")))
    # Same code k and scale: only float32 roundings differ (fl(6k/7), fl(s*g), the products), a few 2^-24 each;
    # another rho or step would move most elements by a whole step (>= 1/31 relative).
    np.testing.assert_allclose(a, b, rtol=2.0**-21, atol=0)


def test_target_mapping_and_top_binade_term():
    e2m1 = fp(2, 1)
    k = np.linspace(1, 3, 41)
    # amax -> T: c = rho*kappa/T and beta_T = 2^(2(1-B-M)) / (12 T^2); T = 6 is Eq. 43 itself.
    np.testing.assert_array_equal(th.fp_qsnr_db(e2m1, k, rho=1.05, g=16, target=6.0), th.qsnr_curve("nvfp4", k))
    assert th.beta_fp(e2m1, 4.0) == pytest.approx(th.beta_fp(e2m1) * 36 / 16)
    # Without the top-binade term mapping to 4 only moves mass into the subnormals: it never wins (no threshold).
    q4 = th.fp_qsnr_db(e2m1, k, rho=1.05, g=16, target=4.0)
    assert np.all(q4 < th.qsnr_curve("nvfp4", k))
    # r_T = 2 (T = 4): the term is Eq. 43 with T wherever its floor does not act (top binade energy >= kappa^2/g).
    t = 1.05 * k / 2
    unfloored = 2 * (t * stats.norm.pdf(t) + stats.norm.sf(t)) > k**2 / 16
    assert 10 < unfloored.sum() < k.size
    q4_top = th.fp_qsnr_db(e2m1, k, rho=1.05, g=16, target=4.0, top=True)
    np.testing.assert_allclose(q4_top[unfloored], q4[unfloored], rtol=1e-12)
    # T = 6 (r_T = 1.5), no exact max: the normal error grows by alpha_M * (2/1.5 - 1) * E[Z^2 1{|Z| >= 4c}].
    c = 1.05 * 2.5 / 6
    w_top = 2 * integrate.quad(lambda z: z * z * stats.norm.pdf(z), 4 * c, np.inf)[0]
    r_plain = 10 ** (-th.fp_qsnr_db(e2m1, 2.5, rho=1.05) / 10)
    r_top = 10 ** (-th.fp_qsnr_db(e2m1, 2.5, rho=1.05, top=True) / 10)
    assert r_top - r_plain == pytest.approx(th.alpha_m(1) * (2 / 1.5 - 1) * w_top, rel=1e-9)
    assert th.uses_top_binade("nvfp4_4over6") and not any(th.uses_top_binade(n) for n in ADAPTIVE[:-1])
    assert th.top_binade(6.0) == (4.0, 1.5) and th.top_binade(4.0) == (2.0, 2.0)
    for bad in (5.0, 6.5, 0.5):  # off the grid, above Qmax, subnormal: the max would not be exact
        with pytest.raises(ValueError, match="target"):
            th.check_target(e2m1, bad)


def test_four_over_six_threshold_against_monte_carlo():
    """kappa* of nvfp4_to4 vs nvfp4_to6 measured with the real quantizers on 2^20 N(0, 1) elements (65536 blocks).

    Each block's relative error difference d = (err_4 - err_6) / energy is fitted by a quadratic in its own crest
    factor over [1.6, 2.4) (about 52000 blocks), kappa* is the fit's root and its standard error comes from the
    fit's covariance (blocks are independent; for i.i.d. Gaussian blocks the energy is independent of the shape,
    so the root of E[d | kappa] is the theory's E[err_4] = E[err_6]). SE is about 0.005 here. The derived formula
    with rho = 1 (an exact scale, "paper") and rho = 1.05 (the script's E4M3 allowance, "reference") must bracket
    the measurement, each by more than 4 SE: measured 1.984 here (1.988 on 2^24 elements) against 2.029 and 1.953.
    """
    x = jax.random.normal(jax.random.key(0), (256, 4096), jnp.float32)
    amax, energy, _ = (np.asarray(a, np.float64).ravel() for a in block_stats(x, 16, -1))
    err = {
        t: np.asarray(block_stats(x - lb.fake_quant(x, f"nvfp4_to{t}"), 16, -1)[1], np.float64).ravel() for t in (4, 6)
    }
    kappa, d = amax / np.sqrt(energy / 16), (err[4] - err[6]) / energy
    m = (kappa >= 1.6) & (kappa < 2.4)
    a = np.stack([np.ones(m.sum()), kappa[m] - 2, (kappa[m] - 2) ** 2], 1)
    coef, *_ = np.linalg.lstsq(a, d[m], rcond=None)
    resid = d[m] - a @ coef
    cov = resid @ resid / (m.sum() - 3) * np.linalg.inv(a.T @ a)
    t = np.roots(coef[::-1])
    t = float(np.real(t[np.argmin(np.abs(t))]))
    grad = -np.array([1, t, t * t]) / (coef[1] + 2 * coef[2] * t)
    measured, se = 2 + t, float(np.sqrt(grad @ cov @ grad))
    assert se < 0.0075  # so that 4 SE fit in half the bracket's width (0.038)
    lo, hi = th.adaptive_threshold("nvfp4_4over6", "reference").kappa, th.adaptive_threshold("nvfp4_4over6", "paper")
    assert lo + 4 * se < measured < hi.kappa - 4 * se
    assert th.adaptive_threshold("nvfp4_4over6", "reference", rho=1.0).kappa == pytest.approx(hi.kappa, abs=1e-3)


@pytest.mark.parametrize("name", ADAPTIVE)
@pytest.mark.parametrize("variant", th.VARIANTS)
def test_predict_choice_is_monotone_in_kappa(name, variant):
    fmt = get_format(name)
    # Up to 12 in the floored variants; "paper" up to sqrt(g) for E4M3 blocks (a block's own crest factor bound),
    # past which its unfloored Eq. 43 turns NaN (module docstring).
    top = 12.0 if variant != "paper" or fmt.scale_rule.name == "ue8m0" else math.sqrt(fmt.block_size)
    k = np.linspace(1, top, 4001)
    choice = th.predict_choice(fmt, k, variant)
    assert np.all(np.diff(choice) <= 0) and choice[0] == 1 and choice[-1] == 0
    star = th.adaptive_threshold(fmt, variant, kappa_range=(1.0, top))
    assert star.all_kappa == (star.kappa,) and star.int_wins_below
    far = np.abs(k - star.kappa) > 1e-9
    np.testing.assert_array_equal(choice[far], (k < star.kappa)[far])


def test_expected_adaptive_qsnr():
    k = np.array([1.5, 2.0, 2.5, 3.0])
    q = th.adaptive_qsnr_curve("if4", k)
    assert th.expected_adaptive_qsnr_db("if4", [2.5] * 3) == pytest.approx(float(q[2]), abs=1e-12)
    w = np.array([1.0, 4.0, 0.5, 2.0])
    want = -10 * np.log10(np.sum(w * 10 ** (-q / 10)) / w.sum())  # error energy over signal energy
    assert th.expected_adaptive_qsnr_db("if4", k, weights=w) == pytest.approx(want, abs=1e-12)
    assert th.expected_adaptive_qsnr_db("if4", k, weights=3 * w) == pytest.approx(want, abs=1e-12)
    assert th.expected_adaptive_qsnr_db("if4", k, weights=[0, 1, 0, 0]) == pytest.approx(float(q[1]), abs=1e-12)
    # For plain formats it is analysis.advise's energy-weighted prediction (an independent implementation).
    x = jnp.asarray(np.asarray(jax.random.normal(jax.random.key(1), (8, 512))) * np.linspace(0.1, 3, 512))
    amax, energy, count = (np.asarray(a, np.float64).ravel() for a in block_stats(x, 16, -1))
    kb = amax / np.sqrt(energy / count)
    got = th.expected_adaptive_qsnr_db("nvfp4", kb, weights=energy)
    assert got == pytest.approx(predicted_from_block_stats(amax, energy, count, get_format("nvfp4"))[1])
    with pytest.raises(ValueError, match="crest factors"):
        th.expected_adaptive_qsnr_db("if4", [0.5, 2.0])
    with pytest.raises(ValueError, match="one value per block"):
        th.expected_adaptive_qsnr_db("if4", k, weights=[1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        th.expected_adaptive_qsnr_db("if4", k, weights=[1, -1, 1, 1])


def test_adaptive_errors():
    with pytest.raises(ValueError, match="not an adaptive format"):
        th.adaptive_threshold("nvfp4")
    with pytest.raises(ValueError, match="not an adaptive format"):
        th.candidate_curves("mxint4", 2.0)
    # Three candidates, the last with the same theory as the second: no single threshold; ties go to the earlier.
    three = lb.adaptive(["mxfp4", "mxint4", get_format("mxint4", int_range="asymmetric")])
    with pytest.raises(ValueError, match="exactly two"):
        th.adaptive_threshold(three)
    assert len(th.candidate_curves(three, 2.0)) == 3
    assert th.predict_choice(three, [1.0, 12.0]).tolist() == [1, 0]
    with pytest.raises(ValueError, match="no threshold for nvfp4_4over6.*nvfp4_to6 has the higher"):
        th.adaptive_threshold("nvfp4_4over6", kappa_range=(2.5, 3.5))

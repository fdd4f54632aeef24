"""Goldens and properties of analysis.theory (paper §4, App. B; NOTES.md §6).

Each golden names its source: "printed" = in the paper; "recomputed" = NOTES.md's independent recomputation.
"""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from analysis import theory as th
from lowbit_jax.formats import Format, fp, get_format, int_

PAIRS = [("mxint8", "mxfp8"), ("mxint6", "mxfp6"), ("mxint4", "mxfp4"), ("nvint4", "nvfp4")]
KAPPAS = np.array([1, 1.5, 2, 2.5, 3, 4, 5, 6, 7.55, 8, 10, 12])

# NOTES §6.5 table / §16.1, recomputed: "Script model, exact INT constant" column.
REFERENCE = [(7.5425, 31.864), (1.9579, 31.537), (2.0396, 19.141), (2.3899, 21.143)]
# NOTES §6.5 / §16.1, recomputed: "Paper formulas as printed" column.
PAPER = [(7.5425, 31.864), (1.9579, 31.537), (2.0397, 19.140), (2.4628, 21.305)]
# NOTES §6.5 / §16.1, recomputed: "Script as coded" column (rounds to the printed 7.55/1.96/2.04/2.39).
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
    # NOTES §6.5, recomputed: "With rho_NV = 1 and w_zero kept, NV gives 2.4627".
    assert th.crossover("nvint4", "nvfp4", rho=1.0).kappa == pytest.approx(2.4627, abs=1e-4)


def test_fp_ceilings_and_int_offsets():
    # NOTES §6.3 / §16.2-3: Eq. 41 ceilings (exact 31.864, 19.823), E4M3 gain 10 log10(g/(g-1)), UE8M0 loss.
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
    [  # NOTES §6.6 / §16.4 spot checks, recomputed
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
    # NOTES §6.6, recomputed: peak 23.246 dB at kappa 3.855, where w_norm - kappa^2/16 reaches 0.
    k = np.linspace(3.0, 5.0, 20001)
    q = th.qsnr_curve("nvfp4", k)
    assert q.max() == pytest.approx(23.246, abs=1e-3)
    assert k[q.argmax()] == pytest.approx(3.855, abs=2e-3)


# NOTES §6.6 table, recomputed. Rows hold for "reference" (INT: the "exact" rows) and "script".
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

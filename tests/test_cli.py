"""The experiments' command lines and figures as a newcomer meets them: a help line per flag, one-line errors,
any block size the library takes, format names in any case, figures that stay readable; QArray's short repr."""

import dataclasses
import importlib
import json
import math
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lowbit_jax as lb
from analysis import bench_plots, plotting, real_plots
from experiments import common, crossover, direct_cast_lm, grad_bias

EXPERIMENTS = (
    "adaptive",
    "bench",
    "bench_train",
    "clipping",
    "crossover",
    "direct_cast",
    "direct_cast_lm",
    "formats",
    "grad_bias",
    "hardware",
    "pareto",
    "tensor_stats",
    "train",
    "tune_kernels",
)


def _module(name: str):
    return importlib.import_module(f"experiments.{name}")


def test_every_experiment_is_listed_here_and_in_the_readme():
    root = common.repo_root()
    on_disk = {p.stem for p in (root / "experiments").glob("*.py")} - {"__init__", "common"}
    assert set(EXPERIMENTS) == on_disk
    rows = re.findall(r"^\| `(\w+)` \|", (root / "README.md").read_text(), re.M)
    assert sorted(rows) == sorted(EXPERIMENTS)


# ------------------------------------------------------------------------------------------------ --help
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_flag_has_a_help_line(name, capsys):
    mod = _module(name)
    with pytest.raises(SystemExit) as exit_info:
        mod.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    parser = common.build_parser(mod.Config, "", getattr(mod, "PRESETS", None))
    flags = {a.option_strings[0]: a.help for a in parser._actions if a.option_strings[0] != "-h"}
    assert set(flags) >= {"--" + f.name.replace("_", "-") for f in dataclasses.fields(mod.Config)}
    for flag, help_text in flags.items():
        assert flag in text
        words = help_text.split("(default:")[0].strip()
        assert words, f"{name} {flag} has no help text"


def test_help_explains_the_sentinel_defaults():
    helps = common.field_help(crossover.Config)
    assert "0 = each format's own" in helps["block_size"] and "'' = each format's own" in helps["scale"]
    parser = common.build_parser(crossover.Config, "", crossover.PRESETS)
    scale = next(a for a in parser._actions if "--scale" in a.option_strings)
    assert scale.help.endswith("(default: '')")


def test_a_subclass_keeps_its_base_class_help():
    from analysis.lm import train as lm_train
    from experiments import clipping

    base, sub = common.field_help(lm_train.TrainConfig), common.field_help(clipping.Config)
    assert sub["steps"] == base["steps"] == "optimizer steps"  # clipping redefines steps without a comment


# ------------------------------------------------------------------------------------------------ errors
def _error_lines(capsys, fn, argv) -> list[str]:
    with pytest.raises(SystemExit) as exit_info:
        fn(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()


@pytest.mark.parametrize(
    "name, argv, message",
    [
        ("crossover", ["--pairs", "mxint9/mxfp8"], "unknown format 'mxint9'"),
        ("crossover", ["--block-size", "-3"], "--block-size -3"),
        ("bench", ["--formats", "nvfp5"], "unknown format 'nvfp5'"),
        ("grad_bias", ["--checkpoint", "no/such/folder"], "--checkpoint no/such/folder: no such folder"),
        ("direct_cast_lm", ["--checkpoints", "no/such/folder"], "--checkpoints no/such/folder: no such folder"),
        ("direct_cast", ["--pairs", "mxint4:block_size=48/mxfp4:block_size=48"], "block size 48"),
        ("adaptive", ["--formats", "if4:block_size=48"], "block size 48"),
        ("pareto", ["--block-sizes", "32,33"], "--block-sizes 33"),
    ],
)
def test_user_errors_are_one_line(name, argv, message, capsys):
    usage, error = _error_lines(capsys, _module(name).main, argv)
    assert usage.startswith(f"usage: python -m experiments.{name} ")
    assert error.startswith(f"python -m experiments.{name}: error: ") and message in error


@pytest.mark.slow
def test_a_missing_checkpoint_stops_the_process_without_a_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.grad_bias", "--checkpoint", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].endswith("python -m experiments.train --precision none")


@pytest.mark.parametrize(("name", "flag"), [("direct_cast_lm", "--checkpoints"), ("grad_bias", "--checkpoint")])
def test_a_checkpoint_trained_with_a_tokenizer_is_refused(name, flag, tmp_path, capsys):
    """These experiments evaluate byte-level text: a model trained on a tokenizer's ids would read other tokens."""
    (tmp_path / "checkpoint.msgpack").write_bytes(b"")
    meta = {"text": {"tokenizer": "/data/tokenizer.json"}}
    (tmp_path / "model.json").write_text(json.dumps({"model": {}, "meta": meta}))
    _, error = _error_lines(capsys, _module(name).main, [flag, str(tmp_path)])
    assert error.startswith(f"python -m experiments.{name}: error: ") and "trained with the tokenizer" in error


# ------------------------------------------------------------------------------------------------ block sizes
@pytest.mark.slow
def test_crossover_measures_any_block_size(tmp_path):
    """Block 33 (not a power of two): the measurement rows hold whole blocks; the library pads nothing here."""
    argv = ["--preset", "tiny", "--block-size", "33", "--pairs", "MXINT4/MXFP4", "--formats", "mxint4"]
    argv += ["--adaptive", "", "--distributions", "gaussian,outliers", "--gaussian-shape", "8,1024"]
    result = crossover.main([*argv, "--probe-shape", "64,64", "--out", str(tmp_path)])
    assert result["empirical"]["MXINT4/MXFP4"]["block_size"] == 33  # sqrt(33) > 1.5 kappa*: not enlarged
    rows = (tmp_path / "montecarlo.csv").read_text().splitlines()
    assert len(rows) > 1 and all(r.startswith("MXINT4/MXFP4,33,") for r in rows[1:])


@pytest.mark.parametrize("block, width", [(33, 4125), (48, 4128), (132, 4224), (32, 4096), (256, 4096), (8192, 8192)])
def test_crossover_rows_hold_whole_blocks(block, width):
    cfg = dataclasses.replace(crossover.PRESETS["tiny"], distributions=("gaussian",), mc_rows=1)
    x = crossover.mc_tensor(cfg, jax.random.key(0), block)
    assert x.shape[1] == width  # powers of two up to 4096 keep the 4096 columns they always had


def test_crossover_enlarges_a_block_of_any_size():
    mxint8 = lb.get_format("mxint8", block_size=33)
    assert crossover.mc_block_size(mxint8, 7.54, 0) == 132  # 33 doubled until sqrt(g) >= 1.5 x 7.54
    assert crossover.mc_block_size(mxint8, 7.54, 48) == 48  # --mc-block-size is taken as given


# ------------------------------------------------------------------------------------------------ format names
UPPER = {
    "adaptive": ["--formats", "IF4,MXIF4"],
    "bench": ["--formats", "MXFP4,NVFP4"],
    "bench_train": ["--precision", "NONE,MXINT8,NVIDIA_NVFP4"],
    "clipping": ["--scales", "BF16,UE8M0", "--blocks", "CHANNEL,32", "--ue8m0-scale-dtype", "FLOAT32"],
    "crossover": ["--pairs", "MXINT4/MXFP4", "--formats", "MXFP4", "--adaptive", "IF4", "--scale", "E4M3"],
    "direct_cast": ["--pairs", "NVINT4/NVFP4", "--adaptive", "IF4"],
    "formats": ["--formats", "MXINT8,NVFP4", "--grids", "MXFP4"],
    "grad_bias": ["--cases", "FP32,MXFP4+SR"],
    "hardware": ["--adaptive", "IF4,MXIF8"],
    "pareto": ["--formats", "MXINT4,MXFP4,IF4"],
    "tensor_stats": ["--pairs", "MXINT8/MXFP8"],
    "train": ["--precision", "NONE,MXINT8"],
    "tune_kernels": ["--formats", "MXINT8,INT8_CHANNEL"],
}


@pytest.mark.parametrize("name", sorted(UPPER))
def test_format_names_in_upper_case(name):
    mod = _module(name)
    common.parse_config(mod.Config, UPPER[name], "", getattr(mod, "PRESETS", None))


def test_upper_case_names_mean_the_same_runs(tmp_path):
    assert grad_bias.parse_case("MXFP4+SR") == (lb.get_format("mxfp4"), True)
    (tmp_path / "checkpoint.msgpack").write_text("")
    (tmp_path / "model.json").write_text("{}")
    cfg, _ = common.parse_config(
        direct_cast_lm.Config, ["--formats", "MXINT8,MXFP8", "--checkpoints", str(tmp_path)], ""
    )
    assert cfg.formats == ("mxint8", "mxfp8")  # the pairs of the win counts are found by name
    cfg, _ = common.parse_config(crossover.Config, ["--pairs", "MXINT4/MXFP4", "--scale", "E4M3"], "")
    assert crossover.parse_pair(cfg.pairs[0], cfg.block_size, cfg.scale)[1].scale == "e4m3"


# ------------------------------------------------------------------------------------------------ figures
def _panel(**kw) -> plotting.PairPanel:
    kappa = np.linspace(1.0, 12.0, 200)
    runaway = np.where(kappa < 4, 20 + kappa, 20 + kappa + 5 * (kappa - 4) ** 2)  # above the axes' 31 dB from 5.1
    theory = {"reference": (30 - 2 * kappa, 20 + 0 * kappa), "paper": (30 - 2 * kappa, runaway)}
    stars = {"reference": 5.0, "paper": 4.5, "empirical": float("nan")}
    return plotting.PairPanel("t", "int", "fp", kappa, theory, stars, **kw)


def test_crossover_panel_shades_unreachable_crest_factors_and_labels_kappa_star():
    fig = plotting.crossover_figure([_panel(block_size=32, mc_block_size=64), _panel(block_size=16)], ncols=2)
    (ax_a, ax_b) = fig.axes
    labels_a = ax_a.get_legend_handles_labels()[1]
    assert f"κ > √32 = {math.sqrt(32):.2f}: unreachable at block 32 (measured at block 64)" in labels_a
    assert f"κ > √64 = {8.0:.2f}: unreachable at block 64" in labels_a
    assert "κ > √16 = 4.00: unreachable at block 16" in ax_b.get_legend_handles_labels()[1]
    assert {"κ* = 5.00 (reference theory)", "κ* = 4.50 (paper theory)"} <= set(labels_a)
    lo, hi = ax_a.get_ylim()
    for line in (ln for ln in ax_a.get_lines() if len(ln.get_ydata()) > 2):  # the curves (kappa* lines: axes units)
        y = np.asarray(line.get_ydata(), np.float64)
        assert np.all(~np.isfinite(y) | ((y >= lo) & (y <= hi))), line.get_label()
    assert (lo, hi) == (6.0 - 2.0, 28.0 + 3.0)  # the non-paper curves' range (30 - 2 kappa, 20), with margins
    assert "fp theory (paper), off scale from κ = 5.1" in labels_a
    plotting.plt.close(fig)


def _min_gap_inches(ax) -> float:
    """The smallest horizontal gap between neighbouring x tick labels inside the axis range (drawn figure)."""
    lo, hi = ax.get_xlim()
    shown = [t for t, v in zip(ax.get_xticklabels(), ax.get_xticks()) if lo <= v <= hi and t.get_text()]
    boxes = sorted((t.get_window_extent() for t in shown), key=lambda b: b.x0)
    return min(b.x0 - a.x1 for a, b in zip(boxes, boxes[1:])) / ax.figure.dpi


def test_grad_bias_figure_ticks_do_not_collide_and_the_legend_is_outside():
    dy = [-9e-5, 1.1e-5, 1e-5, -5.6e-5, -2.2e-5, 0.0, 3e-4, -1e-3]
    cases = [
        {
            "label": f"case {i}",
            "relative_bias": 0.0 if i == 0 else 1e-2,
            "noise_floor": 5e-3,
            "mean_signed_error_z": 1.0,
            "operand_signed_error": {"dy": v},
            "extreme_code_fraction": 0.0,
        }
        for i, v in enumerate(dy)
    ]
    fig = plotting.grad_bias_figure(cases)
    fig.canvas.draw()
    assert all(ax.get_legend() is None for ax in fig.axes) and fig.legends
    axs = fig.axes[2]
    assert axs.get_xscale() == "symlog" and _min_gap_inches(axs) >= 0.2  # matplotlib's own ticks: 0.095 in
    assert plotting._symlog_ticks(dy, 1e-6) == [-1e-3, -1e-4, -1e-5, 0.0, 1e-5, 1e-4, 1e-3]
    legend_box = fig.legends[0].get_window_extent()
    assert not any(legend_box.overlaps(ax.get_window_extent()) for ax in fig.axes)
    plotting.plt.close(fig)


def test_drift_figure_marks_zeros_and_labels_its_axes():
    metrics = {
        r: {f: {"1 - top1": v, "kl": 1e-4} for f, v in zip("ab", vals)}
        for r, vals in (("none", (0.0, 0.06)), ("hadamard", (0.0625, 0.0)))
    }
    fig = real_plots.drift_figure(metrics, ["a", "b"], ["1 - top1", "kl"], {"kl": "KL (nats)"})
    fig.canvas.draw()
    ax_top, ax_kl = fig.axes
    zeros = [t for t in ax_top.texts if t.get_text() == "0"]
    assert len(zeros) == 2 and all(ax_top.get_window_extent().contains(*t.get_window_extent().p0) for t in zeros)
    assert ax_top.get_ylabel() == "1 - top1" and ax_kl.get_ylabel() == "KL (nats)"
    assert not ax_kl.texts
    plotting.plt.close(fig)


def test_bench_and_tune_write_a_figure(tmp_path):
    from experiments import bench

    bench.main(["--formats", "mxint4", "--size", "64", "--repeats", "1", "--out", str(tmp_path)])
    assert (tmp_path / "bench.png").stat().st_size > 0
    rows = [
        {"dtype": "float32", "format": "copy", "tiles": "copy", "gbps": 10.0},
        {"dtype": "float32", "format": "mxint8", "tiles": "xla", "gbps": 4.0},
        {"dtype": "float32", "format": "mxint8", "tiles": "blocks=16 warps=4", "gbps": 6.0},
        {"dtype": "float32", "format": "mxint8", "tiles": "blocks=32 warps=4", "gbps": float("nan")},
    ]
    fig = bench_plots.tune_figure(rows)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "mxint8 xla",
        "mxint8 blocks=16 warps=4",
        "mxint8 blocks=32 warps=4",
    ]
    assert [t.get_text().strip() for t in ax.texts] == ["4.0", "6.0", "failed"]
    assert "10.0 GB/s" in ax.get_xlabel()
    plotting.plt.close(fig)


# ------------------------------------------------------------------------------------------------ QArray repr
@pytest.mark.parametrize("name", ["mxfp4", "nvfp4", "if4", "mxif4", "int8_channel", "bf16", "nvfp4_2d"])
def test_qarray_repr_is_short_and_names_the_format(name):
    x = jax.random.normal(jax.random.key(0), (1024, 1024), jnp.float32)
    q = lb.quantize(x, name)
    text = repr(q)
    assert len(text) < 300 and text.startswith(f"QArray({lb.get_format(name).label}, shape=(1024, 1024)")
    assert "dtype=float32" in text and "\n" not in text


def test_qarray_repr_summarises_the_scales():
    # MXFP4: scale 2^ceil(log2(amax / 6)); rows of amax 3 and 12 give 1/2 and 2 (the paper's Eq. 9)
    x = jnp.stack([jnp.full((32,), 3.0), jnp.full((32,), 12.0)])
    assert "scales=float8_e8m0fnu(2, 1) in [0.5, 2]" in repr(lb.quantize(x, "mxfp4"))
    assert repr(lb.quantize(x.at[0, 0].set(jnp.nan), "mxfp4")).endswith("in [2, 2], NaN)")
    seen = []
    jax.jit(lambda v: seen.append(repr(lb.quantize(v, "mxfp4"))) or v)(x)
    assert seen == [
        "QArray(mxfp4, shape=(2, 32), dtype=float32, axis=1, codes=float4_e2m1fn(2, 32), scales=float8_e8m0fnu(2, 1))"
    ]

"""Matplotlib figures (no computation here): theory curves with Monte-Carlo points, crossovers marked."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

INT_COLOR, FP_COLOR, ADAPTIVE_COLOR, REFERENCE_COLOR = "tab:blue", "tab:orange", "tab:green", "0.45"


@dataclass(frozen=True)
class Envelope:
    """An adaptive format's theory curve per variant: the upper envelope of its candidates' curves."""

    label: str
    curves_db: dict[str, np.ndarray]  # variant -> curve on the panel's kappa grid


@dataclass(frozen=True)
class PairPanel:
    """Everything one crossover panel shows (already computed)."""

    title: str
    int_label: str
    fp_label: str
    kappa: np.ndarray
    theory_db: dict[str, tuple[np.ndarray, np.ndarray]]  # variant -> (int curve, fp curve)
    kappa_star: dict[str, float]  # variant or "empirical" -> kappa*
    mc_kappa: np.ndarray | None = None
    mc_int_db: np.ndarray | None = None
    mc_fp_db: np.ndarray | None = None
    envelopes: tuple[Envelope, ...] = ()  # adaptive formats over these two curves, drawn as wide bands
    reference_db: dict[str, np.ndarray] = field(default_factory=dict)  # label -> thin grey reference curve
    block_size: int | None = None  # the formats' block: crest factors above sqrt(block size) cannot occur
    mc_block_size: int | None = None  # the measurement's block, when it differs


_LINESTYLES = {"reference": "-", "paper": "--", "script": ":", "empirical": ":"}


def _in_view(kappa: np.ndarray, curve, lo: float, hi: float) -> tuple[np.ndarray, float | None, float]:
    """(the curve with points outside [lo, hi] masked, the first kappa where it leaves, the edge it leaves by)."""
    y = np.asarray(curve, np.float64)
    out = (y < lo) | (y > hi)
    if not out.any():
        return y, None, hi
    i = int(np.argmax(out))
    return np.where(out, np.nan, y), float(kappa[i]), hi if y[i] > hi else lo


def _line(ax, kappa, curve, lo, hi, style, label, **kw) -> None:
    """A theory line clipped to the axes: a curve that runs off (Eq. 43 as printed diverges for NVFP4) ends at the
    edge with an arrow head, and its legend entry says where."""
    y, k_out, edge = _in_view(kappa, curve, lo, hi)
    if k_out is not None:
        label += f", off scale from κ = {k_out:.1f}"
        marker = "^" if edge == hi else "v"
        ax.plot([k_out], [edge], marker, color=kw["color"], ms=6, clip_on=False, zorder=5)
    ax.plot(kappa, y, style, label=label, **kw)


def _unreachable(ax, p: PairPanel, k_max: float) -> None:
    """Shade the crest factors no block of the panel's block size(s) can have: kappa <= sqrt(block size)."""
    blocks = dict.fromkeys(b for b in (p.block_size, p.mc_block_size) if isinstance(b, int) and b > 0)
    for i, g in enumerate(blocks):
        edge = math.sqrt(g)
        if edge < k_max:
            label = f"κ > √{g} = {edge:.2f}: unreachable at block {g}"
            if g == p.block_size and len(blocks) > 1:
                label += f" (measured at block {p.mc_block_size})"
            ax.axvspan(edge, k_max, color="0.5", alpha=0.13 + 0.07 * i, lw=0, label=label, zorder=0)


def _limits(p: PairPanel) -> tuple[float, float]:
    """The QSNR range shown: the non-"paper" theory curves (or all if none) and the measured points."""
    shown = [np.asarray(c) for v, pair in p.theory_db.items() if v != "paper" for c in pair] or [
        np.asarray(c) for pair in p.theory_db.values() for c in pair
    ]
    shown += [np.asarray(a) for a in (p.mc_int_db, p.mc_fp_db) if a is not None and np.size(a)]
    lo, hi = min(np.nanmin(c) for c in shown), max(np.nanmax(c) for c in shown)
    return lo - 2.0, hi + 3.0


def crossover_figure(panels: Sequence[PairPanel], ncols: int = 2):
    """One panel per INT/FP pair: QSNR (dB) against crest factor, theory lines (clipped to the axes), measured
    markers, kappa* lines (in the legend with their values) and the unreachable kappa > sqrt(block size) shaded;
    legends beside the panels."""
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(9.6 * ncols, 4.3 * nrows), squeeze=False)
    for ax, p in zip(axes.ravel(), panels, strict=False):
        lo, hi = _limits(p)
        k_max = float(np.max(p.kappa))
        _unreachable(ax, p, k_max)
        for env in p.envelopes:
            for variant, curve in env.curves_db.items():
                label = f"{env.label} theory = upper envelope ({variant})"
                style = dict(color=ADAPTIVE_COLOR, lw=5.0, alpha=0.35)
                _line(ax, p.kappa, curve, lo, hi, _LINESTYLES.get(variant, "-"), label, **style)
        for label, curve in p.reference_db.items():
            _line(ax, p.kappa, curve, lo, hi, "-.", label, color=REFERENCE_COLOR, lw=1.0)
        for variant, (int_db, fp_db) in p.theory_db.items():
            ls = _LINESTYLES.get(variant, "-")
            _line(ax, p.kappa, int_db, lo, hi, ls, f"{p.int_label} theory ({variant})", color=INT_COLOR, lw=1.6)
            _line(ax, p.kappa, fp_db, lo, hi, ls, f"{p.fp_label} theory ({variant})", color=FP_COLOR, lw=1.6)
        if p.mc_kappa is not None:
            ax.plot(p.mc_kappa, p.mc_int_db, "o", ms=3.5, color=INT_COLOR, alpha=0.8, label=f"{p.int_label} measured")
            ax.plot(p.mc_kappa, p.mc_fp_db, "s", ms=3.5, color=FP_COLOR, alpha=0.8, label=f"{p.fp_label} measured")
        for name, k in p.kappa_star.items():
            if np.isfinite(k):
                label = f"κ* = {k:.2f} ({'measured' if name == 'empirical' else name + ' theory'})"
                ax.axvline(k, color="0.25", ls=_LINESTYLES.get(name, "-"), lw=1.0, label=label)
        ax.set_xlim(float(np.min(p.kappa)), k_max)
        ax.set_ylim(lo, hi)
        ax.set_title(p.title, fontsize=10)
        ax.set_xlabel("crest factor κ = max|x| / RMS")
        ax.set_ylabel("QSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def save(fig, path) -> None:
    """Write a figure as PNG and close it."""
    fig.savefig(path, dpi=130)
    plt.close(fig)


def hardware_sensitivity_figure(
    scales: np.ndarray,
    curves: dict[str, dict[str, dict[str, np.ndarray]]],
    bands: dict[str, dict[str, tuple[float, float]]],
    paper: dict[str, dict[str, float]],
    names: Sequence[str],
):
    """Rows energy / area, one column per configuration: its Table 5 ratio against one cell factor's scale (one line
    per cell, curves[metric][name][cell]), the 5-95 % band of random perturbations, and the paper's value dashed."""
    metrics = list(curves)
    fig, axes = plt.subplots(len(metrics), len(names), figsize=(3.4 * len(names), 3.0 * len(metrics)), squeeze=False)
    for row, metric in zip(axes, metrics, strict=True):
        row[0].set_ylabel(f"{metric} ratio")
        for ax, name in zip(row, names, strict=True):
            lo, hi = bands[metric][name]
            ax.axhspan(lo, hi, color="0.85", label="random 5-95 %")
            for cell, ratio in curves[metric][name].items():
                ax.plot(scales, ratio, lw=1.4, label=cell)
            if name in paper[metric]:
                ax.axhline(paper[metric][name], color="k", ls="--", lw=1.0, label="paper")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{name} {metric}", fontsize=9)
            ax.set_xlabel("cell factor scale", fontsize=8)
            ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def training_curves_figure(curves: dict[str, dict[str, list]], baseline: str = "none"):
    """Training loss (EMA) and validation loss against step, one line per precision; with the baseline present, a
    third panel shows each precision's training EMA minus the baseline's. curves[label] has step, loss_ema,
    val_step, val_loss."""
    has_base = baseline in curves and len(curves) > 1
    fig, axes = plt.subplots(1, 3 if has_base else 2, figsize=(5.0 * (3 if has_base else 2), 3.8), squeeze=False)
    ax_tr, ax_val = axes[0, 0], axes[0, 1]
    for i, (label, c) in enumerate(curves.items()):
        ax_tr.plot(c["step"], c["loss_ema"], lw=1.3, color=f"C{i}", label=label)
        ax_val.plot(c["val_step"], c["val_loss"], "o-", ms=3, lw=1.3, color=f"C{i}", label=label)
        if has_base and label != baseline:
            base = np.asarray(curves[baseline]["loss_ema"])
            n = min(len(base), len(c["loss_ema"]))
            diff = np.asarray(c["loss_ema"][:n]) - base[:n]
            axes[0, 2].plot(c["step"][:n], diff, lw=1.3, color=f"C{i}", label=label)
    for ax, title in ((ax_tr, "training loss (EMA 0.9)"), (ax_val, "validation loss")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("nats / token")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if has_base:
        axes[0, 2].axhline(0.0, color="k", lw=0.8)
        axes[0, 2].set_title(f"training EMA minus {baseline}")
        axes[0, 2].set_xlabel("step")
        axes[0, 2].grid(alpha=0.3)
        axes[0, 2].legend(fontsize=8)
        lo = min(len(curves[baseline]["step"]) // 10, 50)
        if lo:
            axes[0, 2].set_xlim(curves[baseline]["step"][lo], None)
    fig.tight_layout()
    return fig


def clipping_figure(rows: list[dict], paired: list[dict], baseline: dict | None, blocks: Sequence[str]):
    """Left: final validation loss (mean +- std over seeds) against block size, one line per scale and INT range,
    the unquantized baseline as a band. Right: the paired asym - sym difference per seed and its mean."""
    fig, (ax, axd) = plt.subplots(1, 2, figsize=(11.0, 4.0))
    x = np.arange(len(blocks))
    styles = {"asymmetric": "o-", "symmetric": "s--"}
    for scale in dict.fromkeys(r["scale"] for r in rows):
        for rng, style in styles.items():
            pts = {r["block"]: r for r in rows if r["scale"] == scale and r["int_range"] == rng}
            xs = [i for i, b in enumerate(blocks) if b in pts]
            ys = [pts[blocks[i]]["mean"] for i in xs]
            es = [pts[blocks[i]]["std"] for i in xs]
            ax.errorbar(xs, ys, yerr=es, fmt=style, ms=4, capsize=3, lw=1.2, label=f"{scale} scale, {rng}")
    if baseline:
        m, s = baseline["mean"], baseline["std"]
        ax.axhspan(m - s, m + s, color="0.85", label="unquantized (mean +- std)")
        ax.axhline(m, color="0.4", lw=0.8)
    for k, scale in enumerate(dict.fromkeys(p["scale"] for p in paired)):
        ps = {p["block"]: p for p in paired if p["scale"] == scale}
        for i, b in enumerate(blocks):
            if b in ps:
                off = i + 0.12 * (k - 0.5)
                axd.plot([off] * len(ps[b]["asym_minus_sym"]), ps[b]["asym_minus_sym"], ".", color=f"C{k}", alpha=0.6)
                axd.errorbar(off, ps[b]["mean"], yerr=ps[b]["std"], fmt="D", color=f"C{k}", capsize=3, ms=5)
        axd.plot([], [], "D", color=f"C{k}", label=f"{scale}: asym - sym (mean +- std, dots: seeds)")
    axd.axhline(0.0, color="k", lw=0.8)
    for a, title in ((ax, "final validation loss"), (axd, "paired difference, same seed and data")):
        a.set_xticks(x, [("per-ch." if b == "channel" else b) for b in blocks])
        a.set_xlabel("block size")
        a.set_title(title)
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    ax.set_ylabel("nats / token")
    fig.tight_layout()
    return fig


def _symlog_ticks(values, linthresh: float) -> list[float]:
    """Ticks of a symlog axis that do not collide: 0 and +-10^k for the decades above `linthresh` that the data
    reach (every other decade when there are more than three a side)."""
    big = max((abs(v) for v in values if np.isfinite(v)), default=0.0)
    top = max(math.ceil(math.log10(big)) if big > 0 else 0, round(math.log10(linthresh)) + 1)
    decades = list(range(round(math.log10(linthresh)) + 1, top + 1))
    decades = decades[::-1][::2][::-1] if len(decades) > 3 else decades
    pos = [10.0**k for k in decades]
    return [-t for t in reversed(pos)] + [0.0] + pos


def _pow10(v: float, _pos=None) -> str:
    if v == 0:
        return "0"
    return f"{'−' if v < 0 else ''}1e{round(math.log10(abs(v)))}"


def grad_bias_figure(cases: list[dict]):
    """Per case: relative gradient bias against its noise floor (log scale; exact zeros marked), the z-score of the
    mean signed gradient error (|z| < 2 shaded), and the signed error of the dY operands (symlog), with the share of
    blocks whose extreme landed on the extra code -2^(b-1); the legend below the panels."""
    labels = [c["label"] for c in cases]
    y = np.arange(len(cases))
    height = 0.32 * len(cases) + 2.2
    fig, (ax, axz, axs) = plt.subplots(1, 3, figsize=(15.0, height), sharey=True)
    floor = 1e-4
    ax.barh(y - 0.2, [max(c["relative_bias"], floor) for c in cases], 0.4, label="relative bias ||E[ĝ-g]|| / ||g||")
    ax.barh(y + 0.2, [max(c["noise_floor"], floor) for c in cases], 0.4, label="noise floor (standard error)")
    for yi, c in zip(y, cases):
        if c["relative_bias"] == 0:
            ax.annotate("exactly 0", (floor * 1.3, yi), fontsize=7, va="center")
    ax.set_xscale("log")
    ax.set_xlim(floor, None)
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_title("gradient bias vs noise floor")
    ax.set_xlabel("relative to ||g|| (log)", fontsize=8)
    axz.axvspan(-2, 2, color="0.9", label="|z| < 2: no detectable bias")
    axz.barh(y, [c["mean_signed_error_z"] for c in cases], 0.6, color="tab:green", label="z of the mean signed error")
    axz.set_title("z-score of the mean signed gradient error")
    axz.set_xlabel("standard errors", fontsize=8)
    dy = [c["operand_signed_error"]["dy"] for c in cases]
    linthresh = 1e-6
    axs.barh(y, dy, 0.6, color="tab:purple", label="dY: Σ(Q(x) - x) / Σ|x|")
    axs.set_xscale("symlog", linthresh=linthresh)
    ticks = _symlog_ticks(dy, linthresh)
    axs.set_xticks(ticks, [_pow10(t) for t in ticks], fontsize=7)
    axs.set_xlim(ticks[0], ticks[-1])
    axs.set_xlabel(f"signed error (symlog, linear within ±{linthresh:g})", fontsize=8)
    for yi, c in zip(y, cases):
        if c["extreme_code_fraction"] > 0:
            text = f"{100 * c['extreme_code_fraction']:.1f}% blocks at -2^(b-1)"
            axs.annotate(text, (0, yi + 0.35), fontsize=6, va="center", ha="center")
    axs.set_title("dY operands: Σ(Q(x) - x) / Σ|x|")
    for a in (axz, axs):
        a.axvline(0.0, color="k", lw=0.8)
    for a in (ax, axz, axs):
        a.grid(alpha=0.3, axis="x")
    handles, names = [], []
    for a in (ax, axz, axs):
        h, n = a.get_legend_handles_labels()
        handles, names = handles + h, names + n
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.45 / height, 1, 1))
    return fig


def direct_cast_lm_figure(rows: list[dict], formats: Sequence[str]):
    """KL x 10^6 (paper convention, log scale) per format, without and with Hadamard rotation (mean over
    checkpoints), INT formats blue and FP formats orange."""
    fig, ax = plt.subplots(figsize=(1.0 * len(formats) + 2.5, 3.8))
    x = np.arange(len(formats))
    for k, rot in enumerate((False, True)):
        vals = [
            np.mean([r["kl_paper"] for r in rows if r["format"] == f and bool(r["rotation"]) == rot] or [np.nan])
            for f in formats
        ]
        if np.all(np.isnan(vals)):
            continue
        colors = [INT_COLOR if "int" in f else FP_COLOR for f in formats]
        ax.bar(
            x + 0.4 * (k - 0.5),
            vals,
            0.38,
            color=colors,
            alpha=1.0 if not rot else 0.55,
            hatch="//" if rot else "",
            edgecolor="k",
            lw=0.5,
            label="Hadamard rotation" if rot else "no rotation",
        )
    ax.set_yscale("log")
    ax.set_xticks(x, formats, rotation=30)
    ax.set_ylabel("top-25 KL x 10^6 (÷25 convention)")
    ax.set_title("direct-cast inference vs the float model")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def pareto_figure(points: list[dict], distributions: Sequence[str]):
    """QSNR against area per MAC, one panel per distribution: one colour per format (INT filled circles, FP open
    squares), each point labelled with its block size, the Pareto front as a dashed step line."""
    formats = list(dict.fromkeys(p["format"] for p in points))
    colors = {f: plt.cm.tab10(i % 10) for i, f in enumerate(formats)}
    fig, axes = plt.subplots(1, len(distributions), figsize=(6.0 * len(distributions), 4.6), squeeze=False)
    for ax, dist in zip(axes[0], distributions, strict=True):
        for f in formats:
            mine = sorted((p for p in points if p["format"] == f), key=lambda p: p["block_size"])
            xs, ys = [p["area"] for p in mine], [p["qsnr_db"][dist] for p in mine]
            fp = "fp" in f
            ax.plot(xs, ys, "-", color=colors[f], lw=0.8, alpha=0.6)
            ax.scatter(xs, ys, marker="s" if fp else "o", facecolors="none" if fp else colors[f], edgecolors=colors[f])
            ax.plot([], [], "s" if fp else "o", color=colors[f], mfc="none" if fp else colors[f], label=f)
            for p, x, y in zip(mine, xs, ys, strict=True):
                ax.annotate(str(p["block_size"]), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6)
        front = sorted((p for p in points if p["pareto"][dist]), key=lambda p: p["area"])
        ax.step([p["area"] for p in front], [p["qsnr_db"][dist] for p in front], "k--", lw=0.9, where="post")
        ax.set_xlabel("area per MAC (MXFP8 block 32 = 1)")
        ax.set_ylabel(f"QSNR (dB), {dist}")
        ax.set_title(f"{dist}: accuracy against cost (labels: block size)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig

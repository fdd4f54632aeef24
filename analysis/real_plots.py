"""Figures of the real-tensor experiments (matplotlib only, no computation): Fig. 4-style scatter, crest
quantiles by block size, direct-cast drift per format."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.ticker import NullFormatter

from analysis.plotting import FP_COLOR, INT_COLOR, plt


@dataclass(frozen=True)
class ScatterPanel:
    """One pair under one rotation: per-tensor crest factor and QSNR of both formats."""

    title: str
    int_label: str
    fp_label: str
    crest: np.ndarray
    int_db: np.ndarray
    fp_db: np.ndarray


def qsnr_scatter_figure(rows: Sequence[Sequence[ScatterPanel]]):
    """Paper Fig. 4 layout: tensor QSNR against crest factor, one panel per pair, one row per rotation."""
    nrows, ncols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False)
    for ax_row, panels in zip(axes, rows):
        for ax, p in zip(ax_row, panels):
            ax.scatter(p.crest, p.int_db, s=4, alpha=0.5, color=INT_COLOR, label=p.int_label, lw=0)
            ax.scatter(p.crest, p.fp_db, s=4, alpha=0.5, color=FP_COLOR, label=p.fp_label, lw=0)
            ax.set_title(p.title, fontsize=8)
            ax.set_xlabel("crest factor", fontsize=8)
            ax.set_ylabel("QSNR (dB)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, markerscale=3, loc="upper right")
    fig.tight_layout()
    return fig


def crest_quantiles_figure(table: dict[str, dict[str, dict[str, dict[str, float]]]], roles: Sequence[str]):
    """Median (line) and Q1-Q3 (band) of the per-tensor mean crest factor against block size, one panel per
    rotation; table[rotation][role][block] = {min, q1, median, q3, max}."""
    fig, axes = plt.subplots(1, len(table), figsize=(5.0 * len(table), 3.6), squeeze=False)
    for ax, (rot, by_role) in zip(axes[0], table.items()):
        for role in roles:
            blocks = list(by_role[role])
            x = np.arange(len(blocks))
            med = [by_role[role][b]["median"] for b in blocks]
            style = {"color": "k", "lw": 2.0} if role == "all" else {"lw": 1.0}
            ax.plot(x, med, marker="o", ms=3, label=role, **style)
            if role == "all":
                q1 = [by_role[role][b]["q1"] for b in blocks]
                q3 = [by_role[role][b]["q3"] for b in blocks]
                ax.fill_between(x, q1, q3, color="0.8", label="all: Q1-Q3")
        ax.set_xticks(x, blocks, fontsize=8)
        ax.set_xlabel("block size")
        ax.set_ylabel("mean block crest factor")
        ax.set_title(f"rotation: {rot}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def _log_floor(values) -> tuple[float, float]:
    """Whole-decade limits of a log axis holding `values` (zeros excluded): the smallest bar at least twice the
    bottom, a decade more below for the zero marks."""
    pos = [v for v in values if np.isfinite(v) and v > 0]
    if not pos:
        return 1e-6, 1e-3
    lo, hi = math.floor(math.log10(min(pos) / 2)), math.ceil(math.log10(max(pos)))
    return 10.0 ** (lo - (1 if any(v == 0 for v in values) else 0)), 10.0 ** max(hi, lo + 1)


def drift_figure(
    metrics: dict[str, dict[str, dict[str, float]]],
    formats: Sequence[str],
    names: Sequence[str],
    ylabels: dict[str, str] | None = None,
):
    """Bars per format (log scale), with and without rotation, one panel per metric; metrics[rotation][format][name]
    holds values where lower is better (e.g. 1 - cosine, KL). Exact zeros, which a log axis cannot draw, are
    marked "0" at the bottom of the axis; ylabels[name] labels each panel's y axis (default: the name)."""
    fig, axes = plt.subplots(1, len(names), figsize=(3.3 * len(names), 3.3), squeeze=False)
    x = np.arange(len(formats))
    width = 0.8 / max(1, len(metrics))
    for ax, name in zip(axes[0], names):
        lo, hi = _log_floor([by_fmt[f][name] for by_fmt in metrics.values() for f in formats])
        for i, (rot, by_fmt) in enumerate(metrics.items()):
            vals = np.asarray([by_fmt[f][name] for f in formats], np.float64)
            xs = x + (i - (len(metrics) - 1) / 2) * width
            ax.bar(xs, np.where(vals > 0, vals, np.nan), width, color=f"C{i}", label=f"rotation: {rot}")
            for xz in xs[vals == 0]:
                ax.annotate(
                    "0",
                    (xz, lo),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    fontweight="bold",
                    color=f"C{i}",
                )
        ax.set_xticks(x, formats, rotation=60, fontsize=7)
        ax.set_xlim(-0.5, len(formats) - 0.5)  # NaN bars (zeros) do not widen the x range: fix it
        ax.set_yscale("log")
        ax.set_ylim(lo, hi)
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(name, fontsize=9)
        ax.set_ylabel((ylabels or {}).get(name, name), fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=len(labels), fontsize=7, frameon=False)
    if any(m[n] == 0 for by_fmt in metrics.values() for m in by_fmt.values() for n in names):
        fig.text(0.01, 0.97, '"0": exactly zero (a log axis has no bar for it)', fontsize=7, va="top")
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return fig

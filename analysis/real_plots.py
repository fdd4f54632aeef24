"""Figures of the real-tensor experiments (matplotlib only, no computation): Fig. 4-style scatter, crest
quantiles by block size, direct-cast drift per format."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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


def drift_figure(metrics: dict[str, dict[str, dict[str, float]]], formats: Sequence[str], names: Sequence[str]):
    """Bars per format (log scale), with and without rotation, one panel per metric; metrics[rotation][format][name]
    holds values where lower is better (e.g. 1 - cosine, KL)."""
    fig, axes = plt.subplots(1, len(names), figsize=(3.3 * len(names), 3.0), squeeze=False)
    x = np.arange(len(formats))
    width = 0.8 / max(1, len(metrics))
    for ax, name in zip(axes[0], names):
        for i, (rot, by_fmt) in enumerate(metrics.items()):
            ax.bar(x + (i - (len(metrics) - 1) / 2) * width, [by_fmt[f][name] for f in formats], width, label=rot)
        ax.set_xticks(x, formats, rotation=60, fontsize=7)
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig

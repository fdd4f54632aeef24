"""Matplotlib figures (no computation here): theory curves with Monte-Carlo points, crossovers marked."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

INT_COLOR, FP_COLOR = "tab:blue", "tab:orange"


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


_LINESTYLES = {"reference": "-", "paper": "--", "script": ":"}


def crossover_figure(panels: Sequence[PairPanel], ncols: int = 2):
    """One panel per INT/FP pair: QSNR (dB) against crest factor, theory lines, MC markers, kappa* lines."""
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 4.3 * nrows), squeeze=False)
    for ax, p in zip(axes.ravel(), panels, strict=False):
        for variant, (int_db, fp_db) in p.theory_db.items():
            ls = _LINESTYLES.get(variant, "-")
            ax.plot(p.kappa, int_db, ls, color=INT_COLOR, lw=1.6, label=f"{p.int_label} theory ({variant})")
            ax.plot(p.kappa, fp_db, ls, color=FP_COLOR, lw=1.6, label=f"{p.fp_label} theory ({variant})")
        if p.mc_kappa is not None:
            ax.plot(p.mc_kappa, p.mc_int_db, "o", ms=3.5, color=INT_COLOR, alpha=0.8, label=f"{p.int_label} measured")
            ax.plot(p.mc_kappa, p.mc_fp_db, "s", ms=3.5, color=FP_COLOR, alpha=0.8, label=f"{p.fp_label} measured")
        for name, k in p.kappa_star.items():
            if np.isfinite(k):
                ls = ":" if name == "empirical" else _LINESTYLES.get(name, "-")
                ax.axvline(k, color="0.35", ls=ls, lw=1.0)
                ax.annotate(
                    f"κ*={k:.2f} ({name})",
                    (k, 0.02 + 0.07 * list(p.kappa_star).index(name)),
                    xycoords=("data", "axes fraction"),
                    fontsize=7,
                    rotation=0,
                    color="0.25",
                )
        shown = [np.asarray(c) for v, pair in p.theory_db.items() if v != "paper" for c in pair] or [
            np.asarray(c) for pair in p.theory_db.values() for c in pair
        ]
        lo, hi = min(np.nanmin(c) for c in shown), max(np.nanmax(c) for c in shown)
        ax.set_ylim(lo - 2.0, hi + 3.0)  # Eq. 43 as printed diverges for NVFP4 at large kappa; keep the scale
        ax.set_title(p.title)
        ax.set_xlabel("crest factor κ = max|x| / RMS")
        ax.set_ylabel("QSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
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

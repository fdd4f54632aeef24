"""Figures of the adaptive-format experiment (matplotlib only, no computation): measured INT-choice probability
against block crest factor with the theory's kappa*, and the theory's expected QSNR against the measured one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from analysis.plotting import plt


@dataclass(frozen=True)
class ChoicePanel:
    """One adaptive format: measured P(candidate 1 | kappa) per data source, kappa* of the theory."""

    title: str
    kappa_star: float
    kappa_cap: float  # sqrt(block size): no block's own crest factor exceeds it
    curves: dict[str, tuple[np.ndarray, np.ndarray]]  # source -> (bin centres, share of candidate 1)


@dataclass(frozen=True)
class RhoPanel:
    """One adaptive format: measured P(candidate 1 | rho) per data source, the theory's single rho."""

    title: str
    rho_theory: float
    xlim: tuple[float, float]
    curves: dict[str, tuple[np.ndarray, np.ndarray]]  # source -> (bin centres, share of candidate 1)


@dataclass(frozen=True)
class ExpectedPanel:
    """One adaptive format: per-tensor (expected, measured) QSNR in dB for each data source."""

    title: str
    points: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


_MARKERS = "os^vDP*Xh<>"


def _grid(n: int, ncols: int, size: tuple[float, float]):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    return plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows + 0.5), squeeze=False)


def _legend(fig, axes, n: int, ncol: int) -> None:
    """Blank unused axes; one legend below the panels (from the first panel)."""
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), ncol), fontsize=7, markerscale=1.5)
    fig.tight_layout(rect=(0, 0.1 if axes.shape[0] == 1 else 0.06, 1, 1))


def _source_lines(ax, curves) -> None:
    """One line per data source ({label: (x, share)}): real tensors solid, synthetic dashed."""
    for i, (label, (x, frac)) in enumerate(curves.items()):
        real = label.startswith("real")
        ax.plot(
            x,
            frac,
            "-" if real else "--",
            marker=_MARKERS[i % len(_MARKERS)],
            ms=2.5,
            lw=1.6 if real else 1.0,
            label=label,
        )


def choice_figure(panels: Sequence[ChoicePanel], ncols: int = 3):
    """One panel per format: measured share of blocks choosing candidate 1 per crest-factor bin (a line per
    source), the theory's step (1 below kappa*, 0 above) and kappa* marked."""
    fig, axes = _grid(len(panels), ncols, (4.4, 3.3))
    for ax, p in zip(axes.ravel(), panels, strict=False):
        _source_lines(ax, p.curves)
        hi = p.kappa_cap * 1.05
        if np.isfinite(p.kappa_star):
            ax.axvline(p.kappa_star, color="k", lw=1.2, ls=":")
            ax.step(
                [1.0, p.kappa_star, hi],
                [1, 0, 0],
                where="post",
                color="0.2",
                lw=0.8,
                alpha=0.6,
                label="theory: INT iff κ < κ*",
            )
            ax.annotate(
                f"κ*={p.kappa_star:.2f}", (p.kappa_star, 0.9), xytext=(4, 0), textcoords="offset points", fontsize=7
            )
        else:
            ax.axhline(1.0, color="0.2", lw=0.8, alpha=0.6, label="theory: INT everywhere (κ* out of range)")
        ax.axvline(p.kappa_cap, color="0.6", lw=0.8, ls="-.")
        ax.set_xlim(1.0, hi)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(p.title, fontsize=9)
        ax.set_xlabel("block crest factor κ = max|x| / RMS", fontsize=8)
        ax.set_ylabel("share of blocks choosing cand. 1", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    _legend(fig, axes, len(panels), 5)
    return fig


def rho_figure(panels: Sequence[RhoPanel], ncols: int = 3):
    """One panel per format: measured share of blocks choosing candidate 1 against the block's own scale factor
    rho (candidate 0's scale over the exact amax / Qmax), a line per source, the theory's (average) rho marked."""
    fig, axes = _grid(len(panels), ncols, (4.4, 3.3))
    for ax, p in zip(axes.ravel(), panels, strict=False):
        _source_lines(ax, p.curves)
        ax.axvline(p.rho_theory, color="k", lw=1.2, ls=":")
        ax.annotate(
            f"theory ρ={p.rho_theory:.2f}", (p.rho_theory, 0.9), xytext=(4, 0), textcoords="offset points", fontsize=7
        )
        ax.set_xlim(*p.xlim)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(p.title, fontsize=9)
        ax.set_xlabel("block scale factor ρ = scale · Qmax / max|x| (candidate 0)", fontsize=8)
        ax.set_ylabel("share of blocks choosing cand. 1", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    _legend(fig, axes, len(panels), 5)
    return fig


def expected_figure(panels: Sequence[ExpectedPanel], ncols: int = 3):
    """One panel per format: the theory's expected adaptive QSNR (x) against the measured one (y), per tensor."""
    fig, axes = _grid(len(panels), ncols, (4.0, 3.5))
    for ax, p in zip(axes.ravel(), panels, strict=False):
        lo, hi = np.inf, -np.inf
        for i, (label, (e, m)) in enumerate(p.points.items()):
            e, m = np.asarray(e, np.float64), np.asarray(m, np.float64)
            ok = np.isfinite(e) & np.isfinite(m)
            if not ok.any():
                continue
            real = label.startswith("real")
            ax.scatter(
                e[ok],
                m[ok],
                s=7 if real else 30,
                alpha=0.5 if real else 0.9,
                lw=0,
                marker=_MARKERS[i % len(_MARKERS)],
                label=label,
            )
            lo, hi = min(lo, e[ok].min(), m[ok].min()), max(hi, e[ok].max(), m[ok].max())
        if np.isfinite(lo):
            ax.plot([lo - 0.5, hi + 0.5], [lo - 0.5, hi + 0.5], color="0.3", lw=0.8, ls=":")
        ax.set_title(p.title, fontsize=9)
        ax.set_xlabel("theory: expected QSNR (dB)", fontsize=8)
        ax.set_ylabel("measured QSNR (dB)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    _legend(fig, axes, len(panels), 6)
    return fig

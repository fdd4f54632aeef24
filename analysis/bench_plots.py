"""Figures of the throughput experiments (matplotlib only, no computation): fake-quant GB/s per format against a
device copy (experiments.bench) and per kernel tiling (experiments.tune_kernels)."""

from __future__ import annotations

import math

import numpy as np

from analysis.plotting import plt

COPY_STYLE = {"color": "k", "ls": "--", "lw": 1.0}
NAIVE_STYLE = {"color": "tab:red", "ls": ":", "lw": 1.2}
BASELINES = ("copy", "naive")  # the rows of experiments.bench that are baselines, not formats


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def _bars(ax, labels, gbps, colors, copy: float | None, notes=None, naive: float | None = None) -> None:
    """Horizontal GB/s bars, top to bottom, "failed" where a case has no timing; the copy's GB/s dashed (and the
    naive MXINT8's dotted, when given)."""
    y = np.arange(len(labels))
    ax.barh(y, [v if _finite(v) else 0.0 for v in gbps], 0.7, color=colors)
    for yi, v, note in zip(y, gbps, notes or [""] * len(labels)):
        text = f" {v:.1f}{note}" if _finite(v) else " failed"
        box = {"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.8}  # readable across the lines
        ax.annotate(text, (v if _finite(v) else 0.0, yi), va="center", fontsize=7, bbox=box)
    xlabel = "GB/s = (bytes read + bytes written) / time"
    if _finite(copy):
        ax.axvline(copy, **COPY_STYLE)
        xlabel += f"\ndashed: a device copy of the same array, {copy:.1f} GB/s"
    if _finite(naive):
        ax.axvline(naive, **NAIVE_STYLE)
        xlabel += f"\ndotted: naive single-rule MXINT8 (the yardstick), {naive:.1f} GB/s"
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlim(0, 1.45 * max([v for v in [*gbps, copy, naive] if _finite(v)], default=1.0))
    ax.set_xlabel(xlabel, fontsize=8)
    ax.grid(alpha=0.3, axis="x")


def _time_note(row: dict) -> str:
    """' (1.42x copy, 1.05x naive)': the row's time against each baseline that has one."""
    ratios = (("copy", row.get("ratio_to_copy")), ("naive", row.get("ratio_to_naive")))
    kept = [f"{v:.2f}x {b}" for b, v in ratios if _finite(v)]
    return f" ({', '.join(kept)})" if kept else ""


def bench_figure(rows: list[dict], machine: str = ""):
    """experiments.bench: one panel per dtype, the GB/s of each format and implementation (colour) against the
    device copy of the same array in the same run (dashed)."""
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows if r["impl"] not in BASELINES))
    n = max(sum(r["dtype"] == d and r["impl"] not in BASELINES for r in rows) for d in dtypes)
    fig, axes = plt.subplots(1, len(dtypes), figsize=(5.5 * len(dtypes), 0.22 * n + 1.9), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        mine = [r for r in rows if r["dtype"] == dtype and r["impl"] not in BASELINES]
        base = {b: next((r["gbps"] for r in rows if r["dtype"] == dtype and r["impl"] == b), None) for b in BASELINES}
        labels = [f"{r['format']} ({r['impl']})" if len(impls) > 1 else r["format"] for r in mine]
        colors = [f"C{impls.index(r['impl'])}" for r in mine]
        notes = [_time_note(r) for r in mine]
        _bars(ax, labels, [r["gbps"] for r in mine], colors, base["copy"], notes, base["naive"])
        size = mine[0]["size"] if mine else ""
        ax.set_title(f"jit(fake_quant), {dtype} {size}x{size}", fontsize=9)
    if machine:
        fig.suptitle(machine, fontsize=7)
    fig.tight_layout()
    return fig


def tune_figure(rows: list[dict], machine: str = ""):
    """experiments.tune_kernels: one panel per dtype, the GB/s of every Pallas tiling of each format (the best one
    darker), the XLA reference (grey) and the device copy (dashed)."""
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    n = max(sum(r["dtype"] == d and r["tiles"] != "copy" for r in rows) for d in dtypes)
    fig, axes = plt.subplots(1, len(dtypes), figsize=(5.5 * len(dtypes), 0.22 * n + 1.6), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        mine = [r for r in rows if r["dtype"] == dtype and r["tiles"] != "copy"]
        copy = next((r["gbps"] for r in rows if r["dtype"] == dtype and r["tiles"] == "copy"), None)
        best = {}
        for r in mine:
            if r["tiles"] != "xla" and _finite(r["gbps"]) and r["gbps"] > best.get(r["format"], -1.0):
                best[r["format"]] = r["gbps"]
        colors = [
            "0.6" if r["tiles"] == "xla" else ("tab:blue" if best.get(r["format"]) == r["gbps"] else "lightsteelblue")
            for r in mine
        ]
        _bars(ax, [f"{r['format']} {r['tiles']}" for r in mine], [r["gbps"] for r in mine], colors, copy)
        ax.set_title(f"Pallas tilings (best darker) vs XLA (grey), {dtype}", fontsize=9)
    if machine:
        fig.suptitle(machine, fontsize=7)
    fig.tight_layout()
    return fig

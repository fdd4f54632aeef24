"""Monte-Carlo QSNR against block crest factor with the real quantizers, binned so that theory overlays it.

Each block contributes its squared error and its energy to the bin of its own crest factor max|x| / RMS;
a bin's QSNR is -10 log10(sum error / sum energy). Binning blocks by their own crest factor matches the
theory's model (a block whose maximum sits kappa RMS above zero). Note kappa <= sqrt(block size) always.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np

from analysis.crest import block_stats, crest_from_stats
from analysis.crossing import first_crossing
from analysis.qsnr import qsnr_from_sums
from lowbit_jax.formats import Format
from lowbit_jax.quantize import fake_quant


@dataclass(frozen=True)
class BinnedQSNR:
    """Per-bin block counts and QSNR (dB) of each format; bins are crest-factor intervals [edges[i], edges[i+1])."""

    edges: np.ndarray
    counts: np.ndarray
    qsnr_db: dict[str, np.ndarray]

    @property
    def centers(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1])


@jax.jit(static_argnames=("fmt", "block_size"))
def _block_error_and_energy(x: jax.Array, fmt: Format, block_size) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(crest factor, squared error, energy) of every block of x (blocks along the last axis)."""
    amax, energy, count = block_stats(x, block_size, -1)
    _, err, _ = block_stats(x - fake_quant(x, fmt, -1), block_size, -1)
    return crest_from_stats(amax, energy, count), err, energy


def binned_qsnr(x: jax.Array, formats: dict[str, Format], edges: np.ndarray) -> BinnedQSNR:
    """Bin the blocks of `x` (along the last axis) by crest factor and measure each format's QSNR per bin.

    All formats must share one block size (the blocks being binned).
    """
    sizes = {f.block_size for f in formats.values()}
    if len(sizes) != 1:
        raise ValueError(f"formats must share a block size to be binned together, got {sorted(map(str, sizes))}")
    n_bins = len(edges) - 1
    counts, out = None, {}
    for label, fmt in formats.items():
        kappa, err, energy = (np.asarray(a).ravel() for a in _block_error_and_energy(x, fmt, fmt.block_size))
        ok = np.isfinite(kappa) & (energy > 0)
        idx = np.digitize(kappa[ok], edges) - 1
        inside = (idx >= 0) & (idx < n_bins)
        idx = idx[inside]
        counts = np.bincount(idx, minlength=n_bins)
        err_b = np.bincount(idx, weights=err[ok][inside].astype(np.float64), minlength=n_bins)
        sig_b = np.bincount(idx, weights=energy[ok][inside].astype(np.float64), minlength=n_bins)
        out[label] = qsnr_from_sums(err_b, sig_b)
    return BinnedQSNR(np.asarray(edges), counts, out)


def empirical_crossover(binned: BinnedQSNR, int_label: str, fp_label: str, min_count: int = 200) -> float:
    """Crest factor where INT stops beating FP in the binned measurement (bins with >= min_count blocks)."""
    diff = np.where(binned.counts >= min_count, binned.qsnr_db[int_label] - binned.qsnr_db[fp_label], np.nan)
    return first_crossing(binned.centers, diff)


__all__ = ["BinnedQSNR", "binned_qsnr", "empirical_crossover", "first_crossing"]

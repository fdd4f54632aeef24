"""Format advisor: for a tensor, each candidate's block crest factors, predicted and measured QSNR."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from analysis import theory
from analysis.crest import block_stats, crest_from_stats
from analysis.qsnr import qsnr_db, qsnr_from_sums
from lowbit_jax.formats import Format, get_format
from lowbit_jax.quantize import fake_quant


@dataclass(frozen=True)
class Candidate:
    """One candidate format on one tensor: mean block crest factor, predicted and measured QSNR (dB)."""

    name: str
    mean_crest: float
    predicted_db: float
    measured_db: float


@dataclass(frozen=True)
class Advice:
    """Candidates ranked by predicted QSNR, with the best by prediction and by measurement."""

    candidates: tuple[Candidate, ...]

    @property
    def predicted_best(self) -> str:
        return max(self.candidates, key=lambda c: c.predicted_db).name

    @property
    def measured_best(self) -> str:
        return max(self.candidates, key=lambda c: c.measured_db).name


def predicted_qsnr_db(x: jax.Array, fmt: Format, axis: int = -1, variant: str = "reference") -> tuple[float, float]:
    """(mean block crest, theory QSNR of the tensor): block error ratios R(kappa_b) weighted by block energy."""
    return predicted_from_block_stats(*block_stats(x, fmt.block_size, axis), fmt, variant)


def predicted_from_block_stats(amax, energy, count, fmt: Format, variant: str = "reference") -> tuple[float, float]:
    """predicted_qsnr_db from the blocks' (amax, sum of squares, count), as analysis.crest.block_stats gives them."""
    amax, energy, count = (np.asarray(a, np.float64).ravel() for a in (amax, energy, count))
    ok = energy > 0
    kappa = crest_from_stats(amax, energy, count)[ok]
    ratio = 10.0 ** (-theory.qsnr_curve(fmt, kappa, variant) / 10.0)  # each block's predicted error / energy
    return float(kappa.mean()), float(qsnr_from_sums(np.sum(ratio * energy[ok]), np.sum(energy[ok])))


def advise(
    x, candidates=("mxint8", "mxfp8", "mxint4", "mxfp4", "nvint4", "nvfp4"), axis: int = -1, variant: str = "reference"
) -> Advice:
    """Rank candidate formats for tensor `x` quantized along `axis` by theory, and measure each one."""
    x = jnp.asarray(x)
    rows = []
    for c in candidates:
        fmt = get_format(c)
        mean_crest, predicted = predicted_qsnr_db(x, fmt, axis, variant)
        measured = float(qsnr_db(x, fake_quant(x, fmt, axis)))
        rows.append(Candidate(fmt.label, mean_crest, predicted, measured))
    return Advice(tuple(sorted(rows, key=lambda r: -r.predicted_db)))

"""Measured per-block behaviour of adaptive formats: each block's crest factor, energy, chosen candidate and the
squared error of every candidate, and how well the theory's crest-factor rule (analysis.theory) predicts them.

A block's crest factor is its own kappa = max|x| / RMS (paper Eq. 11), so 1 <= kappa <= sqrt(block size).
Tensor QSNRs are -10 log10(sum of squared errors / sum of x^2) over the blocks (paper Eq. 10). Blocks that are
all zero or hold NaN/Inf are dropped (they have no crest factor). "INT" means candidate 1 throughout (the INT
grid of IF4/IF6/MXIF, the amax-to-4 scale of Four Over Six).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from analysis import theory
from analysis.crest import block_stats
from analysis.crossing import first_crossing
from analysis.qsnr import qsnr_from_sums
from lowbit_jax.formats import Format, get_format
from lowbit_jax.quantize import block_choices, fake_quant, quantize

FLAT_WIDTH = 1024  # flat_rows' row length: a multiple of every block size used here (16, 32)


@dataclass(frozen=True)
class BlockTable:
    """Per-block measurements of one tensor under one adaptive format, flattened over blocks.

    kappa, energy (sum x^2), choice (measured candidate index), rho (candidate 0's scale factor: its block scale
    times tensor scale, times its Qmax, over amax; the theory's rho, Eq. 17, of this block): (n,); err:
    (candidates, n) squared error of each candidate's own fake_quant; mismatch: (n,) bool, the adaptive
    fake_quant block differs in some bit from the chosen candidate's (never, by the format's contract), or None
    when not checked.
    """

    kappa: np.ndarray
    energy: np.ndarray
    choice: np.ndarray
    rho: np.ndarray
    err: np.ndarray
    mismatch: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.kappa.size)


def _adaptive(fmt: Format | str) -> Format:
    fmt = get_format(fmt)
    if not fmt.is_adaptive:
        raise ValueError(f"{fmt.name} is not an adaptive format (e.g. if4, mxif4, nvfp4_4over6)")
    return fmt


@functools.partial(jax.jit, static_argnames=("fmt", "verify"))
def _block_arrays(x: jax.Array, fmt: Format, verify: bool):
    """(kappa, energy, choice, rho, candidate errors, mismatch or None) of every block of a (rows, K) x, K a
    multiple of the block size."""
    g = fmt.block_size
    amax, energy, count = block_stats(x, g, -1)
    rms = jnp.sqrt(energy / count)
    kappa = jnp.where(rms > 0, amax / jnp.where(rms > 0, rms, 1.0), jnp.nan)
    q0 = quantize(x, fmt.candidates[0], -1)
    scale = jnp.abs(q0.scales.astype(jnp.float32)) * (1.0 if q0.tensor_scale is None else q0.tensor_scale)
    rho = jnp.where(amax > 0, scale * fmt.candidates[0].elem.max / jnp.where(amax > 0, amax, 1.0), jnp.nan)
    ys = [fake_quant(x, c, -1) for c in fmt.candidates]
    errs = jnp.stack([block_stats(x - y, g, -1)[1] for y in ys])
    choice = block_choices(x, fmt, -1)
    mismatch = None
    if verify:
        blocked = x.shape[:-1] + (x.shape[-1] // g, g)
        bits = jnp.stack([jax.lax.bitcast_convert_type(y, jnp.int32).reshape(blocked) for y in ys])
        chosen = jnp.take_along_axis(bits, choice[None, ..., None], axis=0)[0]
        own = jax.lax.bitcast_convert_type(fake_quant(x, fmt, -1), jnp.int32).reshape(blocked)
        mismatch = jnp.any(own != chosen, axis=-1)
    return kappa, energy, choice, rho, errs, mismatch


def block_table(x, fmt: Format | str, verify: bool = False) -> BlockTable:
    """Per-block table of a (rows, K) x (blocks along K, K a multiple of the block size) under the adaptive format
    `fmt`; verify: also compare the adaptive fake_quant with the chosen candidates' bit for bit (about 3x slower
    on XLA:CPU)."""
    fmt = _adaptive(fmt)
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2 or x.shape[1] % fmt.block_size:
        raise ValueError(f"need a (rows, K) matrix with K a multiple of {fmt.block_size}; got shape {x.shape}")
    kappa, energy, choice, rho, errs, mismatch = jax.device_get(_block_arrays(x, fmt, verify))
    kappa, energy = np.ravel(kappa), np.ravel(energy)
    ok = np.isfinite(kappa) & np.isfinite(energy) & (energy > 0)
    return BlockTable(
        kappa=kappa[ok].astype(np.float64),
        energy=energy[ok].astype(np.float64),
        choice=np.ravel(choice)[ok].astype(np.int32),
        rho=np.ravel(rho)[ok].astype(np.float64),
        err=np.reshape(errs, (errs.shape[0], -1))[:, ok].astype(np.float64),
        mismatch=None if mismatch is None else np.ravel(mismatch)[ok],
    )


def bucket(n: int) -> int:
    """The smallest of 1, 2, 3, 4, 6, 8, 12, 16, ... (2^k and 3 * 2^k) that is >= n: few distinct padded sizes."""
    if n <= 1:
        return 1
    p = 1 << (n - 1).bit_length()
    return 3 * p // 4 if 3 * p // 4 >= n else p


def flat_rows(matrix, block_size: int, width: int = FLAT_WIDTH) -> np.ndarray:
    """A (rows, K) matrix (blocks along K) as (bucket(n), width) rows holding the same blocks in order, zero
    padded: every block stays whole (K and width are multiples of the block size), the tensor's amax is kept and
    the padding forms all-zero blocks, which block_table drops. So block_table(flat_rows(m)) == block_table(m),
    with one compiled shape per bucket instead of per matrix shape."""
    m = np.asarray(matrix, np.float32)
    if m.ndim != 2 or m.shape[1] % block_size or width % block_size:
        raise ValueError(f"need a (rows, K) matrix with K and {width} multiples of {block_size}; got {m.shape}")
    flat = m.ravel()
    rows = bucket(-(-flat.size // width))
    return np.pad(flat, (0, rows * width - flat.size)).reshape(rows, width)


def chosen_error(err: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """Per block, the squared error of the candidate `choice` names (err: (candidates, n))."""
    return np.take_along_axis(err, np.asarray(choice, np.int64)[None, :], axis=0)[0]


def tensor_summary(t: BlockTable, fmt: Format | str, variant: str = "reference") -> dict:
    """Measured against predicted for one tensor (a pool of blocks read as one tensor).

    qsnr_db: {candidate label: dB, "adaptive": dB, "kappa_rule": dB when every block takes theory.predict_choice};
    gain_db: adaptive minus the best fixed candidate; frac_int / frac_int_pred: share of blocks taking candidate 1,
    measured / predicted from kappa; agreement: share of blocks whose predicted and measured choices agree;
    expected_db: theory.expected_adaptive_qsnr_db with blocks weighted by energy, for the adaptive format and
    (plain curves) each candidate; mismatched_blocks: blocks whose adaptive fake_quant differs from the chosen
    candidate's (0 by the format's contract; None when not checked).
    """
    fmt = _adaptive(fmt)
    labels = theory.candidate_labels(fmt)
    if len(t) == 0:
        return {"n_blocks": 0}
    pred = theory.predict_choice(fmt, t.kappa, variant)
    sig = t.energy.sum()
    chosen = chosen_error(t.err, t.choice)
    qsnr = {lab: float(qsnr_from_sums(t.err[i].sum(), sig)) for i, lab in enumerate(labels)}
    qsnr["adaptive"] = float(qsnr_from_sums(chosen.sum(), sig))
    qsnr["kappa_rule"] = float(qsnr_from_sums(chosen_error(t.err, pred).sum(), sig))
    expected = {
        lab: theory.expected_adaptive_qsnr_db(c, t.kappa, variant, t.energy)
        for lab, c in zip(labels, fmt.candidates, strict=True)
    }
    expected["adaptive"] = theory.expected_adaptive_qsnr_db(fmt, t.kappa, variant, t.energy)
    mismatched = None if t.mismatch is None else int(np.sum(t.mismatch))
    return {
        "n_blocks": len(t),
        "qsnr_db": qsnr,
        "gain_db": qsnr["adaptive"] - max(qsnr[lab] for lab in labels),
        "frac_int": float(np.mean(t.choice == 1)),
        "frac_int_pred": float(np.mean(pred == 1)),
        "agreement": float(np.mean(pred == t.choice)),
        "expected_db": expected,
        "mismatched_blocks": mismatched,
    }


@dataclass(frozen=True)
class ChoiceCurve:
    """Blocks binned by a statistic (crest factor, or rho), bins [edges[i], edges[i+1]): block counts and
    candidate-1 counts."""

    edges: np.ndarray
    counts: np.ndarray
    hits: np.ndarray

    @property
    def centers(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    @property
    def frac_int(self) -> np.ndarray:
        """Measured P(candidate 1 | bin) per bin (NaN in empty bins)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.hits / np.maximum(self.counts, 1), np.nan)

    def __add__(self, other: ChoiceCurve) -> ChoiceCurve:
        if not np.array_equal(self.edges, other.edges):
            raise ValueError("choice curves with different bins cannot be added")
        return ChoiceCurve(self.edges, self.counts + other.counts, self.hits + other.hits)

    def crossing(self, min_count: int = 1) -> float:
        """First crest factor where the binned share of candidate 1 falls through 1/2 (bins of >= min_count blocks,
        linear interpolation between bin centres); NaN if it never does."""
        diff = np.where(self.counts >= min_count, self.frac_int - 0.5, np.nan)
        return first_crossing(self.centers, diff)

    def best_threshold(self) -> tuple[float, float]:
        """(t, agreement) of the best rule 'candidate 1 iff kappa < t' over t in the bin edges: the most any
        crest-factor threshold can agree with the measured choices, to the bins' resolution."""
        total = self.counts.sum()
        if total == 0:
            return math.nan, math.nan
        below_hits = np.concatenate([[0], np.cumsum(self.hits)])  # blocks below edge i choosing 1
        below = np.concatenate([[0], np.cumsum(self.counts)])
        agree = below_hits + (total - below) - (self.hits.sum() - below_hits)
        i = int(np.argmax(agree))
        return float(self.edges[i]), float(agree[i] / total)


def choice_curve(kappa, choice, edges) -> ChoiceCurve:
    """Bin blocks by `kappa` (their crest factor, or another per-block statistic; `edges` increasing, blocks
    outside them left out)."""
    edges = np.asarray(edges, np.float64)
    n = len(edges) - 1
    idx = np.digitize(np.asarray(kappa, np.float64), edges) - 1
    inside = (idx >= 0) & (idx < n)
    counts = np.bincount(idx[inside], minlength=n)
    hits = np.bincount(idx[inside], weights=(np.asarray(choice)[inside] == 1).astype(np.float64), minlength=n)
    return ChoiceCurve(edges, counts.astype(np.int64), hits.astype(np.int64))


def kappa_edges(width: float, kappa_max: float) -> np.ndarray:
    """Bin edges 1, 1 + width, ... up to kappa_max, then +inf (crest factors are >= 1, so every block falls in)."""
    if not 0 < width < kappa_max - 1:
        raise ValueError(f"bin width must be in (0, kappa_max - 1); got {width} with kappa_max {kappa_max}")
    n = int(round((kappa_max - 1.0) / width))
    return np.concatenate([1.0 + width * np.arange(n + 1), [np.inf]])


def rho_edges(fmt: Format | str) -> np.ndarray:
    """Bins of candidate 0's rho: [1, 2] in 20 for power-of-two (UE8M0 ceil) scales, else 1 +- 2^-4 in 16 (an E4M3
    scale rounded to nearest is within half of its 2^-3 relative step of the exact one)."""
    c0 = _adaptive(fmt).candidates[0]
    if c0.scale_rule.name == "ue8m0":
        return np.linspace(1.0, 2.0, 21)
    return np.linspace(1.0 - 2.0**-4, 1.0 + 2.0**-4, 17)


def kappa_threshold(fmt: Format | str, variant: str = "reference", kappa_max: float = 12.0) -> float:
    """theory.adaptive_threshold's kappa* (NaN when the candidate curves do not meet in [1, kappa_max])."""
    try:
        return theory.adaptive_threshold(fmt, variant, (1.0, kappa_max)).kappa
    except ValueError:
        return math.nan


def pool(
    summaries: Sequence[dict], fine: ChoiceCurve, coarse: ChoiceCurve, min_blocks: int, rho: ChoiceCurve | None = None
) -> dict:
    """Summary of a group of tensors: block shares pooled over all their blocks (frac_int, frac_int_pred,
    agreement, base_rate = the agreement of always guessing the majority choice), dB values averaged over tensors
    (qsnr_db, gain_db, expected_db, expected_minus_measured_db), kappa_50 (the coarse curve's 1/2 crossing over
    bins of >= min_blocks), the best crest-factor threshold (kappa_best, agreement_best) from the fine curve, and
    with `rho` the measured share of candidate 1 per rho bin (frac_int_by_rho: {"edges", "blocks", "frac_int"})."""
    used = [s for s in summaries if s.get("n_blocks", 0) > 0]
    if not used:
        return {"n_tensors": 0, "n_blocks": 0}
    n = np.asarray([s["n_blocks"] for s in used], np.float64)

    def share(key):
        return float(np.sum(n * np.asarray([s[key] for s in used])) / n.sum())

    def mean_db(key):
        return {k: float(np.mean([s[key][k] for s in used])) for k in used[0][key]}

    frac = share("frac_int")
    k_best, a_best = fine.best_threshold()
    mism = [s["mismatched_blocks"] for s in used]
    return {
        "n_tensors": len(used),
        "n_blocks": int(n.sum()),
        "frac_int": frac,
        "frac_int_pred": share("frac_int_pred"),
        "agreement": share("agreement"),
        "base_rate": max(frac, 1.0 - frac),
        "kappa_50": coarse.crossing(min_blocks),
        "kappa_best": k_best,
        "agreement_best": a_best,
        "qsnr_db": mean_db("qsnr_db"),
        "gain_db": float(np.mean([s["gain_db"] for s in used])),
        "expected_db": mean_db("expected_db"),
        "expected_minus_measured_db": float(
            np.mean([s["expected_db"]["adaptive"] - s["qsnr_db"]["adaptive"] for s in used])
        ),
        "mismatched_blocks": None if any(m is None for m in mism) else int(sum(mism)),
    } | ({} if rho is None else {"frac_int_by_rho": curve_dict(rho)})


def curve_dict(c: ChoiceCurve) -> dict:
    """A choice curve as lists (edges, per-bin block counts, per-bin share of candidate 1; NaN where empty)."""
    return {"edges": c.edges.tolist(), "blocks": c.counts.tolist(), "frac_int": c.frac_int.tolist()}

"""Statistics of real GEMM tensors (paper §5.1): block crest factors, tensor QSNR per format, theory's verdict.

A captured linear layer gives the paper's six tensors, each the (rows, K) matrix quantized in blocks along K:
  x_fwd (1) X along in-features, w_fwd (2) W along in-features, dy_dx (3) dY along out-features,
  w_dx (4) W along out-features, x_dw (5) X along tokens, dy_dw (6) dY along tokens.
Per tensor: the mean block crest factor (max|x| / RMS per block, averaged over blocks; paper Eq. 11 and Table 2) at each
block size, the tensor-wise QSNR of each format, and the QSNR the theory predicts from the tensor's own block
crest factors (analysis.advise: per-block error ratios weighted by block energy); all of it again after a
block-diagonal random Hadamard rotation of size h along K (skipped, NaN, when h does not divide K).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from analysis import theory
from analysis.advise import predicted_from_block_stats
from analysis.crest import block_stats, crest_factor
from analysis.qsnr import qsnr_db
from lowbit_jax import hadamard
from lowbit_jax.formats import PER_CHANNEL, Format, get_format
from lowbit_jax.interceptor import capture
from lowbit_jax.qdot_config import OPERANDS  # the paper's tensors (1)-(6)
from lowbit_jax.quantize import fake_quant

ROTATIONS = ("none", "hadamard")
QUANTILES = ("min", "q1", "median", "q3", "max")
SEQ_LEN, PAIRS_PER_BATCH = 128, 4  # the text batches of the study: 4 pairs of neighbouring 128-token windows


def block_label(block) -> str:
    """'channel' for a per-channel block (-1 or 'channel'), else the size as text."""
    return "channel" if block in (-1, PER_CHANNEL) else str(block)


def operand_matrices(records) -> list[tuple[str, str, np.ndarray]]:
    """(path, operand, (rows, K) matrix) for every role of every captured X, W and dY (lowbit_jax.Captured)."""
    out = []
    for rec in records:
        for role in rec.axes:
            out.append((rec.path, f"{rec.name}_{role}", rec.matrix(role)))
    return sorted(out, key=lambda t: (t[0], OPERANDS.index(t[1])))


@functools.partial(jax.jit, static_argnames=("formats", "blocks", "rotation"))
def _device_stats(m, key, formats: tuple[Format, ...], blocks: tuple, rotation: int):
    """{rotation: (crest means per block, QSNR per format, {block: block stats})} for one matrix."""
    out = {}
    variants = ("none", "hadamard") if m.shape[-1] % rotation == 0 else ("none",)
    for rot in variants:
        x = hadamard.rotate(m, rotation, key) if rot == "hadamard" else m
        crest = jnp.stack([crest_factor(x, b).mean for b in blocks])
        qsnr = jnp.stack([qsnr_db(x, fake_quant(x, f)) for f in formats])
        stats = {block_label(b): block_stats(x, b) for b in sorted({f.block_size for f in formats}, key=str)}
        out[rot] = (crest, qsnr, stats)
    return out


def measure(
    matrix, formats: Sequence[Format | str], blocks: Sequence, rotation: int, key, variant: str = "reference"
) -> dict[str, dict[str, dict[str, float]]]:
    """{rotation: {"crest": {block: mean crest}, "qsnr": {format: dB}, "predicted": {format: dB}}} of one tensor."""
    fmts = tuple(get_format(f) for f in formats)
    blocks = tuple(dict.fromkeys(-1 if b == PER_CHANNEL else b for b in blocks))
    raw = jax.device_get(_device_stats(jnp.asarray(matrix, jnp.float32), key, fmts, blocks, int(rotation)))
    out = {}
    for rot in ROTATIONS:
        if rot not in raw:
            nan = float("nan")
            out[rot] = {
                "crest": {block_label(b): nan for b in blocks},
                "qsnr": dict.fromkeys((f.label for f in fmts), nan),
                "predicted": dict.fromkeys((f.label for f in fmts), nan),
            }
            continue
        crest, qsnr, stats = raw[rot]
        predicted = {
            f.label: predicted_from_block_stats(*stats[block_label(f.block_size)], f, variant)[1] for f in fmts
        }
        out[rot] = {
            "crest": {block_label(b): float(c) for b, c in zip(blocks, crest)},
            "qsnr": {f.label: float(q) for f, q in zip(fmts, qsnr)},
            "predicted": predicted,
        }
    return out


def quantiles(values) -> dict[str, float]:
    """min / Q1 / median / Q3 / max of the finite values (NaN if none), the layout of the paper's Table 2."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return dict.fromkeys(QUANTILES, float("nan"))
    return dict(zip(QUANTILES, (float(q) for q in np.quantile(v, [0.0, 0.25, 0.5, 0.75, 1.0]))))


def kappa_star(int_fmt: Format | str, fp_fmt: Format | str, variant: str = "reference") -> float:
    """The theory's crossover crest factor of a pair (NaN when the curves do not meet in 1..12)."""
    try:
        return theory.crossover(int_fmt, fp_fmt, variant=variant).kappa
    except ValueError:
        return float("nan")


def pair_verdict(int_db, fp_db, pred_int_db, pred_fp_db, crest, kstar: float) -> dict[str, float]:
    """Over tensors of one pair: mean QSNRs, INT/FP win shares (ties count for neither), and how often theory
    (its QSNR prediction, and the rule 'INT wins iff crest < kappa*') picks the measured winner."""
    a, b = np.asarray(int_db, np.float64), np.asarray(fp_db, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    pa, pb, k = (np.asarray(v, np.float64)[ok] for v in (pred_int_db, pred_fp_db, crest))
    n = int(ok.sum())
    if n == 0:
        return {"n": 0}
    int_wins = a > b
    return {
        "n": n,
        "int_mean_db": float(a.mean()),
        "fp_mean_db": float(b.mean()),
        "int_win": float(np.mean(a > b)),
        "fp_win": float(np.mean(b > a)),
        "theory_agree": float(np.mean((pa > pb) == int_wins)),
        "kappa_star": kstar,
        "kappa_rule_agree": float(np.mean((k < kstar) == int_wins)) if math.isfinite(kstar) else float("nan"),
    }


def capture_batches(model, params, batches, rules: str = ".*"):
    """Yield (batch index, captured records of the Dense layers matching `rules`) of one forward + backward pass
    of MiniLM's MNRL loss per (anchor, positive) batch."""
    from lowbit_jax.models import minilm  # only the real-tensor runs need the model code

    with capture(rules) as cap:
        grad = jax.jit(jax.grad(functools.partial(minilm.pair_loss, model)))  # traced inside the capture
        for b, (anchor, positive) in enumerate(batches):
            jax.block_until_ready(grad(params, anchor, positive))
            jax.effects_barrier()
            records, cap.records[:] = list(cap.records), []
            yield b, records

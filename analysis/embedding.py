"""How far a quantized sentence encoder drifts from the float one: cosine, retrieval agreement, in-batch KL.

All functions take unit-norm embeddings (n, D) as numpy arrays: `ref` from the float model, `quant` from the
quantized one, row i of both for the same passage.
  cosine:     cos(ref_i, quant_i) per passage.
  retrieval:  each passage queries the others (itself excluded) by cosine similarity; top-1 agreement is the
              share of queries whose nearest neighbour is the same, top-k overlap the mean |top-k ∩ top-k'| / k.
  KL:         per query, the softmax over scale * cos(query, others) (the MNRL in-batch distribution, scale 20
              as sentence-transformers trains with) for ref (P) and quant (Q); KL(P || Q) in nats, mean over
              queries, within batches of `batch` consecutive passages.
"""

from __future__ import annotations

import numpy as np
from scipy import special


def cosine(ref: np.ndarray, quant: np.ndarray) -> np.ndarray:
    """Per-passage cosine similarity of two sets of embeddings (renormalised in float64)."""
    a, b = np.asarray(ref, np.float64), np.asarray(quant, np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _neighbours(emb: np.ndarray, k: int) -> np.ndarray:
    """(n, k) indices of each row's k most similar other rows, most similar first."""
    e = np.asarray(emb, np.float64)
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def retrieval_agreement(ref: np.ndarray, quant: np.ndarray, k: int = 10) -> dict[str, float]:
    """{'top1': share of identical nearest neighbours, f'top{k}': mean overlap of the k nearest neighbours}
    (k capped at n - 1; the key keeps the requested k)."""
    kk = min(k, len(ref) - 1)
    a, b = _neighbours(ref, kk), _neighbours(quant, kk)
    overlap = [len(set(x) & set(y)) / kk for x, y in zip(a, b)]
    return {"top1": float(np.mean(a[:, 0] == b[:, 0])), f"top{k}": float(np.mean(overlap))}


def _in_batch_logp(emb: np.ndarray, scale: float) -> np.ndarray:
    """(n, n-1) log-softmax over scale * cos(query, other) for every query, itself excluded."""
    e = np.asarray(emb, np.float64)
    n = len(e)
    logits = scale * (e @ e.T)
    logits = logits[~np.eye(n, dtype=bool)].reshape(n, n - 1)
    return logits - special.logsumexp(logits, axis=1, keepdims=True)


def in_batch_kl(ref: np.ndarray, quant: np.ndarray, scale: float = 20.0) -> float:
    """Mean over queries of KL(P_ref || Q_quant) of the in-batch similarity distributions (nats)."""
    lp, lq = _in_batch_logp(ref, scale), _in_batch_logp(quant, scale)
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=1)))


def batch_kls(ref: np.ndarray, quant: np.ndarray, batch: int, scale: float = 20.0) -> np.ndarray:
    """in_batch_kl of every full batch of `batch` consecutive passages."""
    n = len(ref) // batch
    rows = [slice(i * batch, (i + 1) * batch) for i in range(n)]
    return np.asarray([in_batch_kl(ref[r], quant[r], scale) for r in rows])


def drift(ref: np.ndarray, quant: np.ndarray, batch: int, k: int = 10, scale: float = 20.0) -> dict[str, float]:
    """cos_mean, cos_p10 (10th percentile: the worst decile starts there), top1, top{k}, kl (mean over batches)."""
    cos = cosine(ref, quant)
    return {
        "cos_mean": float(cos.mean()),
        "cos_p10": float(np.quantile(cos, 0.1)),
        **retrieval_agreement(ref, quant, k),
        "kl": float(np.mean(batch_kls(ref, quant, batch, scale))),
    }

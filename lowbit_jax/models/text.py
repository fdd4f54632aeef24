"""Real English text for the encoder experiments, and the contrastive loss such encoders are trained with.

Text: CPython's `pydoc_data.topics` (79 help topics, about 128k WordPiece tokens), cut into consecutive windows
of `length` tokens ([CLS] + length-2 tokens + [SEP], no padding, the ragged tail of each topic dropped).
Split: topic-disjoint and deterministic: topics ordered by crc32 of their name go to held-out until it holds at
least `held_out` of the windows. Pairs: disjoint neighbouring windows (0, 1), (2, 3), ... of one topic, an
(anchor, positive) pair each. Loss: in-batch multiple-negatives ranking (MNRL, sentence-transformers'
MultipleNegativesRankingLoss): cross-entropy of scale * cos(anchor_i, positive_j) against j = i.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from lowbit_jax.models import HIGHEST


@dataclass(frozen=True, eq=False)
class Windows:
    """Token windows (n, length) int32 without padding, the topic index of each, and the topic names."""

    ids: np.ndarray
    topic: np.ndarray
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def mask(self) -> np.ndarray:
        return np.ones_like(self.ids)


def topics() -> dict[str, str]:
    """{topic name: help text} from CPython's pydoc_data, sorted by name."""
    from pydoc_data.topics import topics as pydoc_topics

    return dict(sorted(pydoc_topics.items()))


def _raw_tokenizer(tokenizer):
    """A copy of `tokenizer` with no truncation, no padding."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.no_truncation()
    tok.no_padding()
    return tok


def windows(tokenizer, texts: dict[str, str], length: int = 128) -> Windows:
    """Consecutive [CLS] + (length - 2) tokens + [SEP] windows of every text (ragged tails dropped)."""
    if length < 3:
        raise ValueError(f"window length must be at least 3, got {length}")
    tok = _raw_tokenizer(tokenizer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    names = tuple(texts)
    rows, topic = [], []
    for t, enc in enumerate(tok.encode_batch([texts[n] for n in names], add_special_tokens=False)):
        body = np.asarray(enc.ids, np.int32)
        for start in range(0, len(body) - (length - 2) + 1, length - 2):
            rows.append(np.concatenate([[cls_id], body[start : start + length - 2], [sep_id]]))
            topic.append(t)
    ids = np.stack(rows).astype(np.int32) if rows else np.zeros((0, length), np.int32)
    return Windows(ids, np.asarray(topic, np.int32), names)


def split_topics(sizes: dict[str, int], held_out: float = 0.2) -> tuple[list[str], list[str]]:
    """(train, held-out) topic names: topics in crc32 order go to held-out until it has >= held_out of the size."""
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"held_out must be in (0, 1), got {held_out}")
    total, taken, held = sum(sizes.values()), 0, []
    for name in sorted(sizes, key=lambda n: (zlib.crc32(n.encode()), n)):
        if taken >= held_out * total:
            break
        held.append(name)
        taken += sizes[name]
    return [n for n in sizes if n not in held], sorted(held)


def load_split(tokenizer, length: int = 128, held_out: float = 0.2) -> tuple[Windows, Windows]:
    """(train, held-out) windows of pydoc_data topics, topic-disjoint and deterministic."""
    texts = topics()
    every = windows(tokenizer, texts, length)
    sizes = {n: int(np.sum(every.topic == i)) for i, n in enumerate(every.names)}
    train, held = split_topics(sizes, held_out)
    return subset(every, train), subset(every, held)


def subset(w: Windows, names) -> Windows:
    """The windows of the named topics (topic indices renumbered)."""
    keep = [w.names.index(n) for n in names]
    rows = np.isin(w.topic, keep)
    remap = {old: new for new, old in enumerate(keep)}
    return Windows(w.ids[rows], np.asarray([remap[t] for t in w.topic[rows]], np.int32), tuple(names))


def neighbour_pairs(w: Windows) -> np.ndarray:
    """(m, 2) window indices: disjoint neighbours (0, 1), (2, 3), ... inside each topic."""
    pairs = []
    for t in np.unique(w.topic):
        idx = np.flatnonzero(w.topic == t)
        pairs += [(idx[i], idx[i + 1]) for i in range(0, len(idx) - 1, 2)]
    return np.asarray(pairs, np.int64).reshape(-1, 2)


def pair_batches(w: Windows, batch_size: int, n_batches: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Up to `n_batches` (anchor ids, positive ids) batches of `batch_size` shuffled neighbour pairs each."""
    pairs = neighbour_pairs(w)
    pairs = pairs[np.random.default_rng(seed).permutation(len(pairs))]
    n = min(n_batches, len(pairs) // batch_size)
    return [
        (w.ids[pairs[b * batch_size : (b + 1) * batch_size, 0]], w.ids[pairs[b * batch_size : (b + 1) * batch_size, 1]])
        for b in range(n)
    ]


def mnrl_loss(anchor_BxD: jax.Array, positive_BxD: jax.Array, scale: float = 20.0) -> jax.Array:
    """In-batch multiple-negatives ranking loss on unit embeddings: mean CE of scale * A P^T against the diagonal."""
    logits_BxB = np.float32(scale) * jnp.matmul(anchor_BxD, positive_BxD.T, precision=HIGHEST)
    return jnp.mean(jax.nn.logsumexp(logits_BxB, axis=1) - jnp.diagonal(logits_BxB))

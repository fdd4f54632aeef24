"""Real text for the language-model experiments: CPython's pydoc_data.topics as UTF-8 bytes (vocabulary 256).

The topics are joined in sorted-key order with blank lines; the last `val_fraction` of the bytes is the validation
split (deterministic, no shuffling across the boundary). Training windows are drawn at offsets that depend only on
(data_seed, step), so every run with the same data_seed sees the same data in the same order. The text depends
on the Python version; `TextData.sha256` identifies it in the results.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass

import numpy as np

VOCAB_SIZE = 256


@dataclass(frozen=True, eq=False)
class TextData:
    """Token streams (int32 byte values) of the two splits and where they came from."""

    train: np.ndarray
    val: np.ndarray
    source: str
    sha256: str

    def describe(self) -> dict:
        return {
            "source": self.source,
            "sha256": self.sha256,
            "train_tokens": int(self.train.size),
            "val_tokens": int(self.val.size),
        }


def topics_text() -> str:
    """All pydoc topics, sorted by name, separated by blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def load_text(val_fraction: float = 0.1) -> TextData:
    """pydoc_data.topics as bytes, split into train (first part) and validation (last `val_fraction`)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    raw = topics_text().encode("utf-8")
    tokens = np.frombuffer(raw, dtype=np.uint8).astype(np.int32)
    cut = int(round(tokens.size * (1.0 - val_fraction)))
    source = f"pydoc_data.topics (Python {sys.version.split()[0]}), UTF-8 bytes"
    return TextData(tokens[:cut], tokens[cut:], source, hashlib.sha256(raw).hexdigest()[:16])


def train_batch(data: TextData, step: int, batch_size: int, seq_len: int, data_seed: int = 0) -> np.ndarray:
    """(batch_size, seq_len + 1) windows of the training split; offsets depend only on (data_seed, step)."""
    rng = np.random.default_rng([data_seed, step])
    starts = rng.integers(0, data.train.size - seq_len - 1, size=batch_size)
    return np.stack([data.train[s : s + seq_len + 1] for s in starts])


def val_windows(data: TextData, seq_len: int, max_windows: int = 0) -> np.ndarray:
    """Non-overlapping (n, seq_len + 1) windows of the validation split (all of them if max_windows is 0)."""
    n = (data.val.size - 1) // seq_len
    n = min(n, max_windows) if max_windows else n
    if n < 1:
        raise ValueError(f"the validation split ({data.val.size} tokens) is shorter than one window of {seq_len}")
    return np.stack([data.val[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)])

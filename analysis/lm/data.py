"""Real text for the language-model experiments: CPython's pydoc_data.topics or any UTF-8 text file, as UTF-8 bytes
(vocabulary 256) or as the ids of a Hugging Face tokenizer (tokenizer.json, read with the `tokenizers` package).

The pydoc topics are joined in sorted-key order with blank lines. The last `val_fraction` of the tokens is the
validation split (deterministic, no shuffling across the boundary). Training windows are drawn at offsets that depend
only on (data_seed, step), so every run with the same data_seed sees the same data in the same order. The pydoc text
depends on the Python version; `TextData.sha256` (of the text's bytes) identifies any text in the results, and
`tokenizer_sha256` the tokenizer.json.

A tokenizer encodes the text in pieces of about `CHUNK_CHARS` characters that end at a line break, without special
tokens (no BOS/EOS is added), several pieces at a time (`encode_batch`, in parallel). The ids differ from one
`encode` of the whole text at most at the seams between pieces; the pieces depend only on the text, so the ids are
the same on every run.
"""

from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

VOCAB_SIZE = 256
CHUNK_CHARS = 1 << 20  # characters per tokenizer piece (cut at the next line break)
CHUNKS_PER_BATCH = 64  # pieces per encode_batch call (bounds the memory of the Encoding objects)


@dataclass(frozen=True, eq=False)
class TextData:
    """Token streams (int32 ids) of the two splits and where they came from."""

    train: np.ndarray
    val: np.ndarray
    source: str
    sha256: str
    vocab_size: int = VOCAB_SIZE
    path: str | None = None  # the text file (None: pydoc_data.topics)
    n_bytes: int = 0  # UTF-8 bytes of the text
    tokenizer: str | None = None  # the tokenizer.json used (None: UTF-8 bytes)
    tokenizer_sha256: str | None = None

    def describe(self) -> dict:
        return {
            "source": self.source,
            "sha256": self.sha256,
            "path": self.path,
            "bytes": self.n_bytes,
            "tokens": int(self.train.size + self.val.size),
            "train_tokens": int(self.train.size),
            "val_tokens": int(self.val.size),
            "tokenizer": self.tokenizer if self.tokenizer is not None else "utf-8 bytes",
            "tokenizer_sha256": self.tokenizer_sha256,
            "vocab_size": self.vocab_size,
        }


def topics_text() -> str:
    """All pydoc topics, sorted by name, separated by blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


# ---------------------------------------------------------------------------------------------- checks
def check_text_file(path: str | Path, flag: str = "--text") -> Path:
    """The text file as a Path; FileNotFoundError / ValueError naming `flag` if it is missing, not a file or
    empty."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{flag} {path}: no such file")
    if not p.is_file():
        raise ValueError(f"{flag} {path}: not a file (give a UTF-8 text file)")
    if p.stat().st_size == 0:
        raise ValueError(f"{flag} {path}: the file is empty")
    return p


def tokenizer_file(path: str | Path, flag: str = "--tokenizer") -> Path:
    """The tokenizer.json of `path` (the json file itself or a folder holding tokenizer.json); FileNotFoundError
    naming `flag` otherwise."""
    p = Path(path)
    if p.is_dir():
        if not (p / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{flag} {path}: no tokenizer.json in this folder (a Hugging Face tokenizer)")
        return p / "tokenizer.json"
    if not p.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file or folder (a tokenizer.json or a folder holding one)")
    return p


def load_tokenizer(path: str | Path, flag: str = "--tokenizer") -> tuple[Any, Path]:
    """(tokenizers.Tokenizer, its tokenizer.json path); ValueError naming `flag` if the file does not parse."""
    from tokenizers import Tokenizer

    file = tokenizer_file(path, flag)
    try:
        return Tokenizer.from_file(str(file)), file
    except Exception as err:  # the Rust side raises a bare Exception for malformed JSON
        raise ValueError(f"{flag} {path}: cannot read {file.name} as a Hugging Face tokenizer ({err})") from None


def min_tokens(seq_len: int, val_fraction: float = 0.1) -> int:
    """The fewest tokens a text needs for `split` to leave a training split that holds one window of seq_len + 1
    tokens with a choice of offsets and a validation split that holds one window."""
    n = max(seq_len + 3, math.floor(seq_len / val_fraction))  # below the minimum: val <= n * f + 1/2
    while not _long_enough(n, seq_len, val_fraction):
        n += 1
    return n


def _long_enough(n: int, seq_len: int, val_fraction: float) -> bool:
    cut = _cut(n, val_fraction)
    return cut >= seq_len + 2 and n - cut >= seq_len + 1


def require_windows(data: TextData, seq_len: int, val_fraction: float = 0.1) -> None:
    """ValueError unless both splits of `data` are long enough for windows of `seq_len` tokens."""
    if data.train.size >= seq_len + 2 and data.val.size >= seq_len + 1:
        return
    n = data.train.size + data.val.size
    what = "tokens" if data.tokenizer is not None else "bytes"
    need = min_tokens(seq_len, val_fraction)
    raise ValueError(
        f"{data.source}: {n} {what} is too short for --seq-len {seq_len}: the last {val_fraction:.0%} (validation) "
        f"must hold one window of {seq_len + 1} tokens, so the text needs at least {need} {what}; "
        "use a longer text or a smaller --seq-len"
    )


# ---------------------------------------------------------------------------------------------- loading
def _cut(n: int, val_fraction: float) -> int:
    return int(round(n * (1.0 - val_fraction)))


def _chunks(text: str, size: int | None = None) -> list[str]:
    """`text` in pieces of at least `size` (default CHUNK_CHARS) characters, each ending just after a line break (the
    last one at the end of the text)."""
    size = CHUNK_CHARS if size is None else size
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        out.append(text[start:end])
        start = end
    return out


def encode(text: str, tokenizer: Any) -> np.ndarray:
    """int32 ids of `text` under a tokenizers.Tokenizer, without special tokens (pieces of CHUNK_CHARS, module
    docstring)."""
    pieces, ids = _chunks(text), []
    for i in range(0, len(pieces), CHUNKS_PER_BATCH):
        for enc in tokenizer.encode_batch(pieces[i : i + CHUNKS_PER_BATCH], add_special_tokens=False):
            ids.append(np.asarray(enc.ids, dtype=np.int32))
    return np.concatenate(ids) if ids else np.zeros(0, np.int32)


def tokenize(
    raw: bytes, source: str, *, tokenizer: str | Path | None = None, path: str | None = None, val_fraction: float = 0.1
) -> TextData:
    """UTF-8 `raw` as TextData: byte values (vocabulary 256) or the ids of the tokenizer.json at `tokenizer`, split
    into train (first part) and validation (last `val_fraction`). ValueError if `raw` is not UTF-8."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{source}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    tok_path = tok_sha = None
    if tokenizer is None:
        tokens, vocab = np.frombuffer(raw, dtype=np.uint8).astype(np.int32), VOCAB_SIZE
        source = f"{source}, UTF-8 bytes"
    else:
        tok, file = load_tokenizer(tokenizer)
        tokens, vocab = encode(text, tok), int(tok.get_vocab_size())
        tok_path, tok_sha = str(file), hashlib.sha256(file.read_bytes()).hexdigest()[:16]
        if tokens.size and int(tokens.max()) >= vocab:
            raise ValueError(f"--tokenizer {tokenizer}: id {int(tokens.max())} is not below get_vocab_size() {vocab}")
        source = f"{source}, tokenizer {file}"
    cut = _cut(tokens.size, val_fraction)
    sha = hashlib.sha256(raw).hexdigest()[:16]
    return TextData(tokens[:cut], tokens[cut:], source, sha, vocab, path, len(raw), tok_path, tok_sha)


def load_text(val_fraction: float = 0.1, tokenizer: str | Path | None = None) -> TextData:
    """pydoc_data.topics as bytes (or tokenizer ids), split into train (first part) and validation (last
    `val_fraction`)."""
    raw = topics_text().encode("utf-8")
    source = f"pydoc_data.topics (Python {sys.version.split()[0]})"
    return tokenize(raw, source, tokenizer=tokenizer, val_fraction=val_fraction)


def load_file(path: str | Path, tokenizer: str | Path | None = None, val_fraction: float = 0.1) -> TextData:
    """A UTF-8 text file as bytes (or tokenizer ids), split like load_text. Errors (missing or empty file, not
    UTF-8, no tokenizer.json) name the --text / --tokenizer flags."""
    p = check_text_file(path)
    return tokenize(
        p.read_bytes(), f"--text {path}", tokenizer=tokenizer, path=str(p.resolve()), val_fraction=val_fraction
    )


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

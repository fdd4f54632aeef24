"""experiments.train on user text: a UTF-8 file byte-level or through a Hugging Face tokenizer.json (vocabulary from
the tokenizer), the one-line errors for bad --text / --tokenizer, the data split and order, and the gpu preset's
size (from shapes, never trained)."""

import dataclasses
import hashlib
import json
import re

import jax
import numpy as np
import pytest

from analysis.lm import data as lm_data
from analysis.lm import train as lm_train
from experiments import common, train

tokenizers = pytest.importorskip("tokenizers")

WORDS = "the a format block scale rounds each element to nearest even value and INT FP grid error loss".split()
FAST = [
    "--preset",
    "tiny",
    "--precision",
    "none",
    "--steps",
    "2",
    "--warmup-steps",
    "1",
    "--eval-every",
    "2",
    "--eval-windows",
    "2",
]


def make_text(n_words: int = 1500, seed: int = 0) -> str:
    """Deterministic prose-like text: lines of 12 random words ending with a full stop."""
    rng = np.random.default_rng(seed)
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), size=n_words)]
    return "\n".join(" ".join(words[i : i + 12]) + "." for i in range(0, n_words, 12)) + "\n"


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture
def tokenizer_dir(tmp_path, text_file):
    """A WordLevel tokenizer.json trained on the text (whitespace pre-tokenizer, [UNK])."""
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    lines = text_file.read_text().splitlines()
    tok.train_from_iterator(lines, tokenizers.trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    folder = tmp_path / "tok"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    return folder


def train_main(argv: list[str]) -> dict:
    """train.main in this process: optax's AdamW bias correction (a Python float ** int32 count) needs standard
    dtype promotion, which the suite's strict setting (tests/conftest.py) refuses."""
    with jax.numpy_dtype_promotion("standard"):
        return train.main(argv)


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    usage, line = err.strip().splitlines()
    assert usage.startswith("usage: python -m experiments.train ")
    assert line.startswith("python -m experiments.train: error: ")
    return line


# ------------------------------------------------------------------------------------------------ data
def test_byte_level_file_split_and_order(text_file):
    raw = text_file.read_bytes()
    data = lm_data.load_file(text_file)
    np.testing.assert_array_equal(np.concatenate([data.train, data.val]), np.frombuffer(raw, np.uint8))
    assert data.train.size == round(0.9 * len(raw)) and data.vocab_size == 256
    d = data.describe()
    assert d["path"] == str(text_file.resolve()) and d["bytes"] == d["tokens"] == len(raw)
    assert d["tokenizer"] == "utf-8 bytes" and d["sha256"] == hashlib.sha256(raw).hexdigest()[:16]
    again = lm_data.load_file(str(text_file))
    np.testing.assert_array_equal(lm_data.train_batch(data, 5, 4, 32), lm_data.train_batch(again, 5, 4, 32))


def test_tokenizer_ids_vocabulary_and_chunking(text_file, tokenizer_dir, monkeypatch):
    tok = tokenizers.Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    text = text_file.read_text()
    expected = tok.encode(text, add_special_tokens=False).ids
    data = lm_data.load_file(text_file, tokenizer_dir)
    np.testing.assert_array_equal(np.concatenate([data.train, data.val]), expected)
    assert data.vocab_size == tok.get_vocab_size() == len(WORDS) + 2  # the words, "." and [UNK]
    assert data.describe()["tokenizer"] == str(tokenizer_dir / "tokenizer.json")
    # the json file itself works too; small pieces (a whitespace pre-tokenizer cuts at line breaks anyway) give
    # the ids of one encode
    monkeypatch.setattr(lm_data, "CHUNK_CHARS", 50)
    monkeypatch.setattr(lm_data, "CHUNKS_PER_BATCH", 3)
    assert len(lm_data._chunks(text)) > 10 and "".join(lm_data._chunks(text)) == text
    pieces = lm_data.load_file(text_file, tokenizer_dir / "tokenizer.json")
    np.testing.assert_array_equal(np.concatenate([pieces.train, pieces.val]), expected)
    assert pieces.tokenizer_sha256 == data.tokenizer_sha256


def test_min_tokens_is_the_shortest_text_that_splits():
    for seq in (1, 32, 128, 1024):
        n = lm_data.min_tokens(seq)
        for total, ok in ((n, True), (n - 1, False)):
            tokens = np.zeros(total, np.int32)
            cut = int(round(total * 0.9))
            data = lm_data.TextData(tokens[:cut], tokens[cut:], "t", "")
            if ok:
                lm_data.require_windows(data, seq)
                lm_data.train_batch(data, 0, 2, seq), lm_data.val_windows(data, seq)
            else:
                with pytest.raises(ValueError, match=f"at least {n} bytes"):
                    lm_data.require_windows(data, seq)


# ------------------------------------------------------------------------------------------------ training
def test_trains_on_a_text_file_byte_level(tmp_path, text_file):
    result = train_main([*FAST, "--text", str(text_file), "--out", str(tmp_path / "out")])
    saved = json.loads((tmp_path / "out" / "train.json").read_text())
    assert saved["data"]["path"] == str(text_file.resolve()) and saved["data"]["bytes"] == text_file.stat().st_size
    assert saved["data"]["tokenizer"] == "utf-8 bytes" and saved["config"]["vocab_size"] == 256
    assert saved["config"]["text"] == str(text_file) and np.isfinite(saved["runs"]["none"]["final_val_loss"])
    assert result["n_params"] == lm_train.n_params(dataclasses.replace(train.PRESETS["tiny"], vocab_size=256))
    model = json.loads((tmp_path / "out" / "none" / "model.json").read_text())
    assert model["model"]["vocab_size"] == 256 and model["meta"]["text"]["path"] == str(text_file.resolve())


def test_trains_with_a_tokenizer_json(tmp_path, text_file, tokenizer_dir):
    vocab = tokenizers.Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    argv = [*FAST, "--text", str(text_file), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "out")]
    result = train_main(argv)
    d = result["data"]
    assert d["vocab_size"] == vocab and result["config"].vocab_size == vocab
    assert d["tokenizer"] == str(tokenizer_dir / "tokenizer.json") and d["tokens"] < d["bytes"] / 3
    model = json.loads((tmp_path / "out" / "none" / "model.json").read_text())
    assert model["model"]["vocab_size"] == vocab  # the embedding and head are sized by the tokenizer
    assert result["n_params"] == lm_train.n_params(result["config"]) < lm_train.n_params(train.PRESETS["tiny"])
    assert result["runs"]["none"]["final_val_loss"] < np.log(vocab) + 0.5  # a cross-entropy over `vocab` ids


# ------------------------------------------------------------------------------------------------ errors
def test_text_and_tokenizer_errors_are_one_line(tmp_path, text_file, tokenizer_dir, capsys):
    missing = tmp_path / "no_such.txt"
    assert _error(capsys, ["--text", str(missing)]).endswith(f"--text {missing}: no such file")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert _error(capsys, ["--text", str(empty)]).endswith(f"--text {empty}: the file is empty")
    short = tmp_path / "short.txt"
    short.write_text("a few bytes of text\n" * 10)  # 200 bytes; --seq-len 128 needs 1285
    line = _error(capsys, ["--text", str(short)])
    assert f"--text {short}, UTF-8 bytes: 200 bytes is too short for --seq-len 128" in line
    assert "at least 1285 bytes" in line
    assert "is too short for --seq-len 64" in _error(capsys, ["--text", str(short), "--seq-len", "64"])
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\xe9 ".encode("latin-1") * 400)
    assert "not UTF-8 text (invalid continuation byte at byte 3)" in _error(capsys, ["--text", str(binary)])
    line = _error(capsys, ["--text", str(text_file), "--tokenizer", str(tmp_path)])
    assert line.endswith(f"--tokenizer {tmp_path}: no tokenizer.json in this folder (a Hugging Face tokenizer)")
    line = _error(capsys, ["--tokenizer", str(tmp_path / "nothing")])
    assert f"--tokenizer {tmp_path / 'nothing'}: no such file or folder" in line
    bad = tmp_path / "bad" / "tokenizer.json"
    bad.parent.mkdir()
    bad.write_text("{}")
    assert "cannot read tokenizer.json as a Hugging Face tokenizer" in _error(capsys, ["--tokenizer", str(bad)])
    vocab = tokenizers.Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    argv = [*FAST, "--text", str(text_file), "--tokenizer", str(tokenizer_dir), "--vocab-size", "5"]
    assert f"--vocab-size 5 is smaller than the data's vocabulary {vocab}" in _error(capsys, argv)


def test_text_flags_have_help_lines():
    helps = common.field_help(train.Config)
    assert "UTF-8 text file" in helps["text"] and "tokenizer.json" in helps["tokenizer"]
    assert "get_vocab_size()" in helps["vocab_size"]


# ------------------------------------------------------------------------------------------------ gpu preset
def test_gpu_preset_size_and_the_documented_count():
    cfg = train.PRESETS["gpu"]
    n = lm_train.n_params(cfg)  # jax.eval_shape: nothing is allocated
    assert 50e6 <= n <= 125e6
    assert 50e6 <= lm_train.n_params(dataclasses.replace(cfg, vocab_size=32_000)) <= 125e6
    doc = (common.repo_root() / "docs" / "training.md").read_text()
    assert f"{n:,}" in doc, "docs/training.md must state the gpu preset's parameter count"
    flops = lm_train.train_flops_per_token(cfg)
    assert f"{flops / 1e6:.1f}M FLOPs per token" in doc
    assert flops == pytest.approx(6 * lm_train.n_params(cfg, ("embed",)) + 12 * 12 * 1024 * 768, rel=1e-3)
    (row,) = re.findall(r"^\| `train` \|.*$", (common.repo_root() / "README.md").read_text(), re.M)
    assert "--text FILE" in row and "--tokenizer PATH" in row and "--preset gpu" in row

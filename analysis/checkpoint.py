"""The paper's studies on a loaded Hugging Face decoder (lowbit_jax.models.load_pretrained): text windows from the
checkpoint's own tokenizer, the six GEMM operands of every linear layer streamed layer by layer (paper §5.1), and
direct-cast inference against the unquantized model (paper §5.2: top-25 KL x 10^6 and perplexity, Table 3).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from analysis import divergence
from analysis.lm.data import topics_text  # real English text that ships with CPython
from lowbit_jax.formats import Format
from lowbit_jax.interceptor import capture, quantized
from lowbit_jax.models.hf import LM_HEAD_RULE, PROJECTIONS, Decoder, DecoderConfig, PretrainedLM, head_logits
from lowbit_jax.qdot_config import QDotConfig


def text_windows(lm: PretrainedLM, text_file: str | None, seq_len: int, n: int) -> np.ndarray:
    """(n, seq_len + 1) int32 windows of consecutive tokens (the text of `text_file`, else topics_text()),
    tokenized with the checkpoint's tokenizer and cut from the start; ValueError if the text is too short."""
    body = Path(text_file).read_text(encoding="utf-8") if text_file else topics_text()
    ids = lm.encode(body)
    need = n * (seq_len + 1)
    if ids.size < need:
        source = text_file or "the default text"
        raise ValueError(f"{source} gives {ids.size} tokens; {n} windows of {seq_len} + 1 tokens need {need}")
    return ids[:need].reshape(n, seq_len + 1)


def layer_paths(lm: PretrainedLM, layer: int) -> list[str]:
    """Module paths of the linear layers of decoder layer `layer`."""
    return [f"layers_{layer}/{p}" for p in PROJECTIONS]


def next_token_loss(lm: PretrainedLM, params: dict, windows: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy (nats) of windows (N, T + 1) under `params`."""
    logits = lm.model.apply({"params": params}, windows[:, :-1])
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, windows[:, 1:]))


CHUNK = 512  # queries per attention block and tokens per loss block of the tensor studies' passes


def chunked_loss(cfg: DecoderConfig, params: dict, hidden_BxTxD: jax.Array, targets_BxT: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy from the final hidden states, the head applied CHUNK tokens at a time (each
    block rematerialised), so the float32 logits of one block exist at a time; the same per-token values as
    next_token_loss."""

    def block_sum(h, y):
        logits = head_logits(cfg, params, h)
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    block_sum = jax.checkpoint(block_sum)
    t = hidden_BxTxD.shape[1]
    total = sum(block_sum(hidden_BxTxD[:, s : s + CHUNK], targets_BxT[:, s : s + CHUNK]) for s in range(0, t, CHUNK))
    return total / jnp.float32(targets_BxT.size)


def _layer_loss(lm: PretrainedLM, layer: int, layer_params: dict, params: dict, windows: jax.Array) -> jax.Array:
    """The next-token loss as a function of one decoder layer's parameters; every other layer is rematerialised."""
    model = Decoder(lm.config, remat=tuple(j for j in range(lm.config.n_layers) if j != layer), query_chunk=CHUNK)
    full = {**params, f"layers_{layer}": layer_params}
    hidden = model.apply({"params": full}, windows[:, :-1], hidden=True)
    return chunked_loss(lm.config, full, hidden, windows[:, 1:])


def capture_layers(lm: PretrainedLM, windows: np.ndarray, layers: Sequence[int]) -> Iterator[tuple[int, list]]:
    """Yield (layer, captured X / W / dY records of its linear layers) from a forward and backward pass of the
    next-token loss on `windows`, one decoder layer at a time (the pass is repeated per layer). Memory stays that of
    one layer: the records hold only its operands, the gradient is taken with respect to its parameters alone (the
    backward pass stops there), the other layers keep only their inputs for the backward pass (remat), and the
    attention scores and logits exist CHUNK queries / tokens at a time."""
    batch = jnp.asarray(windows, jnp.int32)
    for i in layers:
        with capture("|".join(layer_paths(lm, i))) as cap:
            grad = jax.jit(jax.grad(functools.partial(_layer_loss, lm, i)))  # traced inside the capture
            jax.block_until_ready(grad(lm.params[f"layers_{i}"], lm.params, batch))
            jax.effects_barrier()
            records = list(cap.records)
        yield i, records


def lm_rules(qconfig: QDotConfig | None) -> list:
    """Interceptor rules: the head (tied or not) unquantized, every other linear layer with `qconfig`."""
    return [] if qconfig is None else [LM_HEAD_RULE, (".*", qconfig)]


_window_metrics = jax.jit(divergence.window_metrics, static_argnames="k")


def direct_cast(
    lm: PretrainedLM,
    windows: np.ndarray,
    runs: Iterable[tuple[str, Format, int | None]],
    chunk: int,
    top_k: int = divergence.PAPER_TOP_K,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> tuple[list[dict], float, dict]:
    """(rows, float perplexity, per-window top-k KL by (label, rotation)) of direct-cast inference: every run is
    (label, format, rotation size or None), all linear layers but the head quantize X and W in that format.

    Chunks of `chunk` windows are the outer loop: one chunk's reference logits are computed, every run is compared
    with them, and they are dropped, so memory holds two chunks' logits whatever the number of windows. Each run
    keeps one function traced inside its own `quantized` context (and only called inside it). Attention runs CHUNK
    queries at a time."""
    runs = list(runs)
    configs = [None] + [QDotConfig.direct_cast(fmt, rotation=rotation) for _, fmt, rotation in runs]
    model = Decoder(lm.config, query_chunk=CHUNK)  # the same logits, T x T scores never whole
    fns = [jax.jit(lambda p, x: model.apply({"params": p}, x)) for _ in configs]
    parts: list[list] = [[] for _ in configs]
    starts = range(0, len(windows), chunk)
    for s, j in progress([(s, j) for s in starts for j in range(len(configs))]):
        if j == 0:  # each chunk's first run: its windows go to the device once, for every run of the chunk
            c = jnp.asarray(windows[s : s + chunk], jnp.int32)
            ref = q = fns[0](lm.params, c[:, :-1])
        else:
            with quantized(lm_rules(configs[j])):
                q = fns[j](lm.params, c[:, :-1])
        parts[j].append(jax.device_get(_window_metrics(ref, q, c[:, 1:], top_k)))
    metrics = [
        {name: np.concatenate([p[k] for p in chunks]) for k, name in enumerate(divergence.WINDOW)} for chunks in parts
    ]
    float_ppl = math.exp(float(metrics[0]["nll"].mean()))
    rows, per_window = [], {}
    for (label, _, rotation), m in zip(runs, metrics[1:], strict=True):
        per_window[(label, rotation)] = m["kl"]
        rows.append(
            {
                "format": label,
                "rotation": rotation,
                "kl_paper": 1e6 * float(m["kl"].mean()) / top_k,
                "kl_per_token": 1e6 * float(m["kl"].mean()),
                "kl_full": 1e6 * float(m["kl_full"].mean()),
                "ppl": math.exp(float(m["nll"].mean())),
            }
        )
    return rows, float_ppl, per_window


def make_tiny_checkpoint(folder: str | Path, family: str = "llama", vocab_size: int = 320, seed: int = 0) -> Path:
    """Write a tiny random-initialised `family` checkpoint (transformers' own save_pretrained; needs torch and
    transformers, as the test extras install) and a byte-level BPE tokenizer.json trained on topics_text() with at
    most `vocab_size` tokens into `folder`: a stand-in for a real checkpoint, for trying the studies offline."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    folder = Path(folder)
    fields = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    cfg = transformers.AutoConfig.for_model(family, vocab_size=vocab_size, num_key_value_heads=2, **fields)
    torch.manual_seed(seed)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([topics_text()[:200_000]], trainer)  # 200 kB: enough merges, trains in 1 s
    if tokenizer.get_vocab_size() > vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.get_vocab_size()} tokens for a vocabulary of {vocab_size}")
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder

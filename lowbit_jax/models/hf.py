"""Local Hugging Face decoder checkpoints (Llama, Mistral, Qwen2, Qwen3) as a Flax linen model.

`load_pretrained(folder)` reads `config.json`, `model.safetensors` (or the shards named by
`model.safetensors.index.json`) and `tokenizer.json`; nothing is downloaded. Tensors are memory-mapped and keep
their stored dtype unless `dtype=` asks for another. The module mirrors the `transformers` implementation of these
families (RMSNorm in float32 with the weight applied in the model dtype, rotate-half RoPE with the default, linear
and llama3 frequency rules, grouped-query attention with a float32 softmax, SwiGLU MLP, Qwen2's q/k/v biases,
Qwen3's per-head q/k RMSNorms, sliding windows where the config sets them, tied or untied heads). Any config value
that would change the arithmetic and is not implemented raises a ValueError naming the field.

Module paths for interceptor rules: 'layers_<i>/self_attn/{q,k,v,o}_proj', 'layers_<i>/mlp/{gate,up,down}_proj'
and 'lm_head' (a tied head is 'embed_tokens', through Embed.attend). Attention scores and values are plain einsums,
not intercepted, as in the tiny Llama. Shapes: B batch, T tokens, D hidden, H heads, K kv heads, E head dim.
"""

from __future__ import annotations

import functools
import json
import math
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from lowbit_jax import interceptor

HIGHEST = jax.lax.Precision.HIGHEST  # float32 GEMMs at full precision on a GPU too (its default is TF32)

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
PROJECTIONS = tuple(f"self_attn/{p}_proj" for p in "qkvo") + tuple(f"mlp/{p}_proj" for p in ("gate", "up", "down"))
LM_HEAD_RULE = ("lm_head|embed_tokens", None)  # the output head (untied or tied) stays unquantized
ROPE_TYPES = ("default", "linear", "llama3")
# Config fields that change the arithmetic of these families when set to anything but the value given here.
_MUST_BE = {
    "hidden_act": "silu",
    "partial_rotary_factor": 1.0,
    "attn_logit_softcapping": None,
    "final_logit_softcapping": None,
    "quantization_config": None,
}
_SAFETENSORS_DTYPES = {
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F64": np.dtype(np.float64),
}


@dataclass(frozen=True)
class DecoderConfig:
    """The shape and arithmetic of one checkpoint; `dtype` is the compute dtype (the stored one by default)."""

    family: str
    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_positions: int = 8192
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    sliding_windows: tuple[int | None, ...] = ()
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"num_attention_heads {self.n_heads} must be a multiple of num_key_value_heads")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"rope type {self.rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
        if self.sliding_windows and len(self.sliding_windows) != self.n_layers:
            raise ValueError(f"{len(self.sliding_windows)} sliding windows for {self.n_layers} layers")

    def window(self, layer: int) -> int | None:
        """The sliding attention window of `layer` (None: full causal attention)."""
        return self.sliding_windows[layer] if self.sliding_windows else None


# --------------------------------------------------------------------------------------------- config.json
def _rope_fields(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """RoPE theta and frequency rule from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling` (4)."""
    params = dict(cfg.get("rope_parameters") or {})
    scaling = dict(cfg.get("rope_scaling") or {})
    field = "rope_parameters" if params else "rope_scaling"
    merged = {**scaling, **params}
    theta = merged.get("rope_theta", cfg.get("rope_theta"))
    if theta is None:
        raise ValueError("config.json: rope_theta is missing (neither rope_theta nor rope_parameters.rope_theta)")
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"config.json: {field}.rope_type {rope_type!r} is not supported ({', '.join(ROPE_TYPES)})")
    out: dict[str, Any] = {"rope_theta": float(theta), "rope_type": rope_type}
    if rope_type in ("linear", "llama3"):
        out["rope_factor"] = float(merged["factor"])
    if rope_type == "llama3":
        out["rope_low_freq_factor"] = float(merged["low_freq_factor"])
        out["rope_high_freq_factor"] = float(merged["high_freq_factor"])
        out["rope_original_max_positions"] = int(merged["original_max_position_embeddings"])
    if merged.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(
            f"config.json: {field}.partial_rotary_factor {merged['partial_rotary_factor']} is not supported"
        )
    return out


def _sliding_windows(cfg: Mapping[str, Any], family: str, n_layers: int) -> tuple[int | None, ...]:
    """Per-layer windows from `layer_types` (transformers 5) or each family's older fields."""
    window = cfg.get("sliding_window")
    if cfg.get("layer_types") is not None:
        types = list(cfg["layer_types"])
        unknown = sorted(set(types) - {"full_attention", "sliding_attention"})
        if unknown or len(types) != n_layers:
            raise ValueError(f"config.json: layer_types {types} (need {n_layers} of full_attention/sliding_attention)")
        if "sliding_attention" in types and window is None:
            raise ValueError("config.json: layer_types has sliding_attention layers but sliding_window is null")
        return tuple(window if t == "sliding_attention" else None for t in types)
    if family == "mistral" and window is not None:
        return (int(window),) * n_layers
    if family in ("qwen2", "qwen3") and cfg.get("use_sliding_window") and window is not None:
        first = int(cfg.get("max_window_layers", n_layers))
        return tuple(int(window) if i >= first else None for i in range(n_layers))
    return ()


def config_from_hf(cfg: Mapping[str, Any], dtype: str | None = None) -> DecoderConfig:
    """A DecoderConfig from a parsed config.json; ValueError naming the field for anything unsupported."""
    family = cfg.get("model_type")
    if family not in FAMILIES:
        raise ValueError(f"config.json: model_type {family!r} is not supported (supported: {', '.join(FAMILIES)})")
    for name, want in _MUST_BE.items():
        if name in cfg and cfg[name] != want:
            raise ValueError(f"config.json: {name} = {cfg[name]!r} is not supported (only {want!r})")
    if cfg.get("pretraining_tp", 1) != 1:
        raise ValueError(f"config.json: pretraining_tp = {cfg['pretraining_tp']} is not supported (only 1)")
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        if name not in cfg:
            raise ValueError(f"config.json: {name} is missing")
    n_heads, n_layers = int(cfg["num_attention_heads"]), int(cfg["num_hidden_layers"])
    bias = bool(cfg.get("attention_bias", False))
    return DecoderConfig(
        family=family,
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
        head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // n_heads),
        intermediate_size=int(cfg["intermediate_size"]),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        **_rope_fields(cfg),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=True if family == "qwen2" else bias,  # Qwen2's q/k/v projections always carry biases
        o_bias=False if family == "qwen2" else bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        qk_norm=family == "qwen3",
        sliding_windows=_sliding_windows(cfg, family, n_layers),
        dtype=dtype or "float32",
    )


# --------------------------------------------------------------------------------------------- the model
def inv_frequencies(cfg: DecoderConfig) -> np.ndarray:
    """RoPE inverse frequencies (E/2,) in float32, computed as transformers computes them: float32 steps, with the
    power theta^(2i/E) correctly rounded to float32 (as PyTorch's pow is; numpy's float32 power is not always)."""
    e = cfg.head_dim
    exponents = np.arange(0, e, 2, dtype=np.int64).astype(np.float32) / np.float32(e)
    power = np.power(np.float64(np.float32(cfg.rope_theta)), exponents.astype(np.float64)).astype(np.float32)
    inv = (np.float32(1.0) / power).astype(np.float32)
    if cfg.rope_type == "linear":
        return (inv / np.float32(cfg.rope_factor)).astype(np.float32)
    if cfg.rope_type == "llama3":
        factor, lo, hi = (np.float32(v) for v in (cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor))
        old = np.float32(cfg.rope_original_max_positions)
        # PyTorch evaluates `scalar / tensor` as scalar * (1 / tensor), two roundings; so does this
        recip = lambda a: (np.float32(1.0) / a).astype(np.float32)
        wavelen = (np.float32(2 * math.pi) * recip(inv)).astype(np.float32)
        scaled = np.where(wavelen > old / lo, inv / factor, inv).astype(np.float32)
        smooth = (((old * recip(wavelen)).astype(np.float32) - lo) / (hi - lo)).astype(np.float32)
        smoothed = ((1 - smooth) * scaled / factor + smooth * scaled).astype(np.float32)
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def rope_tables(cfg: DecoderConfig, t: int) -> tuple[jax.Array, jax.Array]:
    """cos, sin (T, E) in float32 for positions 0..T-1, the frequency halves repeated (rotate-half convention)."""
    freqs_TxE2 = jnp.arange(t, dtype=jnp.float32)[:, None] * jnp.asarray(inv_frequencies(cfg))[None, :]
    angles_TxE = jnp.concatenate([freqs_TxE2, freqs_TxE2], axis=-1)
    return jnp.cos(angles_TxE), jnp.sin(angles_TxE)


def apply_rope(x_BxTxNxE: jax.Array, cos_TxE: jax.Array, sin_TxE: jax.Array) -> jax.Array:
    """x cos + rotate_half(x) sin, in x's dtype (the tables rounded to it first, as transformers does)."""
    c, s = (a.astype(x_BxTxNxE.dtype)[None, :, None, :] for a in (cos_TxE, sin_TxE))
    x1, x2 = jnp.split(x_BxTxNxE, 2, axis=-1)
    return x_BxTxNxE * c + jnp.concatenate([-x2, x1], axis=-1) * s


class RMSNorm(nn.Module):
    """weight * (x / rms(x)): the normalisation in float32, rounded to x's dtype before the weight multiplies it."""

    eps: float
    dtype: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        weight = self.param("weight", nn.initializers.ones, (x.shape[-1],), self.dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + jnp.float32(self.eps))
        return weight.astype(self.dtype).reshape((1,) * (x.ndim - 1) + (-1,)) * y.astype(x.dtype)


def _dense(cfg: DecoderConfig, features: int, name: str, bias: bool) -> nn.Dense:
    return nn.Dense(features, use_bias=bias, dtype=cfg.dtype, param_dtype=cfg.dtype, precision=HIGHEST, name=name)


def attention_mask(t: int, window: int | None, mask_BxT: jax.Array | None) -> jax.Array:
    """(B or 1, 1, 1, T, T) bool: key s is visible from query q when s <= q, q - s < window, and s is not padding."""
    q, s = jnp.arange(t)[:, None], jnp.arange(t)[None, :]
    visible_TxT = s <= q
    if window is not None:
        visible_TxT = visible_TxT & (q - s < window)
    visible = visible_TxT[None, None, None]
    if mask_BxT is not None:
        visible = visible & mask_BxT.astype(bool)[:, None, None, None, :]
    return visible


def attend(
    q_BxCxKxGxE: jax.Array, k_BxSxKxE: jax.Array, v_BxSxKxE: jax.Array, visible: jax.Array, dtype: str
) -> jax.Array:
    """softmax(q k^T / sqrt(E)) v over the visible keys, in float32 (the probabilities rounded to the model dtype
    first, as transformers does): (B, C, K, G, E) for C queries against S keys."""
    e = q_BxCxKxGxE.shape[-1]
    scores = jnp.einsum("bckge,bske->bkgcs", q_BxCxKxGxE, k_BxSxKxE, precision=HIGHEST) * jnp.float32(e**-0.5)
    scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype).astype(jnp.float32)
    return jnp.einsum("bkgcs,bske->bckge", probs, v_BxSxKxE, precision=HIGHEST)


class Attention(nn.Module):
    """Grouped-query causal self-attention with RoPE (and Qwen3's per-head q/k norms before it). query_chunk > 0:
    the scores of that many queries at a time (against the keys up to the chunk's last query), each chunk
    rematerialised in the backward pass, so memory holds one chunk's scores instead of T x T."""

    cfg: DecoderConfig
    window: int | None
    query_chunk: int = 0

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, mask_BxT: jax.Array | None) -> jax.Array:
        cfg = self.cfg
        b, t, _ = x_BxTxD.shape
        h, k, e = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        q = _dense(cfg, h * e, "q_proj", cfg.qkv_bias)(x_BxTxD).reshape(b, t, h, e)
        kk = _dense(cfg, k * e, "k_proj", cfg.qkv_bias)(x_BxTxD).reshape(b, t, k, e)
        v = _dense(cfg, k * e, "v_proj", cfg.qkv_bias)(x_BxTxD).reshape(b, t, k, e)
        if cfg.qk_norm:
            q = RMSNorm(cfg.rms_norm_eps, cfg.dtype, name="q_norm")(q)
            kk = RMSNorm(cfg.rms_norm_eps, cfg.dtype, name="k_norm")(kk)
        cos, sin = rope_tables(cfg, t)
        q, kk = apply_rope(q, cos, sin), apply_rope(kk, cos, sin)
        q_BxTxKxGxE = q.reshape(b, t, k, h // k, e).astype(jnp.float32)
        k32, v32 = kk.astype(jnp.float32), v.astype(jnp.float32)
        visible = attention_mask(t, self.window, mask_BxT)
        if self.query_chunk <= 0 or self.query_chunk >= t:
            out = attend(q_BxTxKxGxE, k32, v32, visible, cfg.dtype)
        else:
            chunked = jax.checkpoint(attend, static_argnums=4)
            outs = []
            for s in range(0, t, self.query_chunk):
                end = min(s + self.query_chunk, t)  # causal: keys past the chunk's last query are never visible
                seen = visible[..., s:end, :end]
                outs.append(chunked(q_BxTxKxGxE[:, s:end], k32[:, :end], v32[:, :end], seen, cfg.dtype))
            out = jnp.concatenate(outs, axis=1)
        return _dense(cfg, cfg.hidden_size, "o_proj", cfg.o_bias)(out.reshape(b, t, h * e).astype(cfg.dtype))


class MLP(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    cfg: DecoderConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        cfg = self.cfg
        gate = _dense(cfg, cfg.intermediate_size, "gate_proj", cfg.mlp_bias)(x_BxTxD)
        up = _dense(cfg, cfg.intermediate_size, "up_proj", cfg.mlp_bias)(x_BxTxD)
        return _dense(cfg, cfg.hidden_size, "down_proj", cfg.mlp_bias)(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x))."""

    cfg: DecoderConfig
    window: int | None
    query_chunk: int = 0

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, mask_BxT: jax.Array | None) -> jax.Array:
        cfg = self.cfg
        h = RMSNorm(cfg.rms_norm_eps, cfg.dtype, name="input_layernorm")(x_BxTxD)
        x = x_BxTxD + Attention(cfg, self.window, self.query_chunk, name="self_attn")(h, mask_BxT)
        h = RMSNorm(cfg.rms_norm_eps, cfg.dtype, name="post_attention_layernorm")(x)
        return x + MLP(cfg, name="mlp")(h)


class Decoder(nn.Module):
    """Token ids (B, T) and an optional padding mask (B, T; 1 = token) -> next-token logits (B, T, vocab) float32.

    remat: decoder layers whose activations are recomputed in the backward pass instead of stored (nn.remat; the
    forward values are the same), e.g. every layer but one whose operands a capture records. query_chunk: as for
    Attention. hidden=True returns the final normed hidden states (B, T, D) instead of the logits (head_logits
    applies the head to any slice of them)."""

    cfg: DecoderConfig
    remat: tuple[int, ...] = ()
    query_chunk: int = 0

    @nn.compact
    def __call__(self, tokens_BxT: jax.Array, mask_BxT: jax.Array | None = None, hidden: bool = False) -> jax.Array:
        cfg = self.cfg
        embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.dtype, name="embed_tokens")
        x = embed(tokens_BxT)
        for i in range(cfg.n_layers):
            layer = nn.remat(DecoderLayer) if i in self.remat else DecoderLayer
            x = layer(cfg, cfg.window(i), self.query_chunk, name=f"layers_{i}")(x, mask_BxT)
        x = RMSNorm(cfg.rms_norm_eps, cfg.dtype, name="norm")(x)
        if hidden:
            return x
        logits = embed.attend(x) if cfg.tie_word_embeddings else _dense(cfg, cfg.vocab_size, "lm_head", False)(x)
        return logits.astype(jnp.float32)


def head_logits(cfg: DecoderConfig, params: dict, hidden_BxTxD: jax.Array) -> jax.Array:
    """The output head (tied: the embedding's transpose) on hidden states, float32 logits: the same product as the
    module's lm_head / Embed.attend, for callers that apply it in token chunks."""
    if cfg.tie_word_embeddings:
        table = params["embed_tokens"]["embedding"].astype(cfg.dtype)
        logits = jnp.dot(hidden_BxTxD.astype(cfg.dtype), table.T, precision=HIGHEST)
    else:
        kernel = params["lm_head"]["kernel"].astype(cfg.dtype)
        dims = (((hidden_BxTxD.ndim - 1,), (0,)), ((), ()))
        logits = jax.lax.dot_general(hidden_BxTxD.astype(cfg.dtype), kernel, dims, precision=HIGHEST)
    return logits.astype(jnp.float32)


# --------------------------------------------------------------------------------------------- safetensors
def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (folder / n).exists()]
        if missing:
            raise FileNotFoundError(f"{index} names shards that are not in {folder}: {missing}")
        return [folder / n for n in names]
    single = folder / "model.safetensors"
    if not single.exists():
        raise FileNotFoundError(f"{folder} holds neither model.safetensors nor model.safetensors.index.json")
    return [single]


def read_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, read-only memory-mapped array) of every tensor in one .safetensors file, bfloat16 included.

    The header is read here (8-byte little-endian length, then JSON) so that tensors are numpy views of the file,
    never copies, in their stored dtype."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path.name}: tensor {name} has dtype {info['dtype']}, not a float type this loads")
        dtype, shape = _SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"])
        begin, end = info["data_offsets"]
        if end - begin != dtype.itemsize * math.prod(shape):
            raise ValueError(f"{path.name}: tensor {name} has {end - begin} bytes for shape {shape} {dtype}")
        if not shape or 0 in shape:
            yield name, np.zeros(shape, dtype)
            continue
        yield name, np.memmap(path, dtype=dtype, mode="r", offset=8 + n + begin, shape=shape)


def _param_path(name: str, cfg: DecoderConfig) -> tuple[tuple[str, ...], bool] | None:
    """(Flax parameter path, transpose?) of a checkpoint tensor name; None for tensors the model does not use."""
    parts = name.split(".")
    if parts[0] == "model":
        parts = parts[1:]
    if parts == ["embed_tokens", "weight"]:
        return ("embed_tokens", "embedding"), False
    if parts == ["norm", "weight"]:
        return ("norm", "weight"), False
    if parts == ["lm_head", "weight"]:  # a tied checkpoint may store the head too: the embedding is the head
        return None if cfg.tie_word_embeddings else (("lm_head", "kernel"), True)
    if len(parts) >= 4 and parts[0] == "layers" and parts[1].isdigit():
        layer, rest = f"layers_{parts[1]}", parts[2:]
        if rest[-1] == "inv_freq":  # older checkpoints store the RoPE table; it is recomputed here
            return None
        if rest[-1] == "weight" and rest[-2].endswith("_proj"):
            return (layer, *rest[:-1], "kernel"), True
        if rest[-1] in ("weight", "bias"):
            return (layer, *rest), False
    raise ValueError(f"checkpoint tensor {name!r} does not belong to a {cfg.family} decoder")


COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")  # output features split over devices
ROW_PARALLEL = ("o_proj", "down_proj")  # input features split: partial products summed across devices


def tensor_parallel_mesh(devices: int) -> Mesh:
    """A one-axis ('model') GSPMD mesh over the first `devices` devices."""
    if not 1 <= devices <= jax.device_count():
        raise ValueError(f"{devices} devices asked for; {jax.device_count()} are available")
    return jax.make_mesh((devices,), ("model",), axis_types=(AxisType.Auto,), devices=jax.devices()[:devices])


def tensor_parallel_spec(path: tuple[str, ...], axis: str = "model") -> PartitionSpec:
    """Megatron-style tensor parallelism over mesh axis `axis`: column-parallel q/k/v/gate/up (kernel and bias
    split along output features), row-parallel o/down (split along input features), the embedding and an untied
    head split along the hidden and vocabulary dims; norms and row-parallel biases replicated."""
    module, leaf = path[-2], path[-1]
    if module in COLUMN_PARALLEL:
        return PartitionSpec(None, axis) if leaf == "kernel" else PartitionSpec(axis)
    if module in ROW_PARALLEL:
        return PartitionSpec(axis, None) if leaf == "kernel" else PartitionSpec()
    if path == ("embed_tokens", "embedding") or path == ("lm_head", "kernel"):
        return PartitionSpec(None, axis)
    return PartitionSpec()


def load_params(folder: Path, cfg: DecoderConfig, dtype: str | None, mesh: Mesh | None = None) -> dict:
    """The Flax parameter tree of a checkpoint (kernels transposed to (in, out)), each tensor copied to the device
    once (with a mesh: straight to its tensor_parallel_spec shards); every parameter the model needs must be
    present, and no tensor may be left unused."""
    want = jax.eval_shape(lambda: Decoder(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"]
    expected = {tuple(getattr(k, "key", k) for k in p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(want)}
    params: dict = {}
    for file in _safetensors_files(folder):
        for name, array in read_safetensors(file):
            target = _param_path(name, cfg)
            if target is None:
                continue
            path, transpose = target
            if path not in expected:
                raise ValueError(
                    f"checkpoint tensor {name!r} maps to {'/'.join(path)}, which a {cfg.family} model "
                    f"with this config.json does not have"
                )
            value = array.T if transpose else array
            if value.shape != expected[path].shape:
                raise ValueError(
                    f"checkpoint tensor {name!r} has shape {array.shape}; config.json implies "
                    f"{expected[path].shape[::-1] if transpose else expected[path].shape}"
                )
            node = params
            for key in path[:-1]:
                node = node.setdefault(key, {})
            value = value.astype(dtype or value.dtype, copy=False)
            where = None if mesh is None else NamedSharding(mesh, tensor_parallel_spec(path))
            node[path[-1]] = jax.device_put(value, where)
    missing = sorted("/".join(p) for p in expected if not _has(params, p))
    if missing:
        raise ValueError(f"{folder}: the checkpoint lacks {len(missing)} parameters, e.g. {missing[:4]}")
    return params


def _has(tree: dict, path: tuple[str, ...]) -> bool:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


# --------------------------------------------------------------------------------------------- the object
@functools.partial(jax.jit, static_argnums=0)
def _apply(model: Decoder, params: dict, tokens_BxT: jax.Array, mask_BxT: jax.Array | None) -> jax.Array:
    return cast(jax.Array, model.apply({"params": params}, tokens_BxT, mask_BxT))


@dataclass(frozen=True)
class PretrainedLM:
    """A loaded checkpoint: `model` (the Flax module, for lb.quantized / lb.capture), `params`, `config`,
    `tokenizer` (a tokenizers.Tokenizer, or None without tokenizer.json) and the folder it came from."""

    model: Decoder
    params: dict
    config: DecoderConfig
    tokenizer: Any
    path: Path
    hf_config: Mapping[str, Any]

    def logits(self, tokens_BxT: jax.Array, mask_BxT: jax.Array | None = None) -> jax.Array:
        """Next-token logits (B, T, vocab) float32; mask_BxT (1 = token, 0 = padding) hides padded keys.

        Outside any lb.quantized / lb.capture context the compiled function is cached; inside one it is traced
        afresh, so that the context acts on it (a trace made outside would keep the unquantized GEMMs)."""
        if not isinstance(tokens_BxT, jax.core.Tracer):
            self._check_ids(np.asarray(tokens_BxT))
        tokens = jnp.asarray(tokens_BxT, jnp.int32)
        mask = None if mask_BxT is None else jnp.asarray(mask_BxT, jnp.int32)
        if interceptor.active():
            fresh: Callable = jax.jit(lambda p, x, m: self.model.apply({"params": p}, x, m))
            return cast(jax.Array, fresh(self.params, tokens, mask))
        return _apply(self.model, self.params, tokens, mask)

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int32) of `text` with the checkpoint's own tokenizer."""
        if self.tokenizer is None:
            raise ValueError(f"{self.path} has no tokenizer.json")
        return self._check_ids(np.asarray(self.tokenizer.encode(text).ids, np.int32))

    def _check_ids(self, ids: np.ndarray) -> np.ndarray:
        """ids, or ValueError if one lies outside the embedding (a gather would clamp it silently)."""
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(
                f"token ids in [{ids.min()}, {ids.max()}] but the model has {self.config.vocab_size} embeddings "
                "(a tokenizer that does not belong to this checkpoint?)"
            )
        return ids


def load_pretrained(path: str | Path, dtype: str | None = None, mesh: Mesh | None = None) -> PretrainedLM:
    """Load a local Llama / Mistral / Qwen2 / Qwen3 checkpoint folder; dtype None keeps the stored dtype; with a
    mesh that has a 'model' axis, every tensor is placed in tensor-parallel shards (tensor_parallel_spec)."""
    if mesh is not None and "model" not in mesh.axis_names:
        raise ValueError(f"load_pretrained shards over a mesh axis named 'model'; this mesh has {mesh.axis_names}")
    if mesh is not None and any(a != AxisType.Auto for a in mesh.axis_types):
        raise ValueError("load_pretrained needs a mesh of AxisType.Auto axes (GSPMD propagates the shardings)")
    folder = Path(path).expanduser()
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder (no config.json)")
    hf_config = json.loads((folder / "config.json").read_text())
    stored = _stored_dtype(folder)
    cfg = config_from_hf(hf_config, dtype=dtype or stored)
    params = load_params(folder, cfg, dtype, mesh)
    tokenizer = None
    if (folder / "tokenizer.json").exists():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return PretrainedLM(Decoder(cfg), params, cfg, tokenizer, folder, hf_config)


def _stored_dtype(folder: Path) -> str:
    """The dtype of the checkpoint's token embedding (the compute dtype unless one is asked for)."""
    for file in _safetensors_files(folder):
        for name, array in read_safetensors(file):
            if name.endswith("embed_tokens.weight"):
                return str(array.dtype)
    raise ValueError(f"{folder}: no embed_tokens.weight tensor in the checkpoint")

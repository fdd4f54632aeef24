"""A small Llama-style decoder in Flax linen: RMSNorm, RoPE, grouped-query attention, SwiGLU, untied output head.

Every projection is an `nn.Dense` without bias, so `lb.quantized(rules)` routes it through qdot_general; module
paths are 'layers_<i>/attn/{q,k,v,o}_proj', 'layers_<i>/mlp/{gate,up,down}_proj' and 'lm_head'. The attention
score and value products are plain einsums (not intercepted, as in the paper's authors' code) and `LM_HEAD_RULE`
keeps the output head unquantized. Shapes: B batch, T tokens, D model width, H heads, K kv heads, E head dim.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lowbit_jax.models import HIGHEST

LM_HEAD_RULE = ("lm_head", None)


@dataclass(frozen=True)
class LlamaConfig:
    """Model shape; `dtype` is the compute dtype (parameters stay float32)."""

    vocab_size: int = 256
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 2
    ffn_dim: int = 768
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    dtype: str = "float32"

    def __post_init__(self):
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"dim {self.dim} must divide by n_heads {self.n_heads}, which must divide by n_kv_heads")
        if (self.dim // self.n_heads) % 2:
            raise ValueError("RoPE needs an even head dimension")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def rules(config) -> list:
    """Interceptor rules: the output head unquantized, every other Dense with `config` (a QDotConfig or preset)."""
    return [LM_HEAD_RULE, (".*", config)]


def rope_tables(t: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape (T, E/2) for positions 0..T-1."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles_TxE2 = jnp.arange(t, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.cos(angles_TxE2), jnp.sin(angles_TxE2)


def apply_rope(x_BxTxNxE: jax.Array, cos_TxE2: jax.Array, sin_TxE2: jax.Array) -> jax.Array:
    """Rotate the two halves of every head (the Llama 'rotate_half' convention), in float32."""
    x = x_BxTxNxE.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    c, s = cos_TxE2[None, :, None, :], sin_TxE2[None, :, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x_BxTxNxE.dtype)


def _dense(cfg: LlamaConfig, features: int, name: str, std: float) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=False,
        dtype=cfg.dtype,
        precision=HIGHEST,
        kernel_init=nn.initializers.normal(std),
        name=name,
    )


class RMSNorm(nn.Module):
    """x / rms(x) * scale, computed in float32 and returned in the compute dtype."""

    eps: float
    dtype: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + jnp.float32(self.eps))
        return (y * scale.reshape((1,) * (x.ndim - 1) + (-1,))).astype(self.dtype)


class Attention(nn.Module):
    """Causal grouped-query self-attention with rotary position embeddings."""

    cfg: LlamaConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        cfg = self.cfg
        b, t, _ = x_BxTxD.shape
        h, k, e = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        out_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5
        q = _dense(cfg, h * e, "q_proj", cfg.init_std)(x_BxTxD).reshape(b, t, h, e)
        kk = _dense(cfg, k * e, "k_proj", cfg.init_std)(x_BxTxD).reshape(b, t, k, e)
        v = _dense(cfg, k * e, "v_proj", cfg.init_std)(x_BxTxD).reshape(b, t, k, e)
        cos, sin = rope_tables(t, e, cfg.rope_theta)
        q, kk = apply_rope(q, cos, sin), apply_rope(kk, cos, sin)
        q_BxTxKxGxE = q.reshape(b, t, k, h // k, e).astype(jnp.float32)
        scores = jnp.einsum("btkge,bske->bkgts", q_BxTxKxGxE, kk.astype(jnp.float32), precision=HIGHEST)
        scores = scores * jnp.float32(e**-0.5)
        causal_TxT = jnp.tril(jnp.ones((t, t), dtype=bool))[None, None, None]
        scores = jnp.where(causal_TxT, scores, jnp.float32(-1e30))
        probs = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("bkgts,bske->btkge", probs, v.astype(jnp.float32), precision=HIGHEST).reshape(b, t, h * e)
        return _dense(cfg, cfg.dim, "o_proj", out_std)(out.astype(cfg.dtype))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    cfg: LlamaConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        cfg = self.cfg
        gate = _dense(cfg, cfg.ffn_dim, "gate_proj", cfg.init_std)(x_BxTxD)
        up = _dense(cfg, cfg.ffn_dim, "up_proj", cfg.init_std)(x_BxTxD)
        out_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5
        return _dense(cfg, cfg.dim, "down_proj", out_std)(nn.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    cfg: LlamaConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        cfg = self.cfg
        norm = lambda name: RMSNorm(cfg.norm_eps, cfg.dtype, name=name)
        x = x_BxTxD + Attention(cfg, name="attn")(norm("attn_norm")(x_BxTxD))
        return x + SwiGLU(cfg, name="mlp")(norm("mlp_norm")(x))


class Llama(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, vocab) in float32."""

    cfg: LlamaConfig

    @nn.compact
    def __call__(self, tokens_BxT: jax.Array) -> jax.Array:
        cfg = self.cfg
        embed = nn.Embed(cfg.vocab_size, cfg.dim, embedding_init=nn.initializers.normal(cfg.init_std), name="embed")
        x = embed(tokens_BxT).astype(cfg.dtype)
        for i in range(cfg.n_layers):
            x = Block(cfg, name=f"layers_{i}")(x)
        x = RMSNorm(cfg.norm_eps, cfg.dtype, name="final_norm")(x)
        return _dense(cfg, cfg.vocab_size, "lm_head", cfg.init_std)(x).astype(jnp.float32)


def init_params(cfg: LlamaConfig, key: jax.Array, seq_len: int = 8) -> dict:
    """Initial parameters (float32) for this configuration (jitted: eager Flax init compiles op by op)."""
    return jax.jit(lambda k: Llama(cfg).init(k, jnp.zeros((1, seq_len), jnp.int32))["params"])(key)


def n_params(params, exclude: tuple[str, ...] = ()) -> int:
    """Parameter count, optionally leaving out top-level modules (e.g. ('embed', 'lm_head'))."""
    return sum(int(v.size) for k, sub in params.items() if k not in exclude for v in jax.tree.leaves(sub))


def token_nll(params, cfg: LlamaConfig, tokens_BxTp1: jax.Array) -> jax.Array:
    """Per-token next-token negative log-likelihood (B, T) of windows of T + 1 tokens."""
    logits = Llama(cfg).apply({"params": params}, tokens_BxTp1[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BxTp1[:, 1:])


def loss_fn(params, cfg: LlamaConfig, tokens_BxTp1: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy (nats per token)."""
    return jnp.mean(token_nll(params, cfg, tokens_BxTp1))

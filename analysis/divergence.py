"""Output-distribution distances for direct-cast inference (arXiv 2510.25602 section 5.2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

PAPER_TOP_K = 25
WINDOW = ("kl", "kl_full", "nll")  # the per-window metrics of window_metrics, in its order


def topk_kl(ref_logits: jax.Array, q_logits: jax.Array, k: int = PAPER_TOP_K) -> jax.Array:
    """Per-token KL(P_ref || Q) over the reference model's top-k tokens, both renormalised on those k (nats).

    The paper multiplies by 10^6 and reduces with PyTorch's kl_div default 'mean', i.e. divides this by k as well.
    """
    top, idx = jax.lax.top_k(ref_logits, k)
    log_p = jax.nn.log_softmax(top, axis=-1)
    log_q = jax.nn.log_softmax(jnp.take_along_axis(q_logits, idx, axis=-1), axis=-1)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def full_kl(ref_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
    """Per-token KL(P_ref || Q) over the whole vocabulary (nats)."""
    log_p = jax.nn.log_softmax(ref_logits, axis=-1)
    return jnp.sum(jnp.exp(log_p) * (log_p - jax.nn.log_softmax(q_logits, axis=-1)), axis=-1)


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token negative log-likelihood (nats)."""
    log_q = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_q, targets[..., None], axis=-1)[..., 0]


def window_metrics(ref_logits: jax.Array, q_logits: jax.Array, targets: jax.Array, k: int = PAPER_TOP_K) -> tuple:
    """Per window (mean over its tokens): top-k KL, full-vocabulary KL and the quantized model's NLL (WINDOW)."""
    return (
        jnp.mean(topk_kl(ref_logits, q_logits, k), axis=-1),
        jnp.mean(full_kl(ref_logits, q_logits), axis=-1),
        jnp.mean(token_nll(q_logits, targets), axis=-1),
    )

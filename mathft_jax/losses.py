"""Losses. Every function returns sums, not means: the caller divides by the summed
weights, so gradient accumulation over micro-batches equals one large batch exactly.
"""
from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp


def token_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                        z_loss: float = 0.0) -> Dict[str, jax.Array]:
    """Weighted token cross-entropy plus PaLM's z-loss (z_loss * log(Z)^2 per token).

    Returns sums over tokens: `loss` (xent + z-loss, what is optimised), `xent`, `z_loss`,
    `correct` (argmax hits) and `weight` (the normaliser: number of target tokens).
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    xent = (log_z - target_logit) * weights
    zl = z_loss * jnp.square(log_z) * weights
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32) * weights
    return {
        "loss": jnp.sum(xent + zl),
        "xent": jnp.sum(xent),
        "z_loss": jnp.sum(zl),
        "correct": jnp.sum(correct),
        "weight": jnp.sum(weights),
    }


def sequence_log_likelihood(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """log P(targets) per sequence: sum of weighted token log-probs, shape [batch]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    tok = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(tok * weights.astype(jnp.float32), axis=-1)

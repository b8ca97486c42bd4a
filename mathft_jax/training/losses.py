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
    # a hit when the target's logit is the largest (cheaper than argmax, same but for ties)
    correct = (target_logit >= logits.max(axis=-1)).astype(jnp.float32) * weights
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


# ---- the recipe's evaluator and sequence losses (per example; objectives.py sums them) ----

def log_evaluator_score(ll_correct: jax.Array, ll_incorrect: jax.Array) -> jax.Array:
    """log S(X|P), with S = p(" correct") / (p(" correct") + p(" incorrect")), from the two
    labels' log-likelihoods after the evaluator template. Stable for p -> 0 or 1."""
    return ll_correct - jnp.logaddexp(ll_correct, ll_incorrect)


def evaluator_margin_loss(log_s_pos: jax.Array, log_s_neg: jax.Array, margin: float) -> jax.Array:
    """max(0, log S(X-|P) - log S(X+|P) + margin) per (correct X+, incorrect X-) pair."""
    return jax.nn.relu(log_s_neg - log_s_pos + margin)


def evaluator_xent_loss(ll_correct: jax.Array, ll_incorrect: jax.Array,
                        is_correct: jax.Array) -> jax.Array:
    """-1[X correct] log p(" correct") - 1[X incorrect] log p(" incorrect") per candidate."""
    is_correct = is_correct.astype(jnp.float32)
    return -(is_correct * ll_correct + (1.0 - is_correct) * ll_incorrect)


def sequence_margin_loss(ll_pos: jax.Array, ll_neg: jax.Array, margin: float) -> jax.Array:
    """max(0, log P(X-|P) - log P(X+|P) + margin): the hinge on the generator's own
    sequence log-likelihoods."""
    return jax.nn.relu(ll_neg - ll_pos + margin)


def contrastive_mle_loss(ll_pos: jax.Array, ll_neg: jax.Array, pos_tokens: jax.Array,
                         margin: float, alpha: float) -> jax.Array:
    """sequence_margin_loss + alpha * MLE on the correct solution, the MLE term being its
    per-token negative log-likelihood (-log P(X+|P) / |X+|) so alpha is length-free."""
    mle = -ll_pos / jnp.maximum(pos_tokens.astype(jnp.float32), 1.0)
    return sequence_margin_loss(ll_pos, ll_neg, margin) + alpha * mle


# ---- preference optimisation against a frozen reference (objectives.dpo_objective) ----

DPO_LOSS_TYPES = ("sigmoid", "ipo")


def dpo_loss(ll_chosen: jax.Array, ll_rejected: jax.Array, ref_chosen: jax.Array,
             ref_rejected: jax.Array, beta: float, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0) -> jax.Array:
    """Per pair, with h = (log P(c) - log Pref(c)) - (log P(r) - log Pref(r)) on whole
    sequences (c chosen, r rejected):

      sigmoid  DPO (Rafailov et al., 2023): -log sigmoid(beta h); with label_smoothing e
               the conservative DPO of Mitchell (2023): -(1 - e) log sig(beta h) - e log sig(-beta h),
               the loss under labels flipped with probability e
      ipo      IPO (Azar et al., 2023): (h - 1 / (2 beta))^2, a squared loss that stops
               pushing once the margin reaches 1 / (2 beta) (no label_smoothing)
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"dpo loss_type={loss_type!r}; expected one of {DPO_LOSS_TYPES}")
    h = (ll_chosen - ref_chosen) - (ll_rejected - ref_rejected)
    if loss_type == "ipo":
        if label_smoothing:
            raise ValueError("label_smoothing is for loss_type='sigmoid' only")
        return jnp.square(h - 1.0 / (2.0 * beta))
    return -((1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * h)
             + label_smoothing * jax.nn.log_sigmoid(-beta * h))

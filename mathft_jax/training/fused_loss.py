"""Output projection fused with the token cross-entropy, in chunks of the sequence.

With a large vocabulary the [batch, length, vocab] float32 logits are the biggest tensor of
a train step (palm_1b, 16 x 2048 tokens, 256k vocabulary: 34 GB), which caps the batch
that fits. Here the logits of one chunk of `chunk` positions exist at a time: the forward
pass computes each chunk's logits, its loss sums and, right away, its gradients with
respect to the hidden states and the projection; the backward pass only scales those by
the loss's cotangent. The matmul work is the same three passes as the unfused loss (logits,
d hidden, d weights); peak memory for the head drops to one chunk's logits plus one
float32 copy of the projection's gradient.

    sums = fused_head_cross_entropy(hidden, w, targets, weights, z_loss=1e-4, chunk=256)

returns the same sums as `losses.token_cross_entropy(hidden @ w, ...)`. Gradients flow
through `loss` only; the other entries are metrics.

The evaluator and sequence objectives need each row's log-likelihood, whose cotangent (one
per row) is only known in the backward pass; `chunked_sequence_log_likelihood` gets there
by recomputing each chunk's logits in the backward pass (`jax.checkpoint`): one more logits
matmul than the unfused loss, for the memory of one chunk. `chunked_row_sums` is that
mechanism for any per-token quantity summed per row (GRPO's clipped token loss).
"""
from __future__ import annotations

import functools
from typing import Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mathft_jax.training import losses
from mathft_jax.models.decoder import head_logits

HEAD_AXES = ("embed", "vocab")


def fused_head_cross_entropy(hidden: jax.Array, w: jax.Array, targets: jax.Array,
                             weights: jax.Array, *, z_loss: float = 0.0,
                             softcap: Optional[float] = None, chunk: int = 256
                             ) -> Dict[str, jax.Array]:
    """hidden [b, t, d] (after the final norm), w [d, V] (the output projection, or the
    transposed embedding when tied), targets and weights [b, t] -> the sums of
    `losses.token_cross_entropy`. t must be a multiple of chunk (or smaller than it)."""
    return _fused(hidden, w, targets, weights.astype(jnp.float32), float(z_loss),
                  None if softcap is None else float(softcap), _chunk_size(chunk, hidden.shape[1]))


def chunked_sequence_log_likelihood(hidden: jax.Array, w: jax.Array, targets: jax.Array,
                                    weights: jax.Array, *, softcap: Optional[float] = None,
                                    chunk: int = 256) -> jax.Array:
    """`losses.sequence_log_likelihood(head_logits(hidden, w, softcap), targets, weights)`,
    log P(targets) per row [b], with one chunk of logits in memory at a time, forward and
    backward."""
    def row_ll(logits, tgt, wt):
        return losses.sequence_log_likelihood(logits, tgt, wt)[:, None]

    return chunked_row_sums(hidden, w, row_ll, (targets, weights), softcap=softcap,
                            chunk=chunk)[:, 0]


def chunked_row_sums(hidden: jax.Array, w: jax.Array, fn, per_position, *,
                     softcap: Optional[float] = None, chunk: int = 256) -> jax.Array:
    """sum over chunks of fn(head_logits(hidden chunk, w, softcap), *per_position chunks),
    where fn maps one chunk's [b, c, V] logits (and its [b, c, ...] slices of `per_position`)
    to [b, k] sums over the chunk's positions: per-row sums of any per-token quantity, with
    one chunk of logits in memory at a time. The backward pass recomputes each chunk's
    logits (`jax.checkpoint`). fn may close over per-row values ([b]) too."""
    b, t, _ = hidden.shape
    chunk = _chunk_size(chunk, t)

    @functools.partial(jax.checkpoint, prevent_cse=False)  # inside scan: no CSE to prevent
    def one_chunk(total, inputs):
        x, *rest = inputs
        return total + fn(head_logits(x, w, softcap), *rest), None

    chunks = tuple(_split(a, chunk) for a in (hidden, *per_position))
    first = jax.eval_shape(lambda xs: one_chunk(0.0, xs)[0],
                           jax.tree_util.tree_map(lambda a: a[0], chunks))
    total, _ = jax.lax.scan(one_chunk, jnp.zeros(first.shape, first.dtype), chunks)
    return total


def _chunk_size(chunk: int, t: int) -> int:
    chunk = min(chunk, t)
    if chunk < 1 or t % chunk:
        raise ValueError(f"loss chunk {chunk} must divide the sequence length {t}")
    return chunk


def _split(x: jax.Array, chunk: int) -> jax.Array:
    """[b, t, ...] -> [t // chunk, b, chunk, ...], the chunks as scan's leading axis."""
    b, t = x.shape[:2]
    return jnp.moveaxis(x.reshape(b, t // chunk, chunk, *x.shape[2:]), 1, 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _fused(hidden, w, targets, weights, z_loss, softcap, chunk):
    return _forward(hidden, w, targets, weights, z_loss, softcap, chunk)[0]


def _forward(hidden, w, targets, weights, z_loss, softcap, chunk):
    vocab_ids = jnp.arange(w.shape[1], dtype=targets.dtype)

    def one_chunk(dw, inputs):
        x, tgt, wt = inputs  # [b, c, d], [b, c], [b, c]
        logits = head_logits(x, w, softcap)
        log_z = jax.nn.logsumexp(logits, axis=-1)
        target_logit = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
        is_target = vocab_ids == tgt[..., None]
        # d(xent + z_loss * log_z^2) / d logits = softmax * (1 + 2 z_loss log_z) - onehot
        probs = jnp.exp(logits - log_z[..., None])
        g = (probs * (1.0 + 2.0 * z_loss * log_z)[..., None] - is_target) * wt[..., None]
        if softcap is not None:  # d (cap tanh(l / cap)) / d l = 1 - (capped logit / cap)^2
            g = g * (1.0 - jnp.square(logits / softcap))
        g = g.astype(x.dtype)
        dx = jnp.einsum("bcv,dv->bcd", g, w)
        dw = dw + jnp.einsum("bcd,bcv->dv", x, g, preferred_element_type=jnp.float32)
        dw = nn.with_logical_constraint(dw, HEAD_AXES)
        sums = jnp.stack([jnp.sum((log_z - target_logit) * wt),
                          jnp.sum(z_loss * jnp.square(log_z) * wt),
                          jnp.sum((target_logit >= logits.max(axis=-1)) * wt)])
        return dw, (dx, sums)

    dw0 = nn.with_logical_constraint(jnp.zeros(w.shape, jnp.float32), HEAD_AXES)
    dw, (dx, sums) = jax.lax.scan(one_chunk, dw0,
                                  tuple(_split(a, chunk) for a in (hidden, targets, weights)))
    dx = jnp.moveaxis(dx, 0, 1).reshape(hidden.shape)
    xent, zl, correct = jnp.sum(sums, axis=0)
    out = {"loss": xent + zl, "xent": xent, "z_loss": zl, "correct": correct,
           "weight": jnp.sum(weights)}
    # targets and weights ride along for their cotangents' shapes: they are the step's
    # inputs, alive anyway, so keeping them costs no memory.
    return out, (dx, dw.astype(w.dtype), targets, weights)


def _backward(z_loss, softcap, chunk, residuals, cotangents):
    dx, dw, targets, weights = residuals
    scale = cotangents["loss"]
    return ((dx * scale.astype(dx.dtype)), (dw * scale.astype(dw.dtype)),
            np.zeros(targets.shape, jax.dtypes.float0), jnp.zeros_like(weights))


_fused.defvjp(_forward, _backward)

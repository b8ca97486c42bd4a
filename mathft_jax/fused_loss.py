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
"""
from __future__ import annotations

import functools
from typing import Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

HEAD_AXES = ("embed", "vocab")


def fused_head_cross_entropy(hidden: jax.Array, w: jax.Array, targets: jax.Array,
                             weights: jax.Array, *, z_loss: float = 0.0,
                             softcap: Optional[float] = None, chunk: int = 256
                             ) -> Dict[str, jax.Array]:
    """hidden [b, t, d] (after the final norm), w [d, V] (the output projection, or the
    transposed embedding when tied), targets and weights [b, t] -> the sums of
    `losses.token_cross_entropy`. t must be a multiple of chunk (or smaller than it)."""
    t = hidden.shape[1]
    chunk = min(chunk, t)
    if chunk < 1 or t % chunk:
        raise ValueError(f"loss chunk {chunk} must divide the sequence length {t}")
    return _fused(hidden, w, targets, weights.astype(jnp.float32), float(z_loss),
                  None if softcap is None else float(softcap), chunk)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _fused(hidden, w, targets, weights, z_loss, softcap, chunk):
    return _forward(hidden, w, targets, weights, z_loss, softcap, chunk)[0]


def _forward(hidden, w, targets, weights, z_loss, softcap, chunk):
    b, t, d = hidden.shape
    n = t // chunk
    split = lambda x: jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0)  # noqa: E731
    vocab_ids = jnp.arange(w.shape[1], dtype=targets.dtype)

    def one_chunk(dw, inputs):
        x, tgt, wt = inputs  # [b, c, d], [b, c], [b, c]
        logits = jnp.einsum("bcd,dv->bcv", x, w, preferred_element_type=jnp.float32)
        if softcap is not None:
            capped = jnp.tanh(logits / softcap)
            logits = softcap * capped
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
        log_z = jax.nn.logsumexp(logits, axis=-1)
        target_logit = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
        is_target = vocab_ids == tgt[..., None]
        # d(xent + z_loss * log_z^2) / d logits = softmax * (1 + 2 z_loss log_z) - onehot
        probs = jnp.exp(logits - log_z[..., None])
        g = (probs * (1.0 + 2.0 * z_loss * log_z)[..., None] - is_target) * wt[..., None]
        if softcap is not None:
            g = g * (1.0 - jnp.square(capped))
        g = g.astype(x.dtype)
        dx = jnp.einsum("bcv,dv->bcd", g, w)
        dw = dw + jnp.einsum("bcd,bcv->dv", x, g, preferred_element_type=jnp.float32)
        dw = nn.with_logical_constraint(dw, HEAD_AXES)
        sums = jnp.stack([jnp.sum((log_z - target_logit) * wt),
                          jnp.sum(z_loss * jnp.square(log_z) * wt),
                          jnp.sum((target_logit >= logits.max(axis=-1)) * wt)])
        return dw, (dx, sums)

    dw0 = nn.with_logical_constraint(jnp.zeros(w.shape, jnp.float32), HEAD_AXES)
    dw, (dx, sums) = jax.lax.scan(one_chunk, dw0, (split(hidden), split(targets), split(weights)))
    dx = jnp.moveaxis(dx, 0, 1).reshape(hidden.shape)
    xent, zl, correct = jnp.sum(sums, axis=0)
    out = {"loss": xent + zl, "xent": xent, "z_loss": zl, "correct": correct,
           "weight": jnp.sum(weights)}
    return out, (dx, dw.astype(w.dtype), targets, weights)


def _backward(z_loss, softcap, chunk, residuals, cotangents):
    dx, dw, targets, weights = residuals
    scale = cotangents["loss"]
    return ((dx * scale.astype(dx.dtype)), (dw * scale.astype(dw.dtype)),
            np.zeros(targets.shape, jax.dtypes.float0), jnp.zeros_like(weights))


_fused.defvjp(_forward, _backward)

"""Model size, FLOPs and KV-cache figures, from shapes alone (`jax.eval_shape`).

Nothing here allocates parameters, so a 540B config is counted on a laptop.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mathft_jax.models.config import DecoderConfig
from mathft_jax.models.decoder import abstract_params


def param_shapes(cfg: DecoderConfig):
    """Unboxed ShapeDtypeStruct tree of the parameters."""
    return nn.unbox(abstract_params(cfg))


def count_params(cfg: DecoderConfig) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(param_shapes(cfg))))


def flops_per_token(cfg: DecoderConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12*L*H*Q*T.

    N counts the parameters in matmuls (the logits projection included, the input
    embedding lookup excluded); the attention term counts QK^T and AV for all T keys
    as PaLM does (no causal halving), so MFU figures are comparable with PaLM's.
    """
    seq_len = seq_len or cfg.max_seq_len
    n = count_params(cfg)
    if not cfg.tie_embeddings:
        n -= cfg.vocab_size * cfg.d_model  # input embedding of an untied model: a lookup
    attn = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
    return float(6 * n + attn)


def kv_cache_bytes_per_token(cfg: DecoderConfig) -> int:
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize


def param_bytes(cfg: DecoderConfig, dtype=None) -> int:
    item = np.dtype(dtype or cfg.param_dtype).itemsize
    return count_params(cfg) * item


def summary(cfg: DecoderConfig, seq_len: int | None = None) -> dict:
    seq_len = seq_len or cfg.max_seq_len
    return {
        "params": count_params(cfg),
        "flops_per_token": flops_per_token(cfg, seq_len),
        "seq_len": seq_len,
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(cfg),
        "param_bytes": param_bytes(cfg),
        "num_layers": cfg.num_layers,
        "d_model": cfg.d_model,
        "num_heads": cfg.num_heads,
        "num_kv_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "mlp_dim": cfg.mlp_dim,
        "vocab_size": cfg.vocab_size,
    }

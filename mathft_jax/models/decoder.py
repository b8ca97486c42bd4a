"""`Decoder`: the PaLM-style decoder-only transformer (flax.linen).

Training:  logits = Decoder(cfg).apply({"params": p}, tokens, positions, segment_ids)
Decoding:  logits, cache = Decoder(cfg).apply({"params": p}, tokens, positions,
                                              cache=cache, cache_index=idx)
The KV cache is an explicit pytree (see `init_cache`), passed in and returned, so the
decode loop stays a pure function that jit, while_loop and sharding handle directly.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from mathft_jax.models.config import ConfigError, DecoderConfig
from mathft_jax.models.layers import Attention, Mlp, Norm, param

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "save_attn_out": jax.checkpoint_policies.save_only_these_names("attn_out"),
}
ACTIVATION_AXES = ("batch", "length", "embed")


class DecoderLayer(nn.Module):
    cfg: DecoderConfig
    layer_index: int = 0
    lora_dropout: float = 0.0

    @nn.compact
    def __call__(self, x, positions, segment_ids, cache=None, cache_index=None):
        cfg = self.cfg
        attn = Attention(cfg, self.layer_index, self.lora_dropout, name="attention")
        mlp = Mlp(cfg, self.lora_dropout, name="mlp")
        if cfg.parallel_block:
            h = Norm(cfg, name="pre_norm")(x)
            a, cache = attn(h, positions, segment_ids, cache, cache_index)
            a = checkpoint_name(a, "attn_out")
            y = x + a + mlp(h)
        else:
            a, cache = attn(Norm(cfg, name="pre_attention_norm")(x), positions, segment_ids,
                            cache, cache_index)
            a = checkpoint_name(a, "attn_out")
            if cfg.post_block_norms:
                a = Norm(cfg, name="post_attention_norm")(a)
            x = x + a
            m = mlp(Norm(cfg, name="pre_mlp_norm")(x))
            if cfg.post_block_norms:
                m = Norm(cfg, name="post_mlp_norm")(m)
            y = x + m
        return nn.with_logical_constraint(y, ACTIVATION_AXES), cache


class _ScannedLayer(nn.Module):
    """nn.scan body: carry = residual stream, scanned input/output = this layer's cache."""
    cfg: DecoderConfig
    lora_dropout: float = 0.0

    @nn.compact
    def __call__(self, x, cache, positions, segment_ids, cache_index):
        return _layer_cls(self.cfg)(self.cfg, 0, self.lora_dropout, name="layer")(
            x, positions, segment_ids, cache, cache_index)


def _layer_cls(cfg: DecoderConfig):
    if cfg.remat_policy == "none":
        return DecoderLayer
    return nn.remat(DecoderLayer, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)


class Decoder(nn.Module):
    """lora_dropout: LoRA's dropout on the adapters' inputs, applied when the call has a
    `lora_dropout` rng and a `"lora"` collection (models/lora.py)."""
    cfg: DecoderConfig
    lora_dropout: float = 0.0

    @nn.compact
    def __call__(self, tokens, positions=None, segment_ids=None, cache=None, cache_index=None,
                 return_hidden: bool = False):
        """tokens [b, t] int -> logits [b, t, vocab] (float32); with a cache, (logits, cache).

        positions: [b, t] RoPE positions (default 0..t-1); with packing they restart per
        example. segment_ids: [b, t], 0 = padding; tokens attend only within their segment.
        cache / cache_index: decode mode, see `Attention` and `init_cache`.
        return_hidden: the final-norm hidden states [b, t, d] instead of the logits, for a
        loss that applies `output_projection` itself (fused_loss.py).
        """
        cfg = self.cfg
        if cfg.scan_layers and cfg.sliding_window and cfg.sliding_window_pattern > 1:
            raise ConfigError("DecoderConfig.scan_layers cannot scan layers that alternate "
                              "local and global attention (sliding_window_pattern > 1)")
        b, t = tokens.shape
        if positions is None:
            base = 0 if cache_index is None else cache_index[:, None]
            positions = base + jnp.broadcast_to(jnp.arange(t)[None, :], (b, t))
        embedding = param(self, "embedding", (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                          nn.initializers.normal(stddev=cfg.d_model ** -0.5), cfg.weight_dtype)
        x = jnp.take(embedding, tokens, axis=0).astype(cfg.compute_dtype)
        if cfg.scale_embeddings:
            x = x * jnp.asarray(cfg.d_model ** 0.5, cfg.compute_dtype)
        x = nn.with_logical_constraint(x, ACTIVATION_AXES)

        if cfg.scan_layers:
            scanned = nn.scan(
                _ScannedLayer,
                variable_axes={"params": 0, "lora": 0},  # adapters stack as the weights do
                split_rngs={"params": True, "lora_dropout": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, self.lora_dropout, name="layers")
            x, new_cache = scanned(x, cache, positions, segment_ids, cache_index)
        else:
            new_cache = [] if cache is not None else None
            layer_cls = _layer_cls(cfg)
            for i in range(cfg.num_layers):
                x, c = layer_cls(cfg, i, self.lora_dropout, name=f"layers_{i}")(
                    x, positions, segment_ids, None if cache is None else cache[i], cache_index)
                if cache is not None:
                    new_cache.append(c)

        x = Norm(cfg, name="final_norm")(x)
        if cfg.tie_embeddings:
            head = output_projection({"embedding": embedding}, cfg)
        else:
            w = param(self, "logits_dense", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                      nn.initializers.normal(stddev=cfg.d_model ** -0.5), cfg.weight_dtype)
            head = output_projection({"logits_dense": w}, cfg)
        if return_hidden:
            if cache is not None:
                raise ValueError("return_hidden is for training losses; decoding with a cache "
                                 "needs the logits")
            return x
        logits = head_logits(x, head, cfg.final_logit_softcap)
        if cache is not None:
            return logits, new_cache
        return logits


def output_projection(params, cfg: DecoderConfig) -> jax.Array:
    """The [d_model, vocab] matrix that maps final hidden states to logits, in the compute
    dtype: the transposed embedding when tied."""
    if cfg.tie_embeddings:
        return params["embedding"].astype(cfg.compute_dtype).T
    return params["logits_dense"].astype(cfg.compute_dtype)


def head_logits(x: jax.Array, head: jax.Array, softcap=None) -> jax.Array:
    """Final hidden states [b, t, d] times `output_projection` [d, vocab] -> float32 logits,
    soft-capped (Gemma 2) when softcap is set."""
    logits = jnp.einsum("btd,dv->btv", x, head, preferred_element_type=jnp.float32)
    if softcap is not None:
        logits = softcap * jnp.tanh(logits / softcap)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


def init_cache(cfg: DecoderConfig, batch: int, cache_len: int, dtype: Any = None):
    """Zero KV cache: per layer (k, v) of [batch, cache_len, kv_heads, head_dim].

    A list over layers, or one stacked (k, v) with a leading layer axis when scan_layers:
    the structure each `Decoder` call expects. Defaults to the compute dtype.
    """
    dtype = jnp.dtype(dtype or cfg.dtype)
    shape = (batch, cache_len, cfg.num_kv_heads, cfg.head_dim)
    if cfg.scan_layers:
        full = (cfg.num_layers,) + shape
        return (jnp.zeros(full, dtype), jnp.zeros(full, dtype))
    return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.num_layers)]


def cache_logical_axes(cfg: DecoderConfig):
    """Logical axis names of `init_cache`'s pytree (same structure), for sharding it."""
    axes = ("batch", "cache_length", "kv_heads", "head_dim")
    if cfg.scan_layers:
        return (("layers",) + axes, ("layers",) + axes)
    return [(axes, axes) for _ in range(cfg.num_layers)]


def init_params(cfg: DecoderConfig, rng: jax.Array):
    """Boxed (nn.Partitioned) parameters; use `flax.linen.unbox` or partitioning helpers.
    The one place the Decoder is initialised on dummy tokens: `abstract_params` traces it
    under eval_shape, the trainer runs it under jit with the parameters' shardings."""
    return Decoder(cfg).init(rng, jnp.zeros((1, 1), jnp.int32))["params"]


def abstract_params(cfg: DecoderConfig):
    """Boxed ShapeDtypeStructs of the parameters, nothing allocated (`init_params` under
    eval_shape): what `Partitioner.abstract_params` and `sizes.param_shapes` return."""
    return jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))

"""Building blocks of the decoder: norms, RoPE, attention with a KV cache, MLP.

Every parameter is created with `nn.with_logical_partitioning` and every large
activation is constrained with `nn.with_logical_constraint`, so the partitioning rules
(`mathft_jax/models/partitioning.py`) alone decide how the model is sharded.
"""
from __future__ import annotations

from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mathft_jax.models import splash
from mathft_jax.models.config import DecoderConfig

NEG_INF = -1e30  # finite so fully masked rows (padding) give uniform, not NaN, weights
# Attention over a KV cache reads it in blocks of this many slots (`Attention._cache_attention`);
# caches whose length is a multiple of it are read in place.
CACHE_BLOCK = 64
# `jax.nn.dot_product_attention` backend of attention_impl="cudnn" (a GPU-only kernel; the
# tests swap in None, JAX's XLA version, to check the call on CPU).
FUSED_ATTENTION_IMPL = "cudnn"
KVCache = Tuple[jax.Array, jax.Array]  # (keys, values): [batch, cache_len, kv_heads, head_dim]


def param(module: nn.Module, name: str, shape, axes, init, dtype):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def project(module: nn.Module, name: str, spec: str, x, w, dtype, dropout: float = 0.0):
    """einsum(spec, x, w) for the weight `name` of `module`, plus its LoRA update
    (dropout(x) @ a) @ b where the module's `"lora"` collection holds a pair for it
    (models/lora.py; `b` comes scaled). Every projection a LoRA target may name goes
    through here."""
    # jnp.asarray, not astype: qwix intercepts it to cast a quantized weight (QLoRA's base,
    # models/quantization.py), whose astype fails in qwix 0.1.8
    y = jnp.einsum(spec, x, jnp.asarray(w, dtype))
    if not module.has_variable("lora", name):
        return y
    pair = module.get_variable("lora", name)
    x_sub, rest = spec.split(",")
    w_sub, y_sub = rest.split("->")
    w_in = "".join(c for c in w_sub if c in x_sub)
    w_out = w_sub[len(w_in):]
    keep = "".join(c for c in x_sub if c not in w_in)
    if dropout and module.has_rng("lora_dropout"):
        keep_mask = jax.random.bernoulli(module.make_rng("lora_dropout"), 1.0 - dropout, x.shape)
        x = jnp.where(keep_mask, x / (1.0 - dropout), 0).astype(x.dtype)
    h = jnp.einsum(f"{x_sub},{w_in}r->{keep}r", x, pair["a"].astype(dtype))
    return y + jnp.einsum(f"{keep}r,r{w_out}->{y_sub}", h, pair["b"].astype(dtype))


def dense_init(fan_in: int):
    return nn.initializers.normal(stddev=fan_in ** -0.5)


class Norm(nn.Module):
    """RMSNorm or bias-free LayerNorm (PaLM) over the last axis, computed in float32; `axis`
    is that axis's logical name (the model width, or `head_dim` for Qwen3's q/k norms)."""
    cfg: DecoderConfig
    axis: str = "embed"

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        scale_init = nn.initializers.zeros if cfg.norm_scale_offset else nn.initializers.ones
        scale = param(self, "scale", (x.shape[-1],), (self.axis,), scale_init, cfg.weight_dtype)
        xf = x.astype(jnp.float32)
        if cfg.norm == "layernorm":
            xf = xf - jnp.mean(xf, axis=-1, keepdims=True)
        xf = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + cfg.norm_eps)
        y = xf * (scale.astype(jnp.float32) + cfg.norm_scale_offset)
        return y.astype(cfg.compute_dtype)


def rope_frequencies(cfg: DecoderConfig) -> np.ndarray:
    """Inverse frequencies [head_dim // 2], with Llama 3's frequency-dependent scaling."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    rs = cfg.rope_scaling_dict
    if rs:
        kind = rs.get("rope_type", rs.get("type", "llama3"))
        if kind == "llama3":
            factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
            old_len = rs["original_max_position_embeddings"]
            wavelen = 2 * np.pi / inv
            smooth = (old_len / wavelen - lo) / (hi - lo)
            scaled = np.where(wavelen > old_len / lo, inv / factor, inv)
            mid = (1 - smooth) * inv / factor + smooth * inv
            is_mid = (wavelen <= old_len / lo) & (wavelen >= old_len / hi)
            inv = np.where(is_mid, mid, scaled)
        elif kind == "linear":
            inv = inv / rs["factor"]
        else:
            raise ValueError(f"unsupported rope_scaling type {kind!r}")
    return inv.astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotary embedding, half-split layout (as Llama/HF): x [b, t, h, d], positions [b, t]."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [b, t, d/2]
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
    xf = x.astype(jnp.float32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def attention_mask(q_index, k_index, q_segment, k_segment, window: Optional[int]):
    """Boolean [b, 1, 1, tq, tk] mask: causal by index, same segment, optional window.

    Indices are positions in the key/value buffer (the cache slot in decode mode), so the
    same rule serves training (packed or not), prefill and incremental decoding.
    """
    mask = k_index[:, None, :] <= q_index[:, :, None]
    if window is not None:
        mask &= k_index[:, None, :] > q_index[:, :, None] - window
    if q_segment is not None:
        mask &= (q_segment[:, :, None] == k_segment[:, None, :]) & (k_segment[:, None, :] != 0)
    return mask[:, None, None, :, :]


class Attention(nn.Module):
    """Grouped-query causal self-attention (MQA when num_kv_heads == 1) with RoPE.

    Decode mode: `cache=(k, v)` holds `cache_len` slots per sequence; the T new tokens of
    sequence b are written at slots [cache_index[b], cache_index[b] + T) and attend to every
    slot at or before their own. Sequences of a batch may sit at different slots, which is
    how prompts of different lengths share one batch.
    """
    cfg: DecoderConfig
    layer_index: int = 0
    lora_dropout: float = 0.0

    @nn.compact
    def __call__(self, x, positions, segment_ids, cache: Optional[KVCache] = None,
                 cache_index: Optional[jax.Array] = None):
        cfg = self.cfg
        d, h, kvh, hd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        wdt, cdt = cfg.weight_dtype, cfg.compute_dtype
        wq = param(self, "query", (d, h, hd), ("embed", "heads", "head_dim"), dense_init(d), wdt)
        wk = param(self, "key", (d, kvh, hd), ("embed", "kv_heads", "head_dim"), dense_init(d), wdt)
        wv = param(self, "value", (d, kvh, hd), ("embed", "kv_heads", "head_dim"), dense_init(d), wdt)
        wo = param(self, "out", (h, hd, d), ("heads", "head_dim", "embed"), dense_init(h * hd), wdt)
        drop = self.lora_dropout
        q = project(self, "query", "btd,dhk->bthk", x, wq, cdt, drop)
        k = project(self, "key", "btd,dhk->bthk", x, wk, cdt, drop)
        v = project(self, "value", "btd,dhk->bthk", x, wv, cdt, drop)
        if cfg.qkv_bias:
            zeros = nn.initializers.zeros
            q = q + param(self, "query_bias", (h, hd), ("heads", "head_dim"), zeros, wdt).astype(cdt)
            k = k + param(self, "key_bias", (kvh, hd), ("kv_heads", "head_dim"), zeros, wdt).astype(cdt)
            v = v + param(self, "value_bias", (kvh, hd), ("kv_heads", "head_dim"), zeros, wdt).astype(cdt)
        if cfg.qk_norm:  # Qwen3: each head's q and k normalised over head_dim, before RoPE
            q = Norm(cfg, axis="head_dim", name="query_norm")(q)
            k = Norm(cfg, axis="head_dim", name="key_norm")(k)
        inv_freq = rope_frequencies(cfg)
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
        k = nn.with_logical_constraint(k, ("batch", "length", "kv_heads", "head_dim"))
        v = nn.with_logical_constraint(v, ("batch", "length", "kv_heads", "head_dim"))

        b, t = x.shape[:2]
        window = None
        if cfg.sliding_window and self.layer_index % cfg.sliding_window_pattern == 0:
            window = cfg.sliding_window
        new_cache = None
        if cache is not None:
            k_all, v_all = (_write_cache(c, new, cache_index) for c, new in zip(cache, (k, v)))
            k_all = nn.with_logical_constraint(k_all, ("batch", "cache_length", "kv_heads", "head_dim"))
            v_all = nn.with_logical_constraint(v_all, ("batch", "cache_length", "kv_heads", "head_dim"))
            new_cache = (k_all, v_all)
            q_index = cache_index[:, None] + jnp.arange(t)[None, :]
            out = self._cache_attention(q, k_all.astype(cdt), v_all.astype(cdt), q_index, window)
        else:
            index = jnp.broadcast_to(jnp.arange(t)[None, :], (b, t))
            mask = attention_mask(index, index, segment_ids, segment_ids, window)
            # Pallas' TPU kernel: no [t, t] scores in HBM. Rows shorter than its smallest block
            # (initialisation's dummy token) take XLA's.
            if cfg.attention_impl == "splash" and t >= splash.MIN_BLOCK:
                out = splash.attention(q, k, v, segment_ids, scale=self._scale(), window=window,
                                       softcap=cfg.attn_logit_softcap)
            elif cfg.attention_impl == "cudnn" and cfg.attn_logit_softcap is None:
                # segments need the mask; without them is_causal (and the window) say it all
                out = self._fused_attention(q, k, v, None if segment_ids is None else mask, window)
            else:
                out = self._xla_attention(q, k, v, mask)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "head_dim"))
        y = project(self, "out", "bthk,hkd->btd", out, wo, cdt, self.lora_dropout)
        return y, new_cache

    def _scale(self) -> float:
        cfg = self.cfg
        return cfg.query_scale if cfg.query_scale is not None else cfg.head_dim ** -0.5

    def _fused_attention(self, q, k, v, mask, window):
        """cuDNN's flash attention (Hopper and later for head_dim 256): the [t, t] attention
        weights never reach memory, and fully masked causal blocks are skipped.

        Segments (packing) go in as a mask. A padding token (segment 0) may attend to itself
        only: a row with nothing to attend to is not defined for a fused kernel, and padding
        outputs are never read (zero loss weight; no real token attends to padding).
        """
        if mask is not None:  # `attention_mask`'s [b, 1, 1, t, t], plus the diagonal
            mask = mask[:, 0] | jnp.eye(q.shape[1], dtype=bool)  # [b, 1, t, t]
        return jax.nn.dot_product_attention(
            q, k, v, mask=mask, scale=self._scale(), is_causal=True,
            local_window_size=None if window is None else (window - 1, 0),
            implementation=FUSED_ATTENTION_IMPL)

    def _xla_attention(self, q, k, v, mask):
        cfg = self.cfg
        b, t, h, hd = q.shape
        kvh = k.shape[2]
        qg = q.reshape(b, t, kvh, h // kvh, hd)
        logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
        logits = logits * self._scale()
        if cfg.attn_logit_softcap is not None:
            cap = cfg.attn_logit_softcap
            logits = cap * jnp.tanh(logits / cap)
        logits = jnp.where(mask, logits, NEG_INF)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
        return out.reshape(b, t, h, hd)

    def _cache_attention(self, q, k, v, q_index, window):
        """Attention of q [b, t, h, hd] at cache slots q_index [b, t] over the cache k, v
        [b, S, kvh, hd], reading only its filled part: blocks of CACHE_BLOCK slots up to the
        batch's furthest query, in a loop with an online softmax (flash decoding's running
        max, sum and weighted values, in float32).

        Two things follow. A step's attention cost follows the live lengths, not the
        cache's capacity. And the result is the same bit for bit whatever the capacity, the
        bucket a prompt was padded to, or how far other rows of the batch reach: each block
        is one fixed-shape loop body, and a block past a row's own slot is fully masked,
        which leaves its running state exactly unchanged (correction exp(0) = 1, weights
        exp(NEG_INF - max) = 0). A softmax over all S slots is not: XLA:CPU sums in an order
        that depends on S, the logits differ in the last bits, and samples flip (1 of 128
        MATH-length samples between `decoding.generate` and `sampling.engine` before this).
        """
        cfg = self.cfg
        b, t, h, hd = q.shape
        s, kvh = k.shape[1], k.shape[2]
        pad = -s % CACHE_BLOCK
        if pad:  # a copy: callers size caches in whole blocks to avoid it
            k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (k, v))
        qg = q.reshape(b, t, kvh, h // kvh, hd)

        def block(i, state):
            m, total, acc = state
            start = i * CACHE_BLOCK
            kb, vb = (jax.lax.dynamic_slice_in_dim(x, start, CACHE_BLOCK, axis=1) for x in (k, v))
            k_index = jnp.broadcast_to(start + jnp.arange(CACHE_BLOCK)[None, :], (b, CACHE_BLOCK))
            mask = attention_mask(q_index, k_index, None, None, window)[:, 0]  # [b, 1, t, B]
            logits = jnp.einsum("btkgd,bskd->bkgts", qg, kb, preferred_element_type=jnp.float32)
            logits = logits * self._scale()
            if cfg.attn_logit_softcap is not None:
                cap = cfg.attn_logit_softcap
                logits = cap * jnp.tanh(logits / cap)
            logits = jnp.where(mask[:, :, None], logits, NEG_INF)
            m_new = jnp.maximum(m, logits.max(axis=-1))
            probs = jnp.exp(logits - m_new[..., None])
            correction = jnp.exp(m - m_new)
            total = total * correction + probs.sum(axis=-1)
            values = jnp.einsum("bkgts,bskd->bkgtd", probs.astype(v.dtype), vb,
                                preferred_element_type=jnp.float32)
            return m_new, total, acc * correction[..., None] + values

        stats = (b, kvh, h // kvh, t)
        state = (jnp.full(stats, NEG_INF, jnp.float32), jnp.zeros(stats, jnp.float32),
                 jnp.zeros(stats + (hd,), jnp.float32))
        # Trip count from the data, never a constant: XLA would inline a one-trip loop into
        # its surroundings and compile that block differently.
        blocks = jnp.max(q_index) // CACHE_BLOCK + 1
        _, total, acc = jax.lax.fori_loop(0, blocks, block, state)
        out = (acc / total[..., None]).astype(q.dtype)  # [b, kvh, g, t, hd]
        return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)


def _write_cache(cache: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
    """Write new [b, t, ...] into cache [b, S, ...] at per-sequence slot index[b]."""
    def one(c, n, i):
        return jax.lax.dynamic_update_slice_in_dim(c, n.astype(c.dtype), i, axis=0)
    return jax.vmap(one)(cache, new, index)


class Mlp(nn.Module):
    cfg: DecoderConfig
    lora_dropout: float = 0.0

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        d, f = cfg.d_model, cfg.mlp_dim
        wdt, cdt = cfg.weight_dtype, cfg.compute_dtype
        wi = param(self, "wi_0", (d, f), ("embed", "mlp"), dense_init(d), wdt)
        drop = self.lora_dropout
        hidden = project(self, "wi_0", "btd,df->btf", x, wi, cdt, drop)
        if cfg.gated_mlp:
            wg = param(self, "wi_1", (d, f), ("embed", "mlp"), dense_init(d), wdt)
            gate = project(self, "wi_1", "btd,df->btf", x, wg, cdt, drop)
            act = jax.nn.silu if cfg.activation == "swiglu" else _gelu_tanh
            hidden = act(hidden) * gate
        else:
            hidden = _gelu_tanh(hidden) if cfg.activation == "gelu" else jax.nn.relu(hidden)
        hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
        wo = param(self, "wo", (f, d), ("mlp", "embed"), dense_init(f), wdt)
        return project(self, "wo", "btf,fd->btd", hidden, wo, cdt, drop)


def _gelu_tanh(x):
    # The tanh approximation is what PaLM, Gemma ("gelu_pytorch_tanh") and GeGLU use.
    return jax.nn.gelu(x, approximate=True)

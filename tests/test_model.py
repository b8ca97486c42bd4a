"""The decoder: shapes, variants, packing, KV cache, parameter counts and config errors."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mathft_jax.core import gin_utils
from mathft_jax.models import ConfigError, Decoder, DecoderConfig, count_params, init_cache, summary
from mathft_jax.models.decoder import init_params
import flax.linen as nn

TINY = DecoderConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                     head_dim=8, mlp_dim=64, max_seq_len=64)


def _params(cfg, seed=0):
    return nn.unbox(_init(cfg, jax.random.PRNGKey(seed)))


# Jitted: op-by-op (eager) Flax dispatches and compiles every primitive on its own, several
# times slower than one compiled forward on a 2-core machine.
_init = jax.jit(init_params, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("return_hidden",))
def _apply(cfg, params, tokens, **kwargs):
    return Decoder(cfg).apply({"params": params}, tokens, **kwargs)


def _tokens(b, t, vocab, seed=1):
    return jax.random.randint(jax.random.PRNGKey(seed), (b, t), 1, vocab)


@pytest.mark.parametrize("overrides", [
    {},
    {"parallel_block": False, "norm": "layernorm", "activation": "gelu"},
    {"activation": "geglu", "num_kv_heads": 1, "tie_embeddings": False},
    {"num_kv_heads": 4, "qkv_bias": True, "post_block_norms": True, "parallel_block": False,
     "attn_logit_softcap": 50.0, "final_logit_softcap": 30.0, "scale_embeddings": True,
     "norm_scale_offset": 1.0, "sliding_window": 4, "sliding_window_pattern": 2},
])
def test_forward_shapes_and_finite(overrides):
    cfg = dataclasses.replace(TINY, **overrides).validate()
    p = _params(cfg)
    logits = _apply(cfg, p, _tokens(2, 10, cfg.vocab_size))
    assert logits.shape == (2, 10, cfg.vocab_size)
    assert logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()


def test_causal_future_tokens_do_not_change_past_logits():
    p = _params(TINY)
    a = _tokens(1, 12, TINY.vocab_size, seed=3)
    b = a.at[:, 8:].set((a[:, 8:] + 1) % TINY.vocab_size)
    la = _apply(TINY, p, a)
    lb = _apply(TINY, p, b)
    np.testing.assert_allclose(la[:, :8], lb[:, :8], atol=1e-6)
    assert not np.allclose(la[:, 8:], lb[:, 8:])


def test_packed_equals_separate():
    """Two examples packed in one row give each example's own logits."""
    p = _params(TINY)
    ex1, ex2 = _tokens(1, 7, TINY.vocab_size, 4), _tokens(1, 5, TINY.vocab_size, 5)
    packed = jnp.concatenate([ex1, ex2, jnp.zeros((1, 4), jnp.int32)], axis=1)
    seg = jnp.array([[1] * 7 + [2] * 5 + [0] * 4])
    pos = jnp.array([list(range(7)) + list(range(5)) + [0] * 4])
    lp = _apply(TINY, p, packed, positions=pos, segment_ids=seg)
    l1 = _apply(TINY, p, ex1)
    l2 = _apply(TINY, p, ex2)
    np.testing.assert_allclose(lp[:, :7], l1, atol=1e-5)
    np.testing.assert_allclose(lp[:, 7:12], l2, atol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_kv_cache_decode_matches_full_forward(scan):
    cfg = dataclasses.replace(TINY, scan_layers=scan)
    p = _params(cfg)
    toks = _tokens(2, 9, cfg.vocab_size, 6)
    full = _apply(cfg, p, toks)
    cache = init_cache(cfg, 2, 16)
    idx = jnp.zeros((2,), jnp.int32)
    # prefill 5 tokens, then one token at a time
    logits, cache = _apply(cfg, p, toks[:, :5], cache=cache, cache_index=idx)
    np.testing.assert_allclose(logits, full[:, :5], atol=1e-5)
    for t in range(5, 9):
        logits, cache = _apply(cfg, p, toks[:, t:t + 1], cache=cache,
                                           cache_index=jnp.full((2,), t, jnp.int32))
        np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-5)


def test_return_hidden_gives_what_the_head_maps_to_the_logits():
    from mathft_jax.models.decoder import head_logits, output_projection
    for cfg in (TINY, dataclasses.replace(TINY, tie_embeddings=False, final_logit_softcap=3.0)):
        p, toks = _params(cfg), _tokens(2, 6, cfg.vocab_size)
        hidden = _apply(cfg, p, toks, return_hidden=True)
        assert hidden.shape == (2, 6, cfg.d_model)
        np.testing.assert_allclose(
            head_logits(hidden, output_projection(p, cfg), cfg.final_logit_softcap),
            _apply(cfg, p, toks), atol=1e-6)
    with pytest.raises(ValueError, match="return_hidden is for training losses"):
        _apply(TINY, _params(TINY), toks, cache=init_cache(TINY, 2, 8),
                            cache_index=jnp.zeros((2,), jnp.int32), return_hidden=True)


@pytest.mark.parametrize("overrides", [
    {},
    {"num_kv_heads": 1, "sliding_window": 3, "sliding_window_pattern": 2, "query_scale": 0.2},
])
def test_fused_attention_call_matches_xla_attention(monkeypatch, overrides):
    """attention_impl='cudnn' calls jax.nn.dot_product_attention; with its XLA backend (the
    cuDNN kernel needs a GPU) the logits of every real token equal our own attention's,
    packed or not."""
    from mathft_jax.models import layers
    monkeypatch.setattr(layers, "FUSED_ATTENTION_IMPL", None)
    cfg = dataclasses.replace(TINY, **overrides).validate()
    fused = dataclasses.replace(cfg, attention_impl="cudnn")  # float32: only XLA's backend takes it
    p, toks = _params(cfg), _tokens(2, 16, cfg.vocab_size, seed=7)
    seg = jnp.array([[1] * 7 + [2] * 6 + [0] * 3, [1] * 16])
    pos = jnp.array([list(range(7)) + list(range(6)) + [0] * 3, list(range(16))])
    for kw in ({}, {"segment_ids": seg, "positions": pos}):
        ref = _apply(cfg, p, toks, **kw)
        out = _apply(fused, p, toks, **kw)
        real = np.asarray(seg != 0) if kw else np.ones((2, 16), bool)
        np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref)[real], atol=2e-5)
        assert np.isfinite(np.asarray(out)).all()  # padding rows too


def test_scan_and_remat_match_unrolled():
    cfg = dataclasses.replace(TINY, scan_layers=True)
    p = _params(cfg)
    toks = _tokens(2, 8, cfg.vocab_size)
    # Unstack the scanned params into layers_i and compare with the unrolled model.
    unrolled = {k: v for k, v in p.items() if k != "layers"}
    for i in range(cfg.num_layers):
        unrolled[f"layers_{i}"] = jax.tree_util.tree_map(lambda x: x[i], p["layers"]["layer"])
    ref = _apply(TINY, unrolled, toks)
    np.testing.assert_allclose(_apply(cfg, p, toks), ref, atol=1e-5)

    def loss(params, c):
        return jnp.mean(_apply(c, params, toks) ** 2)
    remat = dataclasses.replace(TINY, remat_policy="full")
    grad = jax.jit(jax.grad(loss), static_argnums=1)
    g1 = grad(unrolled, TINY)
    g2 = grad(unrolled, remat)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g1, g2)


PUBLISHED = {"palm_8b": 8.63e9, "palm_62b": 62.50e9, "palm_540b": 540.35e9}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_palm_param_counts_within_one_percent(name):
    gin_utils.parse_gin([f"gin_configs/models/{name}.gin"])
    cfg = DecoderConfig()
    n = count_params(cfg)
    assert abs(n - PUBLISHED[name]) / PUBLISHED[name] < 0.01, (name, n)
    s = summary(cfg)
    # 6N + 12 L H Q T with N within 1% of the count and the attention term on top.
    assert s["flops_per_token"] > 6 * n
    assert s["kv_cache_bytes_per_token"] == 2 * cfg.num_layers * cfg.head_dim * 2  # MQA, bf16


@pytest.mark.parametrize("overrides,field", [
    ({"num_heads": 6, "num_kv_heads": 4}, "num_heads"),
    ({"head_dim": None, "d_model": 30, "num_heads": 4}, "d_model"),
    ({"activation": "swish"}, "activation"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"dtype": "float77"}, "dtype"),
    ({"attention_impl": "cudnn", "dtype": "float32"}, "attention_impl"),
])
def test_bad_configs_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=f"DecoderConfig.{field}"):
        dataclasses.replace(TINY, **overrides).validate()


def test_mesh_incompatible_config_names_the_field():
    cfg = dataclasses.replace(TINY, num_heads=6, num_kv_heads=1)
    with pytest.raises(ConfigError, match="DecoderConfig.num_heads=6 is not divisible"):
        cfg.validate({"data": 1, "fsdp": 1, "tensor": 4})
    with pytest.raises(ConfigError, match="DecoderConfig.vocab_size=66 is not divisible"):
        dataclasses.replace(TINY, vocab_size=66).validate({"data": 1, "fsdp": 1, "tensor": 4})


def test_models_cli_prints_json(tmp_path):
    import json
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "mathft_jax.models",
                          "--gin_file=gin_configs/models/palm_62b.gin"],
                         capture_output=True, text=True, check=True, cwd=gin_utils.REPO_ROOT)
    d = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"params", "flops_per_token", "kv_cache_bytes_per_token"} <= d.keys()
    assert abs(d["params"] - 62.50e9) / 62.50e9 < 0.01

"""attention_impl='splash' (Pallas' TPU kernel, run here in its interpreter) computes what
XLA's attention computes: outputs and gradients, packed segments, GQA and MQA, a window,
soft-capping, and on a mesh (shard_map over rows and heads)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mathft_jax.models import decoder, splash
from mathft_jax.models.config import DecoderConfig
from mathft_jax.models.partitioning import Partitioner, make_mesh

BASE = dict(vocab_size=128, num_layers=2, d_model=64, num_heads=4, head_dim=16, mlp_dim=128,
            max_seq_len=128)


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    monkeypatch.setattr(splash, "INTERPRET", True)


def _batch(b=2, t=128):
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 128, (b, t)).astype(np.int32)
    segments = np.ones((b, t), np.int32)
    segments[0, 50:] = 2  # two packed examples in row 0
    segments[1, 100:] = 0  # padding at the end of row 1
    positions = np.where(segments[0:1] == 2, np.arange(t) - 50, np.arange(t)).repeat(b, 0)
    return tokens, positions.astype(np.int32), segments


def _loss_and_grads(cfg, params, tokens, positions, segments):
    def loss(p):
        logits = decoder.Decoder(cfg).apply({"params": p}, tokens, positions, segments)
        keep = (segments > 0)[..., None]
        return jnp.sum(jnp.where(keep, logits, 0.0) ** 2) / 1e3, logits
    (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return value, logits, grads


@pytest.mark.parametrize("extra", [dict(num_kv_heads=1), dict(num_kv_heads=2),
                                   dict(num_kv_heads=4, sliding_window=32,
                                        attn_logit_softcap=20.0)],
                         ids=["mqa", "gqa", "mha-window-softcap"])
def test_splash_matches_xla_attention(extra):
    xla = DecoderConfig(**BASE, **extra)
    params = jax.tree_util.tree_map(jnp.asarray, decoder.init_params(xla, jax.random.PRNGKey(1)))
    params = __import__("flax").linen.unbox(params)
    tokens, positions, segments = _batch()
    want = _loss_and_grads(xla, params, tokens, positions, segments)
    got = _loss_and_grads(xla.replace(attention_impl="splash"), params, tokens, positions,
                          segments)
    real = segments > 0
    np.testing.assert_allclose(np.asarray(got[1])[real], np.asarray(want[1])[real],
                               rtol=2e-4, atol=2e-4)
    for g, w in zip(jax.tree_util.tree_leaves(got[2]), jax.tree_util.tree_leaves(want[2])):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-3, atol=2e-4)


def test_splash_on_a_mesh_matches_one_device():
    cfg = DecoderConfig(**BASE, num_kv_heads=1, attention_impl="splash")
    params = __import__("flax").linen.unbox(decoder.init_params(cfg, jax.random.PRNGKey(2)))
    tokens, positions, segments = _batch(b=4)
    alone = decoder.Decoder(cfg).apply({"params": params}, tokens, positions, segments)
    partitioner = Partitioner.create(cfg, make_mesh(data=2, fsdp=2, tensor=2))
    with partitioner.context():
        sharded = jax.jit(lambda p, *a: decoder.Decoder(cfg).apply({"params": p}, *a))(
            params, *(partitioner.to_global(x) for x in (tokens, positions, segments)))
    real = segments > 0
    np.testing.assert_allclose(np.asarray(sharded)[real], np.asarray(alone)[real],
                               rtol=2e-4, atol=2e-4)


def test_splash_needs_whole_blocks():
    assert splash.block_size(1024) == 512 and splash.block_size(384) == 128
    with pytest.raises(ValueError, match="multiple of 128"):
        splash.block_size(100)

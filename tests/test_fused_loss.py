"""The fused, chunked output projection + cross-entropy equals the plain one, and saves memory."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mathft_jax import partitioning
from mathft_jax.fused_loss import fused_head_cross_entropy
from mathft_jax.models import Decoder, DecoderConfig
from mathft_jax.models.decoder import init_params
from mathft_jax.objectives import lm_objective

CFG = DecoderConfig(vocab_size=96, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                    head_dim=8, mlp_dim=64, max_seq_len=32, dtype="float32")
VARIANTS = {
    "untied": CFG,
    "tied+softcap": CFG.replace(tie_embeddings=True, final_logit_softcap=5.0),
}


def _batch(b=4, t=16, seed=0):
    rng = np.random.RandomState(seed)
    tokens = rng.randint(1, CFG.vocab_size, (b, t + 1)).astype(np.int32)
    weights = (rng.rand(b, t) > 0.3).astype(np.float32)  # a masked prompt, roughly
    return {"decoder_input_tokens": jnp.asarray(tokens[:, :-1]),
            "decoder_target_tokens": jnp.asarray(tokens[:, 1:]),
            "decoder_loss_weights": jnp.asarray(weights)}


def _loss_and_grads(cfg, params, batch, **kw):
    def loss(p):
        sums = lm_objective(Decoder(cfg), p, batch, **kw)
        return sums["loss"] / sums["weight"], sums
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("chunk", [4, 16])
def test_fused_equals_full_logits_in_sums_and_gradients(name, chunk):
    cfg = VARIANTS[name]
    params = jax.tree_util.tree_map(lambda x: x * 2.0, nn.unbox(init_params(cfg, jax.random.PRNGKey(1))))
    batch = _batch()
    (ref_loss, ref), ref_grads = _loss_and_grads(cfg, params, batch, z_loss=1e-2)
    (loss, sums), grads = _loss_and_grads(cfg, params, batch, z_loss=1e-2, loss_chunk=chunk)
    assert set(sums) == set(ref)
    for k in ref:
        np.testing.assert_allclose(sums[k], ref[k], rtol=2e-6, err_msg=k)
    assert float(ref["z_loss"]) > 0 and 0 < float(ref["correct"]) < float(ref["weight"])
    flat_ref = jax.tree_util.tree_leaves_with_path(ref_grads)
    flat = jax.tree_util.tree_leaves(grads)
    for (path, r), g in zip(flat_ref, flat):
        np.testing.assert_allclose(g, r, atol=2e-6, rtol=1e-4, err_msg=jax.tree_util.keystr(path))
    head = "embedding" if cfg.tie_embeddings else "logits_dense"
    assert float(jnp.abs(grads[head]).max()) > 1e-3  # the head's gradient is not empty


def test_fused_on_a_2x2x2_mesh_equals_one_device():
    assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
    params = nn.unbox(init_params(CFG, jax.random.PRNGKey(2)))
    batch = _batch(b=8, seed=3)
    (_, ref), ref_grads = _loss_and_grads(CFG, params, batch, loss_chunk=8)
    mesh = partitioning.make_mesh(data=2, fsdp=2, tensor=2)
    rules = partitioning.rules_for(CFG, mesh)
    sharded = jax.device_put(params, partitioning.param_shardings(CFG, mesh, rules))
    with partitioning.mesh_context(mesh, rules):
        (_, sums), grads = _loss_and_grads(CFG, sharded, batch, loss_chunk=8)
    np.testing.assert_allclose(sums["loss"], ref["loss"], rtol=1e-5)
    for g, r in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-4)


def test_chunk_must_divide_the_sequence():
    x = jnp.zeros((2, 12, 8))
    with pytest.raises(ValueError, match="loss chunk 5 must divide the sequence length 12"):
        fused_head_cross_entropy(x, jnp.zeros((8, 16)), jnp.zeros((2, 12), jnp.int32),
                                 jnp.ones((2, 12)), chunk=5)


def test_fused_loss_needs_far_less_memory_than_full_logits():
    # A 32k vocabulary: the full logits of 4 x 512 tokens are 268 MB in float32.
    cfg = DecoderConfig(vocab_size=32768, num_layers=1, d_model=64, num_heads=2, num_kv_heads=1,
                        head_dim=32, mlp_dim=128, max_seq_len=512, dtype="float32")
    params = jax.eval_shape(lambda: nn.unbox(init_params(cfg, jax.random.PRNGKey(0))))
    batch = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct((4, 512), x.dtype), _batch(t=8))

    def temp_bytes(**kw):
        fn = jax.jit(jax.grad(lambda p: lm_objective(Decoder(cfg), p, batch_arrays(), **kw)["loss"]))
        return fn.lower(params).compile().memory_analysis().temp_size_in_bytes

    def batch_arrays():
        return {k: jnp.zeros(v.shape, v.dtype) for k, v in batch.items()}

    full, fused = temp_bytes(), temp_bytes(loss_chunk=64)
    logits_bytes = 4 * 512 * 32768 * 4
    assert full > logits_bytes, (full, logits_bytes)
    assert fused < full / 4, (fused, full)  # measured here: 120 MB against 573 MB

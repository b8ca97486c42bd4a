"""Sharding over 8 fake CPU devices (data=2, fsdp=2, tensor=2) matches one device."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mathft_jax.models import partitioning
from mathft_jax.models import Decoder, DecoderConfig
from mathft_jax.models.decoder import init_params

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")

CFG = DecoderConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                    head_dim=8, mlp_dim=64, max_seq_len=64)


def _loss(params, cfg, tokens):
    logits = Decoder(cfg).apply({"params": params}, tokens[:, :-1])
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))


@pytest.mark.slow
@pytest.mark.parametrize("kv_heads", [1, 2])
def test_sharded_logits_and_grads_match_single_device(kv_heads):
    cfg = dataclasses.replace(CFG, num_kv_heads=kv_heads)
    params = nn.unbox(init_params(cfg, jax.random.PRNGKey(0)))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (8, 12), 0, cfg.vocab_size)

    ref_logits = jax.jit(lambda p, t: Decoder(cfg).apply({"params": p}, t))(params, tokens)
    ref_grad = jax.jit(jax.grad(_loss), static_argnums=1)(params, cfg, tokens)

    partitioner = partitioning.Partitioner.create(
        cfg, partitioning.make_mesh(data=2, fsdp=2, tensor=2))
    p_sh = partitioner.param_shardings(cfg)
    b_sh = partitioner.batch_sharding
    with partitioner.context():
        sp = jax.device_put(params, p_sh)
        st = jax.device_put(tokens, b_sh)
        logits = jax.jit(lambda p, t: Decoder(cfg).apply({"params": p}, t))(sp, st)
        grad = jax.jit(jax.grad(_loss), static_argnums=1, out_shardings=p_sh)(sp, cfg, st)

    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), atol=1e-5)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5),
        grad, ref_grad)

    # The parameters really are sharded as the rules say.
    layer = sp["layers_0"]
    assert sp["embedding"].sharding.spec == P("tensor", "fsdp")
    assert layer["mlp"]["wi_0"].sharding.spec == P("fsdp", "tensor")
    assert layer["mlp"]["wo"].sharding.spec == P("tensor", "fsdp")
    assert layer["attention"]["query"].sharding.spec == P("fsdp", "tensor", None)
    assert layer["attention"]["out"].sharding.spec == P("tensor", None, "fsdp")
    kv_spec = layer["attention"]["key"].sharding.spec
    assert kv_spec == (P("fsdp", "tensor", None) if kv_heads == 2 else P("fsdp", None, None))
    # Each device holds a quarter (fsdp x tensor) of an MLP kernel.
    shard = layer["mlp"]["wi_0"].addressable_shards[0].data
    assert shard.shape == (cfg.d_model // 2, cfg.mlp_dim // 2)
    assert grad["layers_0"]["mlp"]["wi_0"].sharding.spec == P("fsdp", "tensor")


def test_mesh_minus_one_and_errors():
    assert partitioning.mesh_shape(8, data=2, fsdp=-1, tensor=2) == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ValueError, match="at most one"):
        partitioning.mesh_shape(8, data=-1, fsdp=-1)
    with pytest.raises(ValueError, match="needs 6 devices"):
        partitioning.mesh_shape(8, data=3, fsdp=2, tensor=1)


def test_batch_must_divide_data_axes():
    partitioner = partitioning.Partitioner.create(
        CFG, partitioning.make_mesh(data=2, fsdp=2, tensor=2))
    with pytest.raises(ValueError, match="divisible by data\\*fsdp=4"):
        partitioner.check_batch_divisible(6)

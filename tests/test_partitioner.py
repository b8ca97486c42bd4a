"""The Partitioner: one object for the mesh and the logical rules, on 8 fake CPU devices."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mathft_jax.models import partitioning
from mathft_jax.models import DecoderConfig
from mathft_jax.models.decoder import init_params
from mathft_jax.models.partitioning import NO_MESH, Partitioner

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")

CFG = DecoderConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4, num_kv_heads=1,
                    head_dim=8, mlp_dim=64, max_seq_len=64)


@pytest.fixture(scope="module")
def eight():
    return Partitioner.create(CFG, partitioning.make_mesh(data=2, fsdp=2, tensor=2))


def _constrained_spec(partitioner):
    """The sharding a logical constraint gives an activation inside jit, under the context."""
    fn = jax.jit(lambda x: nn.with_logical_constraint(x * 2, ("batch", "length")))
    with partitioner.context():
        return fn(jnp.ones((8, 4))).sharding


def test_create_resolves_the_rules_for_the_config(eight):
    assert dict(eight.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    rules = dict(eight.rules)
    assert rules["kv_heads"] is None  # one KV head does not split over tensor=2
    assert rules["heads"] == "tensor" and rules["batch"] == ("data", "fsdp")
    assert Partitioner.create(CFG.replace(num_kv_heads=2), eight.mesh).rules == \
        partitioning.DEFAULT_RULES
    assert eight == Partitioner.create(CFG, eight.mesh) and hash(eight) == hash(
        Partitioner.create(CFG, eight.mesh))


def test_create_defaults_to_the_gin_mesh():
    assert dict(Partitioner.create(CFG).mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}


def test_context_shards_constraints_on_a_mesh_and_is_a_no_op_without(eight):
    assert _constrained_spec(eight).is_equivalent_to(eight.batch_sharding, 2)
    out = _constrained_spec(NO_MESH)
    assert len(out.device_set) == 1  # no mesh: one device, nothing to shard


def test_batch_shards_and_divisibility(eight):
    assert eight.batch_shards == 4 and NO_MESH.batch_shards == 1
    eight.check_batch_divisible(8)
    NO_MESH.check_batch_divisible(7)
    with pytest.raises(ValueError, match=r"infer.slots=6 must be divisible by data\*fsdp=4"):
        eight.check_batch_divisible(6, "infer.slots")
    assert eight.batch_sharding == NamedSharding(eight.mesh, P(("data", "fsdp"), None))
    assert eight.replicated == NamedSharding(eight.mesh, P())
    with pytest.raises(ValueError, match="no mesh"):
        NO_MESH.batch_sharding  # noqa: B018


def test_to_global_and_to_host_round_trip(eight):
    x = np.arange(8 * 3, dtype=np.int32).reshape(8, 3)
    sharded = eight.to_global(x)
    assert sharded.sharding.spec == P(("data", "fsdp"), None)
    assert sharded.addressable_shards[0].data.shape == (2, 3)  # a quarter of the rows
    np.testing.assert_array_equal(eight.to_host(sharded), x)
    whole = eight.to_global(x, sharded=False)
    assert whole.sharding.spec == P() and whole.addressable_shards[0].data.shape == (8, 3)
    np.testing.assert_array_equal(eight.to_host(whole), x)
    scalar = eight.to_global(np.int32(5))  # no batch axis: replicated
    assert scalar.sharding.spec == P() and int(eight.to_host(scalar)) == 5
    local = NO_MESH.to_global(x)
    assert len(local.devices()) == 1
    np.testing.assert_array_equal(NO_MESH.to_host(local), x)


def test_param_targets_carry_the_rules_shardings(eight):
    targets = eight.param_targets(CFG)
    shardings = eight.param_shardings(CFG)
    layer = targets["layers_0"]
    assert layer["mlp"]["wi_0"].sharding.spec == P("fsdp", "tensor")
    assert layer["attention"]["query"].sharding.spec == P("fsdp", "tensor", None)
    assert layer["attention"]["key"].sharding.spec == P("fsdp", None, None)  # kv replicated
    assert targets["embedding"].sharding.spec == P("tensor", "fsdp")
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda t, s: t.sharding == s, targets, shardings))
    # without a mesh: every parameter on one device
    one = NO_MESH.param_targets(CFG)
    assert {len(t.sharding.device_set) for t in jax.tree_util.tree_leaves(one)} == {1}


def test_abstract_params_are_the_real_init_shapes(eight):
    abstract = nn.unbox(eight.abstract_params(CFG))
    real = nn.unbox(init_params(CFG, jax.random.PRNGKey(3)))
    assert jax.tree_util.tree_structure(abstract) == jax.tree_util.tree_structure(real)
    jax.tree_util.tree_map(lambda a, r: (a.shape, a.dtype) == (r.shape, r.dtype) or
                           pytest.fail(f"{a} != {r.shape} {r.dtype}"), abstract, real)
    targets = eight.param_targets(CFG)
    jax.tree_util.tree_map(lambda a, t: (a.shape, a.dtype) == (t.shape, t.dtype) or
                           pytest.fail(f"{a} != {t}"), abstract, targets)
    placed = jax.device_put(real, eight.param_shardings(CFG))
    assert placed["layers_1"]["mlp"]["wo"].addressable_shards[0].data.shape == (32, 16)


def test_shardings_like_params_follow_the_parameters(eight):
    params = nn.unbox(eight.abstract_params(CFG))
    p_sh = eight.param_shardings(CFG)
    opt_like = {"count": jax.ShapeDtypeStruct((), jnp.int32), "mu": params,
                "row": {"layers_0": {"mlp": {"wi_0": jax.ShapeDtypeStruct((32,), jnp.float32)}}}}
    sh = eight.shardings_like_params(opt_like, p_sh, params)
    assert sh["count"] == eight.replicated
    assert sh["mu"]["layers_0"]["mlp"]["wi_0"] == p_sh["layers_0"]["mlp"]["wi_0"]
    assert sh["row"]["layers_0"]["mlp"]["wi_0"] == eight.replicated  # other shape: replicated

"""The device mesh (data, fsdp, tensor) and the logical-axis rules that shard the model.

T5X/MaxText style: modules name their axes logically (`embed`, `mlp`, `heads`, ...);
the rules below alone map them onto mesh axes. Rules are ordered: a mesh axis already
used by an earlier dimension of the same array is skipped, which is why activations
`[batch, length, embed]` shard batch over (data, fsdp) and leave embed whole, while the
parameter `[embed, mlp]` shards embed over fsdp (ZeRO-3-style) and mlp over tensor.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mathft_jax.models.config import DecoderConfig

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

DEFAULT_RULES: Tuple[Tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("length", None),
    ("cache_length", None),
    ("head_dim", None),
    ("layers", None),
)


def mesh_shape(num_devices: int, data: int = 1, fsdp: int = -1, tensor: int = 1) -> dict:
    """Resolve one -1 entry to "the rest of the devices"; check the product."""
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {sizes}")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(f"mesh {sizes}: {num_devices} devices are not divisible by {fixed}")
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, "
                         f"have {num_devices}")
    return sizes


@gin.configurable
def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              dcn_data: int = 1, dcn_fsdp: int = 1, dcn_tensor: int = 1,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A Mesh over all (or the given) devices with axes (data, fsdp, tensor).

    The ICI sizes (data, fsdp, tensor) are per slice; with several slices (TPU multislice)
    the dcn_* sizes say how the slices tile each axis, and the mesh is built with
    `create_hybrid_device_mesh` so that only the DCN axes cross slice boundaries.
    """
    devices = list(devices if devices is not None else jax.devices())
    dcn = (dcn_data, dcn_fsdp, dcn_tensor)
    num_slices = math.prod(dcn)
    if num_slices > 1:
        from jax.experimental import mesh_utils
        per_slice = mesh_shape(len(devices) // num_slices, data, fsdp, tensor)
        arr = mesh_utils.create_hybrid_device_mesh(
            [per_slice[a] for a in MESH_AXES], list(dcn), devices)
        return Mesh(arr, MESH_AXES)
    sizes = mesh_shape(len(devices), data, fsdp, tensor)
    shape = [sizes[a] for a in MESH_AXES]
    try:
        from jax.experimental import mesh_utils
        arr = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
        arr = np.asarray(devices).reshape(shape)
    return Mesh(arr, MESH_AXES)


def rules_for(cfg: DecoderConfig, mesh: Mesh) -> Tuple[Tuple[str, Any], ...]:
    """DEFAULT_RULES, checked against the model, with kv_heads replicated where the
    tensor axis does not divide them (multi-query attention has a single KV head)."""
    cfg.validate(dict(mesh.shape))
    tensor = mesh.shape["tensor"]
    rules = list(DEFAULT_RULES)
    if cfg.num_kv_heads % tensor:
        rules = [(k, v) if k != "kv_heads" else ("kv_heads", None) for k, v in rules]
    return tuple(rules)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules):
    """Trace and run under this mesh and these rules (for nn.with_logical_constraint)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def logical_to_shardings(logical_tree, mesh: Mesh, rules):
    """Tree of logical PartitionSpecs (or boxed values) -> tree of NamedShardings."""
    specs = nn.get_partition_spec(logical_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def abstract_params(cfg: DecoderConfig):
    """Boxed ShapeDtypeStructs of the parameters (nothing allocated)."""
    from mathft_jax.models.decoder import init_params
    return jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))


def param_shardings(cfg: DecoderConfig, mesh: Mesh, rules):
    """NamedSharding of every parameter, from its logical axis names and the rules."""
    return logical_to_shardings(abstract_params(cfg), mesh, rules)


def with_shardings(tree, shardings):
    """ShapeDtypeStructs of `tree`'s leaves carrying `shardings` (restore and jit targets)."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def param_targets(cfg: DecoderConfig, mesh: Optional[Mesh] = None, rules=None):
    """Shape, dtype and NamedSharding of every parameter: where a restore or an import
    places each tensor, so a model never exists as an unsharded host copy (default: one
    device)."""
    if mesh is None:
        mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), MESH_AXES)
    rules = rules if rules is not None else rules_for(cfg, mesh)
    boxed = abstract_params(cfg)
    return with_shardings(nn.unbox(boxed), logical_to_shardings(boxed, mesh, rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """[batch, length] arrays: batch split over (data, fsdp), length whole."""
    return NamedSharding(mesh, P(BATCH_AXES, None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def tree_shardings_like(abstract_tree, params_shardings, params_abstract, mesh: Mesh):
    """Shardings for a tree (e.g. optimizer state) whose leaves mirror parameters.

    A leaf whose key path ends with a parameter's path and has that parameter's shape
    takes the parameter's sharding (Adam's mu and nu); anything else (step counts,
    Adafactor's factored row/column statistics) is small and replicated.
    """
    by_path = {}
    for (path, leaf), sh in zip(jax.tree_util.tree_flatten_with_path(params_abstract)[0],
                                jax.tree_util.tree_leaves(params_shardings)):
        by_path[_path_keys(path)] = (tuple(leaf.shape), sh)

    def pick(path, leaf):
        keys = _path_keys(path)
        for start in range(len(keys)):
            hit = by_path.get(keys[start:])
            if hit is not None and hit[0] == tuple(getattr(leaf, "shape", ())):
                return hit[1]
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(pick, abstract_tree)


def _path_keys(path) -> tuple:
    out = []
    for k in path:
        name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", None)))
        if name not in ("value",):  # nn.Partitioned boxes add a ".value" step
            out.append(str(name))
    return tuple(out)


def batch_shards(mesh: Optional[Mesh]) -> int:
    """How many ways a batch is split (data x fsdp): batch sizes must divide by it."""
    return 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]


def to_global(x: np.ndarray, mesh: Optional[Mesh], sharded: bool = True) -> jax.Array:
    """Host array -> global array, batch-sharded over (data, fsdp) on its first axis, or
    replicated. Every process holds the same host array and transfers only its own
    devices' shards, so the result is the same whatever the number of processes."""
    if mesh is None:
        return jax.numpy.asarray(x)
    spec = P(BATCH_AXES, *([None] * (x.ndim - 1))) if x.ndim and sharded else P()
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda index: x[index])


def check_batch_divisible(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    n = batch_shards(mesh)
    if batch_size % n:
        raise ValueError(f"{what}={batch_size} must be divisible by data*fsdp={n} of the mesh")

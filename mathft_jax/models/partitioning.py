"""The device mesh (data, fsdp, tensor) and the logical-axis rules that shard the model.

T5X/MaxText style: modules name their axes logically (`embed`, `mlp`, `heads`, ...);
the rules below alone map them onto mesh axes. Rules are ordered: a mesh axis already
used by an earlier dimension of the same array is skipped, which is why activations
`[batch, length, embed]` shard batch over (data, fsdp) and leave embed whole, while the
parameter `[embed, mlp]` shards embed over fsdp (ZeRO-3-style) and mlp over tensor.

A `Partitioner` holds the mesh and the rules together, and is what the rest of the package
passes around (`Partitioner.create(cfg)` in every entry point).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mathft_jax.models import decoder
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
    ("lora_rank", None),  # LoRA adapters' rank axis (models/lora.py): small, kept whole
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


def with_shardings(tree, shardings):
    """ShapeDtypeStructs of `tree`'s leaves carrying `shardings` (restore and jit targets)."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


@dataclasses.dataclass(frozen=True)
class Partitioner:
    """The mesh and the logical-axis rules, passed as one object (T5X's name for it).

    `Partitioner.create(cfg)` is what every entry point builds (the mesh from `make_mesh.*`
    in gin, the rules from `rules_for`); `Partitioner()` has no mesh: one device, no
    sharding constraints, arrays placed by JAX's default (what a test or a script on one
    device wants). It gives the context to trace and run in, host <-> global arrays, and
    the shardings of parameters and batches.
    """
    mesh: Optional[Mesh] = None
    rules: Tuple[Tuple[str, Any], ...] = ()

    @classmethod
    def create(cls, cfg: DecoderConfig, mesh: Optional[Mesh] = None) -> "Partitioner":
        """On `mesh` (default: `make_mesh()`, configured by gin), rules checked against cfg."""
        mesh = mesh if mesh is not None else make_mesh()
        return cls(mesh, rules_for(cfg, mesh))

    @classmethod
    def single_device(cls, cfg: DecoderConfig) -> "Partitioner":
        """On a 1x1x1 mesh over the first device (where a meshless one places parameters)."""
        return cls.create(cfg, Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), MESH_AXES))

    # ------------------------------------------------------------------ tracing and running

    def context(self):
        """Trace and run under this mesh and these rules, so `nn.with_logical_constraint`
        shards; a no-op without a mesh."""
        if self.mesh is None:
            return contextlib.nullcontext()
        return _mesh_context(self.mesh, self.rules)

    # ------------------------------------------------------------------ batches

    @property
    def batch_shards(self) -> int:
        """How many ways a batch is split (data x fsdp): batch sizes must divide by it."""
        return 1 if self.mesh is None else self.mesh.shape["data"] * self.mesh.shape["fsdp"]

    def check_batch_divisible(self, batch_size: int, what: str = "batch_size") -> None:
        if batch_size % self.batch_shards:
            raise ValueError(f"{what}={batch_size} must be divisible by data*fsdp="
                             f"{self.batch_shards} of the mesh")

    @property
    def batch_sharding(self) -> NamedSharding:
        """[batch, length] arrays: batch split over (data, fsdp), length whole."""
        return NamedSharding(self._need_mesh(), P(BATCH_AXES, None))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self._need_mesh(), P())

    def to_global(self, x: np.ndarray, sharded: bool = True) -> jax.Array:
        """Host array -> global array, batch-sharded over (data, fsdp) on its first axis, or
        replicated. Every process holds the same host array and transfers only its own
        devices' shards, so the result is the same whatever the number of processes."""
        if self.mesh is None:
            return jax.numpy.asarray(x)
        spec = P(BATCH_AXES, *([None] * (x.ndim - 1))) if x.ndim and sharded else P()
        return jax.make_array_from_callback(x.shape, NamedSharding(self.mesh, spec),
                                            lambda index: x[index])

    @staticmethod
    def to_host(x: jax.Array) -> np.ndarray:
        """Global array -> the whole host array, on every process (the host gather)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    # ------------------------------------------------------------------ parameters

    # Boxed ShapeDtypeStructs of the parameters: `init_params` (the one place the Decoder is
    # initialised on dummy tokens) under eval_shape; nothing allocated.
    abstract_params = staticmethod(decoder.abstract_params)

    def shardings(self, logical_tree):
        """Tree of logical PartitionSpecs (or boxed values) -> tree of NamedShardings."""
        specs = nn.get_partition_spec(logical_tree)
        return nn.logical_to_mesh_sharding(specs, self._need_mesh(), self.rules)

    def param_shardings(self, cfg: DecoderConfig):
        """NamedSharding of every parameter, from its logical axis names and the rules
        (without a mesh: all on one device)."""
        return self._placing(cfg).shardings(self.abstract_params(cfg))

    def param_targets(self, cfg: DecoderConfig):
        """Shape, dtype and NamedSharding of every parameter: where a restore or an import
        places each tensor, so a model never exists as an unsharded host copy (without a
        mesh: one device)."""
        boxed = self.abstract_params(cfg)
        return with_shardings(nn.unbox(boxed), self._placing(cfg).shardings(boxed))

    def shardings_like_params(self, abstract_tree, params_shardings, params_abstract):
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
            return self.replicated

        return jax.tree_util.tree_map_with_path(pick, abstract_tree)

    # ------------------------------------------------------------------ helpers

    def _need_mesh(self) -> Mesh:
        if self.mesh is None:
            raise ValueError("this Partitioner has no mesh (Partitioner.create(cfg) makes one)")
        return self.mesh

    def _placing(self, cfg: DecoderConfig) -> "Partitioner":
        """Where parameters go: this mesh, or one device without one."""
        return self if self.mesh is not None else Partitioner.single_device(cfg)


NO_MESH = Partitioner()  # one device, no sharding: the default of functions taking a partitioner


@contextlib.contextmanager
def _mesh_context(mesh: Mesh, rules):
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def _path_keys(path) -> tuple:
    out = []
    for k in path:
        name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", None)))
        if name not in ("value",):  # nn.Partitioned boxes add a ".value" step
            out.append(str(name))
    return tuple(out)

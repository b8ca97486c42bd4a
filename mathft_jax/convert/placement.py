"""Where parameters go: the target shape, dtype and NamedSharding of every parameter.

Import and checkpoint reading both place tensors straight into this layout, so a model
never exists as an unsharded host copy. Without a mesh everything lives on one device.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from mathft_jax import partitioning
from mathft_jax.models.config import DecoderConfig


def single_device_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), partitioning.MESH_AXES)


def param_targets(cfg: DecoderConfig, mesh: Optional[Mesh] = None, rules=None):
    """Tree of jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding) per parameter."""
    mesh = mesh if mesh is not None else single_device_mesh()
    rules = rules if rules is not None else partitioning.rules_for(cfg, mesh)
    boxed = partitioning.abstract_params(cfg)
    shardings = partitioning.logical_to_shardings(boxed, mesh, rules)
    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed), shardings)

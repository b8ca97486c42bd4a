"""LoRA adapters (Hu et al. 2021): their settings, their tree, merging, and how the model
applies them unmerged.

Layout of an adapter set
------------------------
Adapters are a tree of their own, never mixed into the base parameters. It mirrors the
parameter paths of the targeted weights, each weight leaf replaced by a pair:

    {"layers_3": {"attention": {"query": {"a": [d, rank], "b": [rank, heads, head_dim]},
                                "out":   {"a": [heads, head_dim, rank], "b": [rank, d]}},
                  "mlp": {"wi_0": {"a": [d, rank], "b": [rank, mlp]}, ...}}, ...}

`a` is [in..., rank] and `b` is [rank, out...], where in/out are the weight's own input and
output dimensions (attention's `out` takes two input dims, every other projection one). With
`scan_layers` the pairs live under `"layers"/"layer"` with a leading `layers` axis, as the
weights do. Their logical axes are the weight's input axes + `lora_rank`, and `lora_rank` +
its output axes (`adapter_boxes`), so the partitioning rules that shard a weight shard its
adapters (`lora_rank` stays whole). `a` is PEFT's `lora_A.weight` transposed and reshaped,
`b` its `lora_B.weight` the same way.

Targets by their HF names: q, k, v, o -> attention query, key, value, out; gate -> mlp
wi_0 (the activated branch, HF gate_proj), up -> mlp wi_1, down -> mlp wo
(convert/param_map.py).

Initialisation as the paper: `a` Gaussian (stddev fan_in^-1/2), `b` zero, so an untrained
set leaves the model unchanged. The update is W + (alpha / rank) * a @ b.

Applying them
-------------
Merged: `merge(base, adapters, lora, model)` returns plain parameters (W + scale * a @ b).
Unmerged: the same tree is the Decoder's `"lora"` collection, beside `"params"`; every
projection goes through `layers.project`, which adds `(dropout(x) @ a) @ b` where the
collection has a pair for that weight. Code that passes parameters around passes an
`Adapted(base, lora_vars)` instead (`adapted` builds it, scale folded into `b`), and the
model is applied with `apply(module, params, ...)` (`variables(params)`, `rngs(params)`):
plain parameters give `{"params": p}`, so every caller serves both. Dropout's rate is the
Decoder's `lora_dropout` field; it applies only when a key is given (training). The adapters-off model is the base alone;
one base array tree can back several `Adapted` sets (generator, evaluator, reference)
without a copy.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from mathft_jax.models import quantization
from mathft_jax.models.config import ConfigError, DecoderConfig

# HF target name -> (module under a decoder layer, weight name). The weight's input
# dimensions: attention's `out` has two (heads, head_dim), every other projection one.
TARGETS = {
    "q": ("attention", "query"), "k": ("attention", "key"), "v": ("attention", "value"),
    "o": ("attention", "out"), "gate": ("mlp", "wi_0"), "up": ("mlp", "wi_1"),
    "down": ("mlp", "wo"),
}
ALL_TARGETS = tuple(TARGETS)
RANK_AXIS = "lora_rank"
COLLECTION = "lora"  # the Decoder's variable collection of unmerged adapters
DROPOUT_RNG = "lora_dropout"
STARTS = ("continue", "merge")


def input_dims(weight: str) -> int:
    return 2 if weight == "out" else 1


@gin.configurable("lora")
@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """LoRA settings, bound as `lora.*` (scoped per stage: `ssft/lora.rank`); rank 0 = off
    (full fine-tuning). layers: [start, stop) of the decoder layers that get adapters
    (None: all; with scan_layers every layer holds a pair, those outside stay inert)."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: Tuple[str, ...] = ALL_TARGETS
    layers: Optional[Tuple[int, int]] = None
    dtype: str = "float32"  # the adapters' parameter dtype
    # From an init checkpoint that is itself LoRA: "continue" its adapters on its base, or
    # "merge" them into a new base with fresh adapters (convert/lora_checkpoints.py).
    start: str = "continue"

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def layer_range(self, model: DecoderConfig) -> range:
        return range(*(self.layers or (0, model.num_layers)))

    def validate(self, model: DecoderConfig) -> "LoraConfig":
        if self.rank < 0:
            raise ConfigError(f"lora.rank={self.rank} must be >= 0 (0: LoRA off)")
        if not self.enabled:
            return self
        if self.start not in STARTS:
            raise ConfigError(f"lora.start={self.start!r} must be one of {', '.join(STARTS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout={self.dropout} must be in [0, 1)")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise ConfigError(f"lora.targets={self.targets!r}: each must be one of "
                              f"{', '.join(ALL_TARGETS)}")
        if "up" in self.targets and not model.gated_mlp:
            raise ConfigError("lora.targets has 'up', but the model's MLP is not gated "
                              "(no up projection; use gate for its input projection)")
        if self.layers is not None:
            start, stop = self.layers
            if not 0 <= start < stop <= model.num_layers:
                raise ConfigError(f"lora.layers={self.layers!r} must be [start, stop) within "
                                  f"the model's {model.num_layers} layers")
        return self


# ---------------------------------------------------------------------------- the tree


def _layer_paths(model: DecoderConfig, index: Optional[int]) -> Tuple[str, ...]:
    return ("layers", "layer") if index is None else (f"layers_{index}",)


def target_paths(lora: LoraConfig, model: DecoderConfig):
    """(layer index or None when scanned, path of the targeted weight in the base tree)."""
    layers = [None] if model.scan_layers else list(lora.layer_range(model))
    return [(i, _layer_paths(model, i) + TARGETS[t]) for i in layers for t in lora.targets]


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def adapter_boxes(lora: LoraConfig, model: DecoderConfig, boxed_base) -> dict:
    """Boxed (nn.Partitioned) ShapeDtypeStructs of the adapters, from the base's boxed
    abstract parameters (`Partitioner.abstract_params`): their shapes and logical axes."""
    out: dict = {}
    dtype = jnp.dtype(lora.dtype)
    for _, path in target_paths(lora, model):
        w = _get(boxed_base, path)
        lead = 1 if model.scan_layers else 0
        split = lead + input_dims(path[-1])
        shape, names = w.value.shape, w.names
        a = (shape[:split] + (lora.rank,), names[:split] + (RANK_AXIS,))
        b = (shape[:lead] + (lora.rank,) + shape[split:],
             names[:lead] + (RANK_AXIS,) + names[split:])
        _set(out, path, {k: nn.Partitioned(jax.ShapeDtypeStruct(s, dtype), n)
                         for k, (s, n) in (("a", a), ("b", b))})
    return out


def init_adapters(lora: LoraConfig, model: DecoderConfig, boxed_base, rng: jax.Array) -> dict:
    """Fresh adapters (unboxed): `a` Gaussian with stddev fan_in^-1/2, `b` zero. Each pair
    draws from `fold_in(rng, its index)`, so a set does not depend on how it is sharded."""
    boxes = adapter_boxes(lora, model, boxed_base)
    out: dict = {}
    for n, (_, path) in enumerate(target_paths(lora, model)):
        pair = _get(boxes, path)
        a, b = pair["a"].value, pair["b"].value
        fan_in = int(np.prod(a.shape[(1 if model.scan_layers else 0):-1]))
        a_init = jax.random.normal(jax.random.fold_in(rng, n), a.shape, jnp.float32)
        _set(out, path, {"a": (a_init * fan_in ** -0.5).astype(a.dtype),
                         "b": jnp.zeros(b.shape, b.dtype)})
    return out


def _scale(lora: LoraConfig, model: DecoderConfig, b: jax.Array):
    """alpha / rank, broadcast against `b`; scanned, zero on the layers outside
    `lora.layers` (every layer shares the stacked tree, those adapters stay inert)."""
    if not model.scan_layers or lora.layers is None:
        return lora.scale
    mask = np.zeros(model.num_layers, np.float32)
    mask[lora.layer_range(model).start:lora.layer_range(model).stop] = lora.scale
    return jnp.asarray(mask).reshape((-1,) + (1,) * (b.ndim - 1))


def _delta(a: jax.Array, b: jax.Array, scan: bool) -> jax.Array:
    """a [L?, in..., r] @ b [L?, r, out...] -> [L?, in..., out...] in float32."""
    prod = lambda x, y: jnp.tensordot(x, y, axes=1, preferred_element_type=jnp.float32)  # noqa: E731
    return jax.vmap(prod)(a, b) if scan else prod(a, b)


def merge(base: dict, adapters: dict, lora: LoraConfig, model: DecoderConfig) -> dict:
    """Plain parameters: every targeted weight W + scale * a @ b (in float32, then W's
    dtype); the other leaves are the base's own arrays (no copy)."""
    out = jax.tree_util.tree_map(lambda x: x, base)  # new containers, same leaves
    for _, path in target_paths(lora, model):
        pair, w = _get(adapters, path), _get(base, path)
        delta = _delta(pair["a"], pair["b"], model.scan_layers)
        scale = _scale(lora, model, delta)
        _set(out, path, (w.astype(jnp.float32) + scale * delta).astype(w.dtype))
    return out


# ---------------------------------------------------------------------------- unmerged


@flax.struct.dataclass
class Adapted:
    """A base and the adapter values the model applies to it unmerged (its `"lora"`
    collection, `b` already scaled). Goes wherever parameters go (jit, the decode loop);
    `dropout_key`: the key of LoRA dropout (training only), None: no dropout."""
    base: Any
    lora_vars: Any
    dropout_key: Optional[jax.Array] = None


def adapted(base, adapters: dict, lora: LoraConfig, model: DecoderConfig,
            dropout_key: Optional[jax.Array] = None) -> Adapted:
    """`base` with `adapters` applied unmerged. Differentiable in `adapters` (the scale is
    applied here, inside whatever function is differentiated)."""
    def scaled(pair):
        return {"a": pair["a"], "b": pair["b"] * _scale(lora, model, pair["b"])}

    lora_vars: dict = {}
    for _, path in target_paths(lora, model):
        _set(lora_vars, path, scaled(_get(adapters, path)))
    key = dropout_key if lora.dropout > 0 else None
    return Adapted(base=base, lora_vars=lora_vars, dropout_key=key)


def base_params(params):
    """The base parameters of plain or adapted parameters (the embedding, the head)."""
    return params.base if isinstance(params, Adapted) else params


def variables(params) -> dict:
    """The Decoder's variables for plain or adapted parameters."""
    if isinstance(params, Adapted):
        return {"params": params.base, COLLECTION: params.lora_vars}
    return {"params": params}


def rngs(params) -> dict:
    """The Decoder's rngs: LoRA dropout's key when the adapters train with dropout."""
    if isinstance(params, Adapted) and params.dropout_key is not None:
        return {DROPOUT_RNG: params.dropout_key}
    return {}


def apply(module: nn.Module, params, *args, **kwargs):
    """`module.apply` on plain or adapted parameters (their variables and rngs); on a
    quantized base (QLoRA), the module quantized as it is (`quantization.module_for`)."""
    module = quantization.module_for(module, base_params(params))
    return module.apply(variables(params), *args, rngs=rngs(params), **kwargs)


def map_trees(fn, params):
    """`fn` applied to the base tree and, for adapted parameters, to the adapter tree too
    (the two share their paths): e.g. unrolling scanned layers for decoding."""
    if isinstance(params, Adapted):
        return params.replace(base=fn(params.base), lora_vars=fn(params.lora_vars))
    return fn(params)

"""HuggingFace checkpoints <-> (DecoderConfig, params), streamed one tensor at a time.

    cfg, params = load_hf("path/to/hf_dir", mesh=mesh)   # params already sharded
    logits = Decoder(cfg).apply({"params": params}, tokens)
    save_hf("out_dir", cfg, params)                      # loads in transformers

Import reads each tensor once from the memory-mapped safetensors file, views it in our
layout (transpose + reshape, no copy) and hands it to `jax.make_array_from_callback`
with the parameter's NamedSharding, then drops it: host memory peaks near one tensor
plus the output, never a second copy of the model.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Dict, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.sharding import Mesh

from mathft_jax.models import partitioning
from mathft_jax.convert import families, param_map
from mathft_jax.convert.errors import ConversionError
from mathft_jax.convert.safetensors_io import ShardedReader, write_sharded
from mathft_jax.models.config import DecoderConfig

CONFIG_FILE = "config.json"
DEFAULT_SHARD_BYTES = 2 * 1024 ** 3


def read_hf_config(hf_dir) -> Dict[str, Any]:
    path = epath.Path(hf_dir) / CONFIG_FILE  # local or gs:// (a model_dir's hf/)
    if not path.exists():
        raise ConversionError(f"{path}: missing (not a HuggingFace model directory?)")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from e


def checkpoint_dtype(hf_cfg: dict) -> Optional[str]:
    """The tensors' dtype a config.json declares (`dtype`, or the older `torch_dtype`)."""
    return hf_cfg.get("dtype") or hf_cfg.get("torch_dtype")


def load_hf(hf_dir, *, mesh: Optional[Mesh] = None, dtype=None, scan_layers: bool = False):
    """(DecoderConfig, params) of an HF directory, params placed on `mesh` (default: one
    device) by `Partitioner.create(cfg, mesh)`: the rules follow the config read here.

    dtype: parameter (and compute) dtype; default the checkpoint's own (config.json's
    `torch_dtype`/`dtype`), so nothing is converted. scan_layers: stack the layers
    (`layers/layer/...`) for `nn.scan`.
    """
    hf_dir = pathlib.Path(hf_dir)
    hf_cfg = read_hf_config(hf_dir)
    dtype = jnp.dtype(dtype or checkpoint_dtype(hf_cfg) or "float32")
    cfg = families.decoder_config_from_hf(hf_cfg, source=str(hf_dir / CONFIG_FILE),
                                          param_dtype=dtype.name, scan_layers=scan_layers)
    reader = ShardedReader(hf_dir)  # checks every shard before anything is converted
    try:
        partitioner = (partitioning.Partitioner.create(cfg, mesh) if mesh is not None
                       else partitioning.NO_MESH)
        params = read_params(reader, cfg, partitioner)
    finally:
        reader.close()
    return cfg, params


def read_params(reader: ShardedReader, cfg: DecoderConfig,
                partitioner: partitioning.Partitioner = partitioning.NO_MESH):
    """The parameters of `cfg` from `reader`, each placed into its sharded layout (without
    a mesh: one device)."""
    targets = partitioner.param_targets(cfg)
    table = param_map.param_table(cfg)
    _check_tensors(reader, table, targets, cfg)
    by_path: Dict[tuple, list] = {}
    for entry in table:
        by_path.setdefault(entry.path, []).append(entry)
    placed = {path: _place(reader, entries, _get(targets, path)) for path, entries in by_path.items()}
    return _unflatten(placed)


def _place(reader: ShardedReader, entries: Sequence[param_map.Entry], target) -> jax.Array:
    shape, dtype = tuple(target.shape), target.dtype
    if entries[0].layer is None:
        value = param_map.to_ours(reader.read(entries[0].hf_name), entries[0], shape)
        value = value.astype(dtype, copy=False)
        return jax.make_array_from_callback(shape, target.sharding, lambda index: value[index])

    def stacked_shard(index):  # scan_layers: read each layer of this shard in turn
        layers, rest = range(shape[0])[index[0]], index[1:]
        out = None
        for j, i in enumerate(layers):
            part = param_map.to_ours(reader.read(entries[i].hf_name), entries[i], shape[1:])[rest]
            if out is None:
                out = np.empty((len(layers),) + part.shape, dtype)
            out[j] = part
        return out

    return jax.make_array_from_callback(shape, target.sharding, stacked_shard)


def _check_tensors(reader: ShardedReader, table, targets, cfg: DecoderConfig) -> None:
    """Fail before converting anything: missing, misshapen or unexpected tensors."""
    expected = {}
    for entry in table:
        shape = tuple(_get(targets, entry.path).shape)
        expected[entry.hf_name] = param_map.hf_shape(entry, shape[1:] if entry.layer is not None else shape)
    missing = [n for n in expected if n not in reader.meta]
    if missing:
        raise ConversionError(f"{reader.dir}: tensor(s) missing from the checkpoint: "
                              f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    for name, want in expected.items():
        got = reader.shape(name)
        if got != want:
            raise ConversionError(f"tensor {name!r} in {reader.dir / reader.meta[name][0]} has "
                                  f"shape {list(got)}; config.json implies {list(want)}")
    ignorable = ("lm_head.weight",) if cfg.tie_embeddings else ()  # tied: a copy of the embedding
    unexpected = [n for n in reader.meta if n not in expected and n not in ignorable
                  and not n.endswith(param_map.IGNORED_SUFFIXES)]
    if unexpected:
        raise ConversionError(f"{reader.dir}: tensor(s) this {cfg.family} config does not "
                              f"use: {', '.join(unexpected[:5])}")


def save_hf(out_dir, cfg: DecoderConfig, params, *, extra: Optional[Mapping[str, Any]] = None,
            dtype=None, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
    """Write config.json and sharded safetensors that transformers loads.

    extra: the original config.json (its token ids are kept). dtype: of the written
    tensors (default the params'). Tensors are fetched to the host one at a time. The
    tokenizer and generation files are export_hf's (from the model_dir).
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = jnp.dtype(dtype or cfg.param_dtype)
    hf_cfg = families.hf_config_from_decoder(cfg, extra, dtype.name)
    specs = []
    for entry in param_map.param_table(cfg):
        leaf = _get(params, entry.path)
        shape = tuple(leaf.shape[1:] if entry.layer is not None else leaf.shape)

        def produce(leaf=leaf, entry=entry):
            value = leaf if entry.layer is None else leaf[entry.layer]
            return param_map.to_hf(np.asarray(value), entry)
        specs.append((entry.hf_name, param_map.hf_shape(entry, shape), dtype.name, produce))
    write_sharded(out_dir, specs, max_shard_bytes)
    (out_dir / CONFIG_FILE).write_text(json.dumps(hf_cfg, indent=2) + "\n")


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _unflatten(flat: Mapping[tuple, Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree

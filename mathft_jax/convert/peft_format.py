"""LoRA adapters in PEFT's format: the folder `peft.PeftModel.from_pretrained` loads onto an
HF base (adapter_config.json + adapter_model.safetensors), written from and read into the
adapter tree of `models/lora.py`.

PEFT files a pair under the HF module it adapts, behind its two wrappers' prefix:
`base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` is A [r, in] and
`...lora_B.weight` is B [out, r]; the module computes W x + scaling * B A x with scaling =
lora_alpha / r (lora_alpha / sqrt(r) with `use_rslora`). Ours are a [in..., r] and
b [r, out...] with scale alpha / rank, so A is `a` flattened to [in, r] and transposed, B is
`b` flattened to [r, out] and transposed.

Export writes one r and lora_alpha, `target_modules` as HF module names and, for a layer
range, `layers_to_transform`. Import reads whatever LoRA PEFT writes for the projections
our model has, exactly, into one `LoraConfig`: per-module ranks (`rank_pattern`) are padded
with zeros to the largest, per-module scalings (`use_rslora`, `alpha_pattern`) are folded
into b, and a projection of the targeted layers that the file lacks gets a zero pair (no
update, and no gradient: it stays zero). It refuses what the model cannot compute: DoRA,
trained biases, `modules_to_save`, adapters on other modules (embeddings, the head).
"""
from __future__ import annotations

import functools
import json
import math
import pathlib
import re
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
from flax import traverse_util

from mathft_jax.convert import param_map
from mathft_jax.convert.errors import ConversionError
from mathft_jax.models import lora as lora_lib, sizes
from mathft_jax.models.config import DecoderConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel wrapping LoraModel wrapping the HF model
_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<part>[AB])\.weight")
# Settings of a LoRA adapter_config.json whose other values our model cannot compute.
_MUST_BE = {"peft_type": ("LORA",), "bias": ("none", None), "use_dora": (False, None),
            "modules_to_save": (None, []), "layer_replication": (None, []),
            "fan_in_fan_out": (False, None)}

Pair = Tuple[np.ndarray, np.ndarray]  # (a [in..., r], b [r, out...]) of one weight


# ---------------------------------------------------------------------------- export


def adapter_config(lora: lora_lib.LoraConfig, model: DecoderConfig,
                   base_model_name_or_path: Optional[str] = None) -> dict:
    """adapter_config.json for `lora`: PEFT's LoRA with our rank, alpha and targets."""
    names = _hf_target_names(model)
    layers = list(lora.layer_range(model))
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
        "use_rslora": False, "use_dora": False, "bias": "none", "fan_in_fan_out": False,
        "target_modules": [names[t] for t in lora.targets],
        # None: every layer (PEFT finds the index after `layers_pattern` in the module name)
        "layers_to_transform": None if len(layers) == model.num_layers else layers,
        "layers_pattern": None if len(layers) == model.num_layers else "layers",
        "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None,
        "init_lora_weights": True, "inference_mode": True,
    }


def adapter_tensors(adapters, lora: lora_lib.LoraConfig, model: DecoderConfig,
                    dtype=None) -> Dict[str, np.ndarray]:
    """PEFT's state dict of `adapters` (host arrays, C-contiguous): lora_A and lora_B of
    every targeted projection of every adapted layer."""
    out = {}
    for i in lora.layer_range(model):
        modules = param_map.projection_modules(model, i)
        for target in lora.targets:
            where = lora_lib.TARGETS[target]
            a, b = _layer_pair(adapters, model, i, where)
            r = a.shape[-1]
            key = PREFIX + modules[where]
            out[f"{key}.lora_A.weight"] = _host(a.reshape(-1, r).T, dtype)
            out[f"{key}.lora_B.weight"] = _host(b.reshape(r, -1).T, dtype)
    return out


def write_adapter(out_dir, adapters, lora: lora_lib.LoraConfig, model: DecoderConfig, *,
                  base_model_name_or_path: Optional[str] = None, dtype=None) -> None:
    """The PEFT adapter folder of `adapters` in `out_dir` (created; local)."""
    from safetensors.numpy import save_file  # noqa: PLC0415 (optional dependency)

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(adapter_tensors(adapters, lora, model, dtype), str(out_dir / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})
    config = adapter_config(lora, model, base_model_name_or_path)
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


# ---------------------------------------------------------------------------- import


def read_adapter(adapter_dir, model: DecoderConfig) -> Tuple[lora_lib.LoraConfig, dict]:
    """(LoraConfig, adapters) of a PEFT LoRA folder for the base `model`: host arrays in
    the adapter tree's layout, float32, computing exactly what PEFT computes."""
    adapter_dir = pathlib.Path(adapter_dir)
    config = _read_config(adapter_dir)
    pairs = _read_pairs(adapter_dir, model)
    rank = max(a.shape[0] for a, _ in pairs.values())
    # the set's scale: PEFT's for a module with the default r and alpha (its factor is 1)
    scale = _peft_scaling(config, config["lora_alpha"], config.get("r") or rank)
    first, stop = min(i for i, _ in pairs), max(i for i, _ in pairs) + 1
    targets = tuple(t for t, where in lora_lib.TARGETS.items()
                    if any(w == where for _, w in pairs))
    full = (first, stop) == (0, model.num_layers)
    lora = lora_lib.LoraConfig(rank=rank, alpha=scale * rank, targets=targets,
                               dropout=float(config.get("lora_dropout") or 0.0),
                               layers=None if full else (first, stop))
    try:
        lora.validate(model)
    except ValueError as e:
        raise ConversionError(f"{adapter_dir}: {e}") from e
    modules = {i: param_map.projection_modules(model, i) for i in lora.layer_range(model)}
    per_layer = {}
    for i in lora.layer_range(model):
        for target in targets:
            where = lora_lib.TARGETS[target]
            found = pairs.get((i, where))
            if found is None:  # not adapted in PEFT: a zero pair is no update
                per_layer[(i, where)] = _zero_pair(model, where, rank)
                continue
            module_alpha = _pattern_value(config.get("alpha_pattern"), modules[i][where],
                                          config["lora_alpha"])
            factor = _peft_scaling(config, module_alpha, found[0].shape[0]) / scale
            per_layer[(i, where)] = _to_ours(found, rank, factor, model, where)
    return lora, _tree(per_layer, lora, model)


def _read_config(adapter_dir: pathlib.Path) -> dict:
    path = adapter_dir / ADAPTER_CONFIG
    if not path.exists():
        raise ConversionError(f"{path}: missing (not a PEFT adapter folder?)")
    try:
        config = json.loads(path.read_text())
    except ValueError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from e
    for field, allowed in _MUST_BE.items():
        if config.get(field) not in allowed:
            raise ConversionError(f"{path}: field {field!r}={config.get(field)!r} is not "
                                  f"supported (LoRA on the projections only needs {allowed[0]!r})")
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise ConversionError(f"{path}: field 'lora_alpha' must be a positive number, "
                              f"got {alpha!r}")
    return config


def _read_pairs(adapter_dir: pathlib.Path, model: DecoderConfig) -> Dict[tuple, Pair]:
    """(layer, (module, weight)) -> (A [r, in], B [out, r]) as PEFT stores them."""
    from safetensors.numpy import load_file  # noqa: PLC0415 (optional dependency)

    path = adapter_dir / ADAPTER_WEIGHTS
    if not path.exists():
        raise ConversionError(f"{path}: missing (only safetensors adapters are read; "
                              "re-save with safe_serialization=True)")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error type
        raise ConversionError(f"{path}: not a readable safetensors file: {e}") from e
    where_of = {module: (i, where) for i in range(model.num_layers)
                for where, module in param_map.projection_modules(model, i).items()}
    halves: Dict[tuple, dict] = {}
    for name, value in tensors.items():
        match = _KEY.fullmatch(name[len(PREFIX):] if name.startswith(PREFIX) else name)
        key = where_of.get(match.group("module")) if match else None
        if key is None:
            raise ConversionError(f"{path}: tensor {name!r} is not a LoRA pair of a "
                                  f"projection this {model.family} model has")
        halves.setdefault(key, {})[match.group("part")] = value.astype(np.float32)
    if not halves:
        raise ConversionError(f"{path}: holds no LoRA tensors")
    pairs = {}
    for (i, where), parts in halves.items():
        if set(parts) != {"A", "B"}:
            raise ConversionError(f"{path}: layer {i} {'.'.join(where)} has lora_"
                                  f"{''.join(parts)} without its other half")
        a, b = parts["A"], parts["B"]
        weight = _weight_shape(model, where)
        want = ((a.shape[0], math.prod(_in_shape(weight, where))),
                (math.prod(_out_shape(weight, where)), a.shape[0]))
        if (a.shape, b.shape) != want:
            raise ConversionError(f"{path}: layer {i} {'.'.join(where)} has lora_A "
                                  f"{list(a.shape)} and lora_B {list(b.shape)}; the model "
                                  f"needs {list(want[0])} and {list(want[1])}")
        pairs[(i, where)] = (a, b)
    return pairs


def _peft_scaling(config: Mapping, alpha: float, r: int) -> float:
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def _pattern_value(pattern: Optional[Mapping], module: str, default):
    """PEFT's per-module override: the first key that matches the module name's tail."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _to_ours(pair: Pair, rank: int, factor: float, model: DecoderConfig, where) -> Pair:
    """PEFT's (A [r, in], B [out, r]) -> our (a [in..., rank], b [rank, out...]): zero-padded
    to `rank`, b times `factor` (this module's scaling over the set's)."""
    a, b = pair
    r, weight = a.shape[0], _weight_shape(model, where)
    a_ours = np.zeros((a.shape[1], rank), np.float32)
    b_ours = np.zeros((rank, b.shape[0]), np.float32)
    a_ours[:, :r] = a.T
    b_ours[:r] = b.T * factor
    return (a_ours.reshape(_in_shape(weight, where) + (rank,)),
            b_ours.reshape((rank,) + _out_shape(weight, where)))


def _tree(per_layer: Dict[tuple, Pair], lora: lora_lib.LoraConfig, model: DecoderConfig) -> dict:
    """The adapter tree of per-layer pairs; scanned, stacked over every layer (those outside
    `lora.layers` hold zeros, which the scanned scale masks anyway)."""
    flat = {}
    for i, path in lora_lib.target_paths(lora, model):
        where = path[-2:]
        if i is None:
            zero = _zero_pair(model, where, lora.rank)
            layers = [per_layer.get((j, where), zero) for j in range(model.num_layers)]
            a, b = (np.stack([pair[k] for pair in layers]) for k in (0, 1))
        else:
            a, b = per_layer[(i, where)]
        flat[path + ("a",)], flat[path + ("b",)] = a, b
    return traverse_util.unflatten_dict(flat)


def _zero_pair(model: DecoderConfig, where, rank: int) -> Pair:
    weight = _weight_shape(model, where)
    return (np.zeros(_in_shape(weight, where) + (rank,), np.float32),
            np.zeros((rank,) + _out_shape(weight, where), np.float32))


# ---------------------------------------------------------------------------- shapes


def _hf_target_names(model: DecoderConfig) -> Dict[str, str]:
    """Our target name -> PEFT's target module name ("q" -> "q_proj")."""
    modules = param_map.projection_modules(model, 0)
    return {t: modules[where].rsplit(".", 1)[-1] for t, where in lora_lib.TARGETS.items()
            if where in modules}


def _weight_shape(model: DecoderConfig, where) -> tuple:
    """One layer's shape of the weight at `where` (("attention", "query"))."""
    return _layer_shapes(model.replace(scan_layers=False, num_layers=1))[where]


@functools.lru_cache(maxsize=8)
def _layer_shapes(one_layer: DecoderConfig) -> Dict[tuple, tuple]:
    layer = sizes.param_shapes(one_layer)["layers_0"]
    return {(module, name): tuple(leaf.shape) for module, leaves in layer.items()
            for name, leaf in leaves.items()}


def _in_shape(weight: tuple, where) -> tuple:
    return weight[:lora_lib.input_dims(where[-1])]


def _out_shape(weight: tuple, where) -> tuple:
    return weight[lora_lib.input_dims(where[-1]):]


def _layer_pair(adapters, model: DecoderConfig, i: int, where) -> Pair:
    """Layer i's (a, b) of the weight at `where`, on the host."""
    if model.scan_layers:
        pair = adapters["layers"]["layer"][where[0]][where[1]]
        return np.asarray(pair["a"][i]), np.asarray(pair["b"][i])
    pair = adapters[f"layers_{i}"][where[0]][where[1]]
    return np.asarray(pair["a"]), np.asarray(pair["b"])


def _host(value: np.ndarray, dtype) -> np.ndarray:
    value = np.ascontiguousarray(value)
    return value.astype(dtype) if dtype is not None else value

"""The one table mapping HF tensor names to our parameter paths, used both ways.

HF stores linear layers as [out, in] (torch) and keeps heads flattened; we store
[in, ..., out] with heads split out. Every mapping is therefore either "same values,
maybe a different shape" (embeddings, norms, biases) or "transpose, then reshape"
(linear layers) and its inverse, which `to_ours` / `to_hf` apply.
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Tuple

import numpy as np

from mathft_jax.models.config import DecoderConfig

# Tensors an HF checkpoint may hold that carry nothing our model needs.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclasses.dataclass(frozen=True)
class Entry:
    hf_name: str
    path: Tuple[str, ...]  # our parameter path
    transpose: bool  # a linear layer: HF [out, in] vs our [in, ..., out]
    layer: Optional[int] = None  # with scan_layers: the index on the leading layer axis


def param_table(cfg: DecoderConfig) -> List[Entry]:
    """Every parameter of `cfg`, in HF order (embedding, layers, final norm, head)."""
    table = [Entry("model.embed_tokens.weight", ("embedding",), False)]
    for i in range(cfg.num_layers):
        table += _layer_entries(cfg, i)
    table.append(Entry("model.norm.weight", ("final_norm", "scale"), False))
    if not cfg.tie_embeddings:
        table.append(Entry("lm_head.weight", ("logits_dense",), True))
    return table


def _layer_entries(cfg: DecoderConfig, i: int) -> List[Entry]:
    hf = f"model.layers.{i}."
    base, layer = ((("layers", "layer"), i) if cfg.scan_layers else ((f"layers_{i}",), None))
    rows = [  # (HF suffix, our path under the layer, transpose)
        ("self_attn.q_proj.weight", ("attention", "query"), True),
        ("self_attn.k_proj.weight", ("attention", "key"), True),
        ("self_attn.v_proj.weight", ("attention", "value"), True),
        ("self_attn.o_proj.weight", ("attention", "out"), True),
        ("mlp.gate_proj.weight", ("mlp", "wi_0"), True),  # the activated branch
        ("mlp.up_proj.weight", ("mlp", "wi_1"), True),
        ("mlp.down_proj.weight", ("mlp", "wo"), True),
        ("input_layernorm.weight", ("pre_attention_norm", "scale"), False),
    ]
    if cfg.qkv_bias:
        rows += [(f"self_attn.{p}_proj.bias", ("attention", f"{ours}_bias"), False)
                 for p, ours in (("q", "query"), ("k", "key"), ("v", "value"))]
    if cfg.qk_norm:  # Qwen3: per-head norms, [head_dim] each
        rows += [(f"self_attn.{p}_norm.weight", ("attention", f"{ours}_norm", "scale"), False)
                 for p, ours in (("q", "query"), ("k", "key"))]
    if cfg.post_block_norms:  # Gemma 2: four norms per layer
        rows += [("post_attention_layernorm.weight", ("post_attention_norm", "scale"), False),
                 ("pre_feedforward_layernorm.weight", ("pre_mlp_norm", "scale"), False),
                 ("post_feedforward_layernorm.weight", ("post_mlp_norm", "scale"), False)]
    else:  # Llama's "post_attention_layernorm" is the norm before the MLP
        rows.append(("post_attention_layernorm.weight", ("pre_mlp_norm", "scale"), False))
    return [Entry(hf + suffix, base + path, transpose, layer) for suffix, path, transpose in rows]


def projection_modules(cfg: DecoderConfig, i: int) -> dict:
    """Layer i's linear projections: (module, weight) under the layer (("attention",
    "query")) -> the HF module that holds it ("model.layers.{i}.self_attn.q_proj"), the
    names LoRA adapters are filed under in PEFT's format."""
    return {entry.path[-2:]: entry.hf_name[:-len(".weight")]
            for entry in _layer_entries(cfg, i) if entry.transpose}


def hf_shape(entry: Entry, our_shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """The HF tensor's shape for our (per-layer) parameter shape."""
    if entry.transpose:
        split = _in_dims(entry)
        return (math.prod(our_shape[split:]), math.prod(our_shape[:split]))
    if entry.path[-1].endswith("_bias"):  # HF keeps the heads flattened
        return (math.prod(our_shape),)
    return tuple(our_shape)


def to_ours(hf_value: np.ndarray, entry: Entry, our_shape: Tuple[int, ...]) -> np.ndarray:
    """HF tensor -> our layout; a view of `hf_value` (no copy, no dtype change)."""
    return (hf_value.T if entry.transpose else hf_value).reshape(our_shape)


def to_hf(our_value: np.ndarray, entry: Entry) -> np.ndarray:
    """Our (per-layer) parameter -> the HF tensor, C-contiguous for safetensors."""
    shape = hf_shape(entry, our_value.shape)
    if entry.transpose:  # [in..., out...] -> [in, out] -> [out, in]
        return np.ascontiguousarray(our_value.reshape(shape[::-1]).T)
    return np.ascontiguousarray(our_value.reshape(shape))


def _in_dims(entry: Entry) -> int:
    """How many leading dims of our linear weight are its input: attention's `out`
    [heads, head_dim, d] takes two, every other linear weight one."""
    return 2 if entry.path[-1] == "out" else 1

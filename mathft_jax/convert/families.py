"""HF `config.json` <-> `DecoderConfig`, for Llama, Mistral, Qwen2, Qwen3, Gemma and Gemma 2.

Each family is a fixed set of `DecoderConfig` switches (`Family.switches`) plus the shapes
and the few knobs read from config.json (RoPE, sliding window, soft-capping, query scale).
Import and export share the table, so an exported config imports back to the same model.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Tuple

from mathft_jax.convert.errors import ConversionError
from mathft_jax.models.config import DecoderConfig


@dataclasses.dataclass(frozen=True)
class Family:
    name: str  # DecoderConfig.family and HF "model_type"
    architecture: str  # HF "architectures"[0]
    switches: Mapping[str, Any]  # DecoderConfig fields every model of the family has
    tied_default: bool  # HF's tie_word_embeddings when config.json omits it
    activations: Tuple[str, ...]  # accepted hidden_act / hidden_activation values
    act_field: str  # where the family's HF config names its activation


_PRE_NORM = dict(parallel_block=False, norm="rmsnorm", qkv_bias=False, qk_norm=False,
                 post_block_norms=False, norm_scale_offset=0.0, scale_embeddings=False)
_NO_SOFTCAP = dict(attn_logit_softcap=None, final_logit_softcap=None)
_LLAMA = dict(_PRE_NORM, **_NO_SOFTCAP, activation="swiglu")
# Gemma stores norm scales as (scale - 1) and multiplies embeddings by sqrt(d_model);
# its GeGLU uses the tanh GeLU ("gelu" in old configs meant the same, per Gemma's own code).
_GEMMA = dict(_PRE_NORM, activation="geglu", norm_scale_offset=1.0, scale_embeddings=True)
_GELU = ("gelu_pytorch_tanh", "gelu_new", "gelu")

FAMILIES = {f.name: f for f in (
    Family("llama", "LlamaForCausalLM", _LLAMA, False, ("silu",), "hidden_act"),
    Family("mistral", "MistralForCausalLM", _LLAMA, False, ("silu",), "hidden_act"),
    Family("qwen2", "Qwen2ForCausalLM", {**_LLAMA, "qkv_bias": True}, False, ("silu",), "hidden_act"),
    # Qwen3: Qwen2 without the q/k/v biases, with an RMSNorm per head on q and k.
    Family("qwen3", "Qwen3ForCausalLM", {**_LLAMA, "qk_norm": True}, False, ("silu",), "hidden_act"),
    Family("gemma", "GemmaForCausalLM", {**_GEMMA, **_NO_SOFTCAP}, True, _GELU, "hidden_act"),
    # Gemma 2's soft-caps are read from config.json, so they are not fixed switches.
    Family("gemma2", "Gemma2ForCausalLM", {**_GEMMA, "post_block_norms": True}, True, _GELU,
           "hidden_activation"),
)}
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def family_of(hf: Mapping[str, Any], source: str) -> Family:
    """The family of an HF config; unknown architectures are named with the field."""
    model_type = hf.get("model_type")
    archs = hf.get("architectures") or []
    fam = FAMILIES.get(model_type)
    if fam is None:
        by_arch = {f.architecture: f for f in FAMILIES.values()}
        fam = next((by_arch[a] for a in archs if a in by_arch), None)
    known = ", ".join(f"{f.name} ({f.architecture})" for f in FAMILIES.values())
    if fam is None:
        raise ConversionError(
            f"{source}: unsupported architecture (model_type={model_type!r}, "
            f"architectures={archs!r}); supported: {known}")
    if archs and archs[0] != fam.architecture:
        raise ConversionError(
            f"{source}: field 'architectures'={archs!r} is not a causal LM of family "
            f"{fam.name!r} (expected {fam.architecture!r})")
    return fam


def decoder_config_from_hf(hf: Mapping[str, Any], *, source: str = "config.json",
                           param_dtype: str = "float32", scan_layers: bool = False) -> DecoderConfig:
    """The DecoderConfig of an HF config.json (already parsed); `source` names it in errors."""
    fam = family_of(hf, source)
    get = _Fields(hf, source)
    act = hf.get(fam.act_field) or hf.get("hidden_act")
    if act not in fam.activations:
        raise ConversionError(f"{source}: field {fam.act_field!r}={act!r} is not supported for "
                              f"{fam.name}; expected one of {fam.activations}")
    for flag in ("attention_bias", "mlp_bias", "use_sliding_window"):
        if hf.get(flag):
            raise ConversionError(f"{source}: field {flag!r}=true is not supported for {fam.name}")
    d, heads = get.int("hidden_size"), get.int("num_attention_heads")
    num_layers = get.int("num_hidden_layers")
    rope_theta, rope_scaling = _rope_from_hf(hf, source)
    window, pattern = _sliding_from_hf(hf, fam, num_layers, source)
    kw = dict(fam.switches)
    kw.update(
        family=fam.name, vocab_size=get.int("vocab_size"), num_layers=num_layers, d_model=d,
        num_heads=heads, num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or d // heads), mlp_dim=get.int("intermediate_size"),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_theta=rope_theta,
        rope_scaling=rope_scaling, tie_embeddings=bool(hf.get("tie_word_embeddings", fam.tied_default)),
        max_seq_len=int(hf.get("max_position_embeddings", 2048)), sliding_window=window,
        sliding_window_pattern=pattern, dtype=param_dtype, param_dtype=param_dtype,
        scan_layers=scan_layers)
    if fam.name == "gemma2":
        kw.update(attn_logit_softcap=hf.get("attn_logit_softcapping"),
                  final_logit_softcap=hf.get("final_logit_softcapping"),
                  query_scale=float(get.num("query_pre_attn_scalar")) ** -0.5)
    try:
        return DecoderConfig(**kw).validate()
    except ValueError as e:
        raise ConversionError(f"{source}: {e}") from e


def hf_config_from_decoder(cfg: DecoderConfig, extra: Optional[Mapping[str, Any]] = None,
                           dtype: Optional[str] = None) -> dict:
    """config.json for `cfg`; `extra` (the imported config.json) supplies the token ids."""
    fam = FAMILIES.get(cfg.family)
    if fam is None:
        raise ConversionError(f"DecoderConfig.family={cfg.family!r} has no HuggingFace "
                              f"equivalent; supported: {sorted(FAMILIES)}")
    for field, want in fam.switches.items():
        if getattr(cfg, field) != want:
            raise ConversionError(f"DecoderConfig.{field}={getattr(cfg, field)!r} cannot be "
                                  f"exported as {fam.name} (which needs {want!r})")
    act = "silu" if cfg.activation == "swiglu" else "gelu_pytorch_tanh"
    out = {
        "architectures": [fam.architecture], "model_type": fam.name,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim, "hidden_act": act, "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
        "rope_scaling": cfg.rope_scaling_dict, "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False, "torch_dtype": dtype or cfg.param_dtype,
    }
    out.update({k: v for k, v in (extra or {}).items() if k in TOKEN_ID_KEYS})
    out.update(_family_fields_to_hf(cfg, fam))
    return out


def _family_fields_to_hf(cfg: DecoderConfig, fam: Family) -> dict:
    """The sliding-window / soft-cap / query-scale fields, checked against the family."""
    def unsupported(field):
        return ConversionError(f"DecoderConfig.{field}={getattr(cfg, field)!r} cannot be "
                               f"exported as {fam.name}")
    if fam.name != "gemma2" and cfg.query_scale not in (None, cfg.head_dim ** -0.5):
        raise unsupported("query_scale")
    if fam.name in ("llama", "gemma", "qwen2", "qwen3") and cfg.sliding_window:
        raise unsupported("sliding_window")
    if fam.name == "mistral":
        if cfg.sliding_window and cfg.sliding_window_pattern != 1:
            raise unsupported("sliding_window_pattern")
        return {"sliding_window": cfg.sliding_window}
    if fam.name in ("qwen2", "qwen3"):
        return {"use_sliding_window": False, "sliding_window": None,
                "max_window_layers": cfg.num_layers}
    if fam.name == "gemma":
        return {"hidden_activation": "gelu_pytorch_tanh"}
    if fam.name == "gemma2":
        if cfg.sliding_window and cfg.sliding_window_pattern != 2:
            raise unsupported("sliding_window_pattern")
        scalar = (cfg.query_scale or cfg.head_dim ** -0.5) ** -2
        return {
            "hidden_activation": "gelu_pytorch_tanh",
            "query_pre_attn_scalar": round(scalar) if abs(scalar - round(scalar)) < 1e-6 else scalar,
            "attn_logit_softcapping": cfg.attn_logit_softcap,
            "final_logit_softcapping": cfg.final_logit_softcap,
            "sliding_window": cfg.sliding_window or cfg.max_seq_len,
            "layer_types": [_layer_type(cfg, i) for i in range(cfg.num_layers)],
        }
    return {"mlp_bias": False}  # llama


def _layer_type(cfg: DecoderConfig, i: int) -> str:
    local = cfg.sliding_window and i % cfg.sliding_window_pattern == 0
    return "sliding_attention" if local else "full_attention"


def _rope_from_hf(hf: Mapping[str, Any], source: str):
    """(rope_theta, rope_scaling) from either transformers 4 (`rope_theta`, `rope_scaling`)
    or transformers 5 (`rope_parameters`) fields."""
    params = dict(hf.get("rope_parameters") or {})
    theta = float(params.pop("rope_theta", hf.get("rope_theta", 10_000.0)))
    scaling = dict(hf.get("rope_scaling") or params)
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if float(hf.get("partial_rotary_factor", scaling.get("partial_rotary_factor", 1.0))) != 1.0:
        raise ConversionError(f"{source}: field 'partial_rotary_factor' is not supported")
    if kind == "default":
        return theta, None
    keys = {"llama3": LLAMA3_ROPE_KEYS, "linear": ("factor",)}.get(kind)
    if keys is None:
        raise ConversionError(f"{source}: field 'rope_scaling' has rope_type {kind!r}; "
                              "supported: default, linear, llama3")
    missing = [k for k in keys if k not in scaling]
    if missing:
        raise ConversionError(f"{source}: field 'rope_scaling' lacks {missing}")
    return theta, tuple(sorted([("rope_type", kind)] + [(k, scaling[k]) for k in keys]))


def _sliding_from_hf(hf: Mapping[str, Any], fam: Family, num_layers: int, source: str):
    """(sliding_window, sliding_window_pattern): every layer (Mistral) or every
    pattern-th layer starting at 0 (Gemma 2); anything else is refused."""
    window = hf.get("sliding_window")
    if fam.name not in ("mistral", "gemma2") or not window:
        return None, 1
    types = hf.get("layer_types")
    if types is None:
        return int(window), 1 if fam.name == "mistral" else 2
    if len(types) != num_layers:
        raise ConversionError(f"{source}: field 'layer_types' has {len(types)} entries for "
                              f"{num_layers} layers")
    local = [t == "sliding_attention" for t in types]
    if not any(local):
        return None, 1
    for pattern in range(1, num_layers + 1):
        if local == [i % pattern == 0 for i in range(num_layers)]:
            return int(window), pattern
    raise ConversionError(f"{source}: field 'layer_types'={types!r} is not a supported "
                          "pattern (local attention on every k-th layer from layer 0)")


class _Fields:
    """Required config.json fields, with errors that name the field and the file."""

    def __init__(self, hf: Mapping[str, Any], source: str):
        self.hf, self.source = hf, source

    def num(self, name: str):
        value = self.hf.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConversionError(f"{self.source}: field {name!r} must be a number, got {value!r}")
        return value

    def int(self, name: str) -> int:
        value = self.num(name)
        if int(value) != value or value <= 0:
            raise ConversionError(f"{self.source}: field {name!r} must be a positive integer, "
                                  f"got {value!r}")
        return int(value)

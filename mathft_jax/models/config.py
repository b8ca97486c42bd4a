"""`DecoderConfig`: the typed, gin-configurable description of a decoder-only model.

One dataclass covers PaLM (parallel blocks, multi-query attention, SwiGLU, tied
embeddings) and the open families that `convert/hf.py` imports (Llama, Mistral, Qwen2,
Qwen3, Gemma, Gemma 2): the family-specific switches are plain fields with PaLM-neutral defaults.
`validate()` rejects configs that cannot work before anything is traced or compiled.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import gin
import jax.numpy as jnp

ACTIVATIONS = ("swiglu", "geglu", "gelu", "relu")
NORMS = ("rmsnorm", "layernorm")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_attn_out")
ATTENTION_IMPLS = ("xla", "cudnn", "splash")  # splash: Pallas' TPU kernel (models/splash.py)


class ConfigError(ValueError):
    """A model config that cannot work; the message names the offending field."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int = 384
    num_layers: int = 4
    d_model: int = 128
    num_heads: int = 4
    # 1 = multi-query (PaLM); == num_heads = multi-head; in between = grouped-query.
    num_kv_heads: int = 1
    # None: d_model // num_heads, which then requires d_model == num_heads * head_dim.
    head_dim: Optional[int] = 32
    mlp_dim: int = 512
    activation: str = "swiglu"
    # PaLM: y = x + attn(norm(x)) + mlp(norm(x)); sequential (Llama) when False.
    parallel_block: bool = True
    norm: str = "rmsnorm"
    norm_eps: float = 1e-6
    rope_theta: float = 10_000.0
    tie_embeddings: bool = True
    z_loss: float = 1e-4
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    max_seq_len: int = 2048
    attention_impl: str = "xla"
    # --- switches for imported families (convert/hf.py); PaLM-neutral defaults ---
    qkv_bias: bool = False  # Qwen2
    # Qwen3: an RMSNorm over head_dim on every head's query and key, before RoPE.
    qk_norm: bool = False
    # Gemma stores RMSNorm scales as (scale - 1): y = x_hat * (1 + scale).
    norm_scale_offset: float = 0.0
    # Gemma multiplies input embeddings by sqrt(d_model).
    scale_embeddings: bool = False
    # Gemma 2: extra norms after attention and MLP, logit soft-capping, local attention.
    post_block_norms: bool = False
    attn_logit_softcap: Optional[float] = None
    final_logit_softcap: Optional[float] = None
    # Local (sliding-window) attention on every `sliding_window_pattern`-th layer
    # (Gemma 2: even layers, pattern=2) or all layers (Mistral, pattern=1).
    sliding_window: Optional[int] = None
    sliding_window_pattern: int = 1
    # Attention logits scale; None = head_dim ** -0.5 (Gemma 2 uses query_pre_attn_scalar).
    query_scale: Optional[float] = None
    # Llama 3 "rope_scaling": {"factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"}; stored as sorted tuple of pairs (hashable).
    rope_scaling: Optional[tuple] = None
    # HF family this config came from (export uses it); "palm" for our own sizes.
    family: str = "palm"

    def __post_init__(self):
        if self.head_dim is None and self.num_heads and self.d_model % self.num_heads == 0:
            object.__setattr__(self, "head_dim", self.d_model // self.num_heads)
        if isinstance(self.rope_scaling, Mapping):  # gin/JSON give dicts; keep it hashable
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))

    # ---- derived ----
    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> Any:
        return jnp.dtype(self.param_dtype)

    @property
    def gated_mlp(self) -> bool:
        return self.activation in ("swiglu", "geglu")

    @property
    def rope_scaling_dict(self) -> Optional[Mapping[str, float]]:
        return dict(self.rope_scaling) if self.rope_scaling else None

    def replace(self, **kw) -> "DecoderConfig":
        return dataclasses.replace(self, **kw)

    def validate(self, mesh_shape: Optional[Mapping[str, int]] = None) -> "DecoderConfig":
        """Raise ConfigError naming the field if this config cannot work (on this mesh)."""
        if self.head_dim is None:
            raise ConfigError(
                f"DecoderConfig.d_model={self.d_model} must equal num_heads * head_dim when "
                f"head_dim is unset (num_heads={self.num_heads})")
        for name in ("vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads",
                     "head_dim", "mlp_dim", "max_seq_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"DecoderConfig.{name} must be a positive int, got {v!r}")
        _one_of(self, "activation", ACTIVATIONS)
        _one_of(self, "norm", NORMS)
        _one_of(self, "remat_policy", REMAT_POLICIES)
        _one_of(self, "attention_impl", ATTENTION_IMPLS)
        for name in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, name))
            except TypeError as e:
                raise ConfigError(f"DecoderConfig.{name}={getattr(self, name)!r} is no dtype") from e
        if self.attention_impl == "cudnn" and jnp.dtype(self.dtype) not in (jnp.bfloat16,
                                                                             jnp.float16):
            raise ConfigError(f"DecoderConfig.attention_impl='cudnn' needs dtype bfloat16 or "
                              f"float16 (cuDNN's flash attention), got dtype={self.dtype!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"DecoderConfig.num_heads={self.num_heads} must be a multiple of "
                f"num_kv_heads={self.num_kv_heads} (grouped-query attention)")
        if self.head_dim % 2:
            raise ConfigError(f"DecoderConfig.head_dim={self.head_dim} must be even for RoPE")
        if mesh_shape:
            tensor = int(mesh_shape.get("tensor", 1))
            for name in ("num_heads", "mlp_dim", "vocab_size"):  # what the rules put on tensor
                if getattr(self, name) % tensor:
                    raise ConfigError(
                        f"DecoderConfig.{name}={getattr(self, name)} is not divisible by the "
                        f"mesh's tensor axis ({tensor})")
            fsdp = int(mesh_shape.get("fsdp", 1))
            if self.d_model % fsdp:
                raise ConfigError(
                    f"DecoderConfig.d_model={self.d_model} is not divisible by the mesh's "
                    f"fsdp axis ({fsdp})")
        return self


def _one_of(cfg: DecoderConfig, field: str, allowed) -> None:
    if getattr(cfg, field) not in allowed:
        raise ConfigError(f"DecoderConfig.{field}={getattr(cfg, field)!r}; expected one of {allowed}")

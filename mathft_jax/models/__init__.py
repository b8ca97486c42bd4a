"""The PaLM-style decoder, its config and its sizes."""
from mathft_jax.models.config import ConfigError, DecoderConfig
from mathft_jax.models.decoder import Decoder, cache_logical_axes, init_cache, init_params
from mathft_jax.models.sizes import count_params, flops_per_token, kv_cache_bytes_per_token, summary

__all__ = [
    "ConfigError", "DecoderConfig", "Decoder", "init_cache", "cache_logical_axes", "init_params",
    "count_params", "flops_per_token", "kv_cache_bytes_per_token", "summary",
]

"""QLoRA's frozen base: the decoder layers' projection weights stored and multiplied in int8
(or int4, or nf4) by qwix's post-training quantization. No quantization is written here.

    qbase = quantize_base(params, cfg, QuantConfig(weight_dtype="int8"))
    logits = lora.apply(Decoder(cfg), lora.adapted(qbase, adapters, lora_cfg, cfg), tokens)

How qwix does it for a linen model: `qwix.quantize_model` wraps the module's class so that,
inside the modules a rule's `module_path` matches (here the layers' `attention` and `mlp`),
`jnp.einsum` is intercepted. An einsum operand that flax holds as a parameter is a weight:
it is quantized once, per output channel (or in tiles of the contraction axis), into a
`QArray` (int8 values and float32 scales) boxed in a `WithAux` that says how, and the
einsum runs on it. `qwix.quantize_params` does that to float parameters without running
the model, given the quantized model's abstract parameters. The embedding, norms, biases
and head stay float (outside the matched modules, or not einsum operands), and the
adapters are no parameters (the `"lora"` collection), so their einsums stay float too.

`module_for` gives the quantized module when a base holds quantized weights; `lora.apply`
calls it, so every caller (objectives, decoding, scoring, GRPO) computes on a quantized base
unchanged. A quantized base cannot be merged into (`lora.merge`): it serves adapters
unmerged.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from mathft_jax.models.config import ConfigError, DecoderConfig
from mathft_jax.models.decoder import Decoder

QTYPES = ("int8", "int4", "nf4")
# qwix joins the module path with "/": "layers_3/attention", scanned "layers/layer/attention".
PROJECTION_MODULES = r"(.*/)?(attention|mlp)"


@gin.configurable("quantize_base")
@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """How the frozen base is stored, bound as `quantize_base.*`. weight_dtype None: float
    (no quantization); tile_size: scales per block of this many inputs along the contraction
    axis instead of one per output channel (QLoRA's nf4 uses 64)."""

    weight_dtype: Optional[str] = None
    tile_size: Optional[int] = None

    @property
    def enabled(self) -> bool:
        return self.weight_dtype is not None

    def validate(self) -> "QuantConfig":
        if self.weight_dtype is not None and self.weight_dtype not in QTYPES:
            raise ConfigError(f"quantize_base.weight_dtype={self.weight_dtype!r} must be one "
                              f"of {', '.join(QTYPES)} (or None: a float base)")
        if self.tile_size is not None and self.tile_size < 1:
            raise ConfigError(f"quantize_base.tile_size={self.tile_size} must be >= 1")
        return self

    def check_frozen(self, lora) -> None:
        """Only a frozen base is quantized: a training run needs LoRA on (`lora.rank`)."""
        if self.enabled and not lora.enabled:
            raise ConfigError(f"quantize_base.weight_dtype={self.weight_dtype!r} quantizes a "
                              "frozen base: it needs lora.rank > 0 (full fine-tuning trains "
                              "float weights)")


def quantized_module(module: nn.Module, quant: QuantConfig) -> nn.Module:
    """`module` (a Decoder) with its projections' einsums computed on quantized weights."""
    import qwix  # noqa: PLC0415 (optional dependency: only a quantized base needs it)

    rule = qwix.QuantizationRule(module_path=PROJECTION_MODULES, op_names=("einsum",),
                                 weight_qtype=quant.weight_dtype, tile_size=quant.tile_size)
    return qwix.quantize_model(module, qwix.PtqProvider([rule]))


def quantize_base(params, cfg: DecoderConfig, quant: QuantConfig):
    """`params` (float, unboxed) with every projection weight quantized as `quant` says;
    the other leaves are `params`' own arrays."""
    import qwix  # noqa: PLC0415

    quant.validate()
    if not quant.enabled:
        return params
    model = quantized_module(Decoder(cfg), quant)
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))
    return qwix.quantize_params(params, abstract["params"])


def module_for(module: nn.Module, base) -> nn.Module:
    """The module that computes on `base`: quantized when `base` holds quantized weights
    (their settings are read back from them), else `module` itself."""
    how = _first_quantized(base)
    if how is None:
        return module
    tiles = set(how.tiled_axes.values())
    return quantized_module(module, QuantConfig(weight_dtype=str(how.qtype),
                                                tile_size=tiles.pop() if tiles else None))


def is_quantized(base) -> bool:
    return _first_quantized(base) is not None


def _first_quantized(base):
    """The `HowToQuantize` of the first quantized weight of `base`, None if it has none."""
    boxed = _quantized_leaf_type()
    if boxed is None:
        return None
    leaves = jax.tree_util.tree_leaves(base, is_leaf=lambda x: isinstance(x, boxed))
    return next((leaf.how for leaf in leaves if isinstance(leaf, boxed)), None)


@functools.lru_cache(maxsize=None)
def _quantized_leaf_type():
    """qwix's box of a quantized weight; None without qwix (then no base is quantized)."""
    try:
        from qwix._src.providers.ptq import WithAux  # noqa: PLC0415
    except ImportError:
        return None
    return WithAux

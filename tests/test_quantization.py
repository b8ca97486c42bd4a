"""QLoRA's quantized base (models/quantization.py, through qwix): what is stored in int8 or
nf4 and what stays float, the logits' error against the float base, and adapters that train
on it unchanged."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

qwix = pytest.importorskip("qwix")

from mathft_jax.models import ConfigError, Decoder, DecoderConfig, lora as lora_lib  # noqa: E402
from mathft_jax.models import quantization  # noqa: E402
from mathft_jax.models.decoder import abstract_params, init_params  # noqa: E402

CFG = DecoderConfig(vocab_size=64, num_layers=2, d_model=64, num_heads=4, num_kv_heads=2,
                    head_dim=16, mlp_dim=128, max_seq_len=64, parallel_block=False,
                    tie_embeddings=False)
TOKENS = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 1, CFG.vocab_size)
PROJECTIONS = {("attention", w) for w in ("query", "key", "value", "out")} | {
    ("mlp", w) for w in ("wi_0", "wi_1", "wo")}


@pytest.fixture(scope="module")
def params():
    return nn.unbox(jax.jit(init_params, static_argnums=0)(CFG, jax.random.PRNGKey(0)))


def logits(params, adapters=None, lora=None):
    if adapters is not None:
        params = lora_lib.adapted(params, adapters, lora, CFG)
    return np.asarray(lora_lib.apply(Decoder(CFG), params, TOKENS))


def stored(qbase):
    """(module, weight) -> the stored array's dtype, for every leaf of layer 0."""
    layer = qbase["layers_0"]
    out = {}
    for module, leaves in layer.items():
        for name, leaf in leaves.items():
            value = leaf.array.qvalue if quantization.is_quantized(leaf) else leaf
            out[(module, name)] = str(value.dtype)
    return out


@pytest.mark.parametrize("qtype,stored_as,tolerance", [
    ("int8", "int8", 0.05), ("nf4", "uint4", 0.5)])
def test_projections_are_stored_quantized_and_the_rest_float(params, qtype, stored_as,
                                                             tolerance):
    quant = quantization.QuantConfig(weight_dtype=qtype)
    qbase = quantization.quantize_base(params, CFG, quant)
    dtypes = stored(qbase)
    assert {k for k, v in dtypes.items() if v == stored_as} == PROJECTIONS
    assert {v for k, v in dtypes.items() if k not in PROJECTIONS} == {"float32"}
    assert str(qbase["embedding"].dtype) == str(qbase["logits_dense"].dtype) == "float32"
    error = np.abs(logits(qbase) - logits(params))
    assert 0 < error.max() < tolerance * np.abs(logits(params)).max()


def test_int8_is_closer_to_the_float_base_than_nf4(params):
    float_logits = logits(params)
    errors = {q: np.abs(logits(quantization.quantize_base(
        params, CFG, quantization.QuantConfig(weight_dtype=q))) - float_logits).mean()
        for q in ("int8", "nf4")}
    assert errors["int8"] < errors["nf4"] / 4


def test_tiles_give_one_scale_per_block(params):
    qbase = quantization.quantize_base(params, CFG, quantization.QuantConfig("int8", tile_size=16))
    scale = qbase["layers_0"]["mlp"]["wo"].array.scale  # wo [128 in, 64 out]: 8 blocks
    assert scale.shape == (8, 64)
    assert quantization.module_for(Decoder(CFG), qbase) is not Decoder(CFG)


def test_float_base_keeps_its_module(params):
    module = Decoder(CFG)
    assert quantization.module_for(module, params) is module
    assert quantization.quantize_base(params, CFG, quantization.QuantConfig()) is params


def test_adapters_train_on_a_quantized_base(params):
    qbase = quantization.quantize_base(params, CFG, quantization.QuantConfig("int8"))
    lora = lora_lib.LoraConfig(rank=4, alpha=8.0).validate(CFG)
    adapters = lora_lib.init_adapters(lora, CFG, abstract_params(CFG), jax.random.PRNGKey(2))
    # step 0: b is zero, the quantized base's logits exactly
    np.testing.assert_array_equal(logits(qbase, adapters, lora), logits(qbase))

    def loss(adapters):
        out = lora_lib.apply(Decoder(CFG), lora_lib.adapted(qbase, adapters, lora, CFG), TOKENS)
        return jax.nn.logsumexp(out, axis=-1).mean() - out[..., 0].mean()
    grads = jax.grad(loss)(adapters)
    b_norms = [float(jnp.abs(g).max()) for path, g in
               jax.tree_util.tree_leaves_with_path(grads) if path[-1].key == "b"]
    assert len(b_norms) == 7 * CFG.num_layers and min(b_norms) > 0
    # the adapters stay float
    assert {str(x.dtype) for x in jax.tree_util.tree_leaves(adapters)} == {"float32"}


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="quantize_base.weight_dtype='int3'"):
        quantization.QuantConfig(weight_dtype="int3").validate()
    with pytest.raises(ConfigError, match="quantize_base.tile_size=0"):
        quantization.QuantConfig(weight_dtype="int8", tile_size=0).validate()


def test_qlora_training_runs_on_the_quantized_base(tmp_path):
    """train with lora and quantize_base: the step computes on the int8 base (its losses
    differ from the float base's, a little) and the adapters train."""
    from mathft_jax import train
    from mathft_jax.convert import checkpoints
    from mathft_jax.core.metrics_writer import read_metrics
    from mathft_jax.models import partitioning
    from train_utils import TINY, ArrayIterator
    checkpoints.save_params(str(tmp_path / "base"), nn.unbox(init_params(TINY, jax.random.PRNGKey(0))))
    settings = lora_lib.LoraConfig(rank=4, alpha=8.0)

    def losses(name, quant):
        train.train(model_dir=str(tmp_path / name), total_steps=3, batch_size=8,
                    sequence_length=16, model=TINY, progress=False, log_every=1,
                    init_checkpoint=str(tmp_path / "base"), lora=settings, quantize=quant,
                    data_iterator=ArrayIterator(),
                    mesh_fn=lambda: partitioning.make_mesh(devices=jax.devices()[:1]))
        return np.array([r["train/loss"] for r in read_metrics(str(tmp_path / name))])
    floats = losses("float", quantization.QuantConfig())
    int8 = losses("int8", quantization.QuantConfig("int8"))
    assert np.all(np.isfinite(int8)) and len(int8) == 3
    assert 0 < np.abs(int8 - floats).max() < 0.05
    assert int8[-1] < int8[0]


def test_quantizing_needs_a_frozen_base():
    from mathft_jax.train import TrainConfig
    with pytest.raises(ConfigError, match="needs lora.rank > 0"):
        TrainConfig(model_dir="x", model=CFG, quantize=quantization.QuantConfig("int8")).validate()

"""LoRA adapters on the model: an untrained set is the base exactly, merged and unmerged
logits agree for every target (scanned or not, a layer range too), dropout draws only with
a key, and the engine samples the same tokens merged and unmerged."""
import dataclasses
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mathft_jax.models import Decoder, lora
from mathft_jax.models.config import ConfigError
from mathft_jax.models.decoder import abstract_params, init_params
from mathft_jax.sampling import decoding, engine
from train_utils import TINY

GATED = TINY  # swiglu: gate (wi_0), up (wi_1) and down (wo)
RANK4 = lora.LoraConfig(rank=4, alpha=8.0)


def _base(cfg, seed=0):
    return nn.unbox(init_params(cfg, jax.random.PRNGKey(seed)))


def _tokens(b=2, t=12, seed=3):
    return jax.random.randint(jax.random.PRNGKey(seed), (b, t), 1, TINY.vocab_size)


def _trained(cfg, settings, seed=1):
    """Adapters as after some training: `b` no longer zero."""
    adapters = lora.init_adapters(settings, cfg, abstract_params(cfg), jax.random.PRNGKey(seed))
    key = jax.random.PRNGKey(seed + 100)

    def noisy(path, x):
        if path[-1].key != "b":
            return x
        k = jax.random.fold_in(key, zlib.crc32(jax.tree_util.keystr(path).encode()) % (1 << 30))
        return 0.3 * jax.random.normal(k, x.shape, x.dtype)
    return jax.tree_util.tree_map_with_path(noisy, adapters)


def _logits(cfg, params, tokens):
    return lora.apply(Decoder(cfg), params, tokens)


@pytest.mark.parametrize("scan", [False, True])
def test_fresh_adapters_leave_the_base_model_unchanged(scan):
    cfg = dataclasses.replace(GATED, scan_layers=scan)
    base, tokens = _base(cfg), _tokens()
    adapters = lora.init_adapters(RANK4, cfg, abstract_params(cfg), jax.random.PRNGKey(1))
    first = jax.tree_util.tree_leaves(adapters)[0]
    assert float(jnp.abs(first).max()) > 0  # `a` is random ...
    assert all(not np.any(pair["b"]) for pair in _pairs(adapters))  # ... `b` zero
    np.testing.assert_array_equal(_logits(cfg, lora.adapted(base, adapters, RANK4, cfg), tokens),
                                  _logits(cfg, base, tokens))


def _pairs(tree):
    if "a" in tree and "b" in tree:
        return [tree]
    return [p for v in tree.values() for p in _pairs(v)]


def test_adapter_shapes_and_logical_axes_follow_the_weights():
    boxes = lora.adapter_boxes(RANK4, GATED, abstract_params(GATED))
    out = boxes["layers_1"]["attention"]["out"]
    assert out["a"].value.shape == (4, 8, 4) and out["a"].names == ("heads", "head_dim", "lora_rank")
    assert out["b"].value.shape == (4, 32) and out["b"].names == ("lora_rank", "embed")
    up = boxes["layers_0"]["mlp"]["wi_1"]
    assert up["a"].names == ("embed", "lora_rank") and up["b"].names == ("lora_rank", "mlp")
    scanned = dataclasses.replace(GATED, scan_layers=True)
    q = lora.adapter_boxes(RANK4, scanned, abstract_params(scanned))["layers"]["layer"]
    assert q["attention"]["query"]["b"].value.shape == (2, 4, 4, 8)
    assert q["attention"]["query"]["b"].names == ("layers", "lora_rank", "heads", "head_dim")


@pytest.mark.parametrize("target", lora.ALL_TARGETS)
def test_each_target_changes_the_model_and_merged_equals_unmerged(target):
    settings = lora.LoraConfig(rank=3, alpha=6.0, targets=(target,))
    base, tokens = _base(GATED), _tokens()
    adapters = _trained(GATED, settings)
    unmerged = _logits(GATED, lora.adapted(base, adapters, settings, GATED), tokens)
    merged = _logits(GATED, lora.merge(base, adapters, settings, GATED), tokens)
    assert float(jnp.abs(unmerged - _logits(GATED, base, tokens)).max()) > 1e-3
    np.testing.assert_allclose(merged, unmerged, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scan", [False, True])
def test_a_layer_range_adapts_only_its_layers(scan):
    cfg = dataclasses.replace(GATED, scan_layers=scan)
    settings = lora.LoraConfig(rank=2, alpha=2.0, layers=(1, 2))
    base, tokens = _base(cfg), _tokens()
    adapters = _trained(cfg, settings)
    merged = lora.merge(base, adapters, settings, cfg)
    if scan:
        first = lambda t: jax.tree_util.tree_map(lambda x: x[0], t["layers"]["layer"])  # noqa: E731
        assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, first(merged),
                                                             first(base)))
        assert not np.array_equal(merged["layers"]["layer"]["mlp"]["wo"][1],
                                  base["layers"]["layer"]["mlp"]["wo"][1])
    else:
        assert "layers_0" not in adapters
        assert merged["layers_0"]["mlp"]["wo"] is base["layers_0"]["mlp"]["wo"]  # untouched
    np.testing.assert_allclose(_logits(cfg, merged, tokens),
                               _logits(cfg, lora.adapted(base, adapters, settings, cfg), tokens),
                               atol=1e-5, rtol=0)


def test_scale_is_alpha_over_rank():
    settings = lora.LoraConfig(rank=2, alpha=6.0, targets=("down",))
    base = _base(TINY)
    adapters = _trained(TINY, settings)
    merged = lora.merge(base, adapters, settings, TINY)
    pair = adapters["layers_0"]["mlp"]["wo"]
    np.testing.assert_allclose(merged["layers_0"]["mlp"]["wo"] - base["layers_0"]["mlp"]["wo"],
                               3.0 * pair["a"] @ pair["b"], atol=1e-6)


def test_dropout_draws_only_with_a_key():
    settings = lora.LoraConfig(rank=4, alpha=8.0, dropout=0.5)
    base, tokens = _base(TINY), _tokens()
    adapters = _trained(TINY, settings)
    model = Decoder(TINY, lora_dropout=settings.dropout)
    plain = lora.apply(model, lora.adapted(base, adapters, settings, TINY), tokens)
    np.testing.assert_allclose(plain, _logits(TINY, lora.merge(base, adapters, settings, TINY),
                                              tokens), atol=1e-5)
    keyed = [lora.apply(model, lora.adapted(base, adapters, settings, TINY,
                                            jax.random.PRNGKey(k)), tokens) for k in (0, 0, 1)]
    np.testing.assert_array_equal(keyed[0], keyed[1])
    assert not np.allclose(keyed[0], plain) and not np.allclose(keyed[0], keyed[2])


def test_bad_settings_fail_naming_the_binding():
    for bad, match in ((lora.LoraConfig(rank=-1), "lora.rank=-1"),
                       (lora.LoraConfig(rank=2, targets=("qq",)), "lora.targets"),
                       (lora.LoraConfig(rank=2, layers=(1, 5)), "lora.layers"),
                       (lora.LoraConfig(rank=2, dropout=1.0), "lora.dropout"),
                       (lora.LoraConfig(rank=2, start="later"), "lora.start")):
        with pytest.raises(ConfigError, match=match):
            bad.validate(TINY)
    with pytest.raises(ConfigError, match="not gated"):
        lora.LoraConfig(rank=2, targets=("up",)).validate(
            dataclasses.replace(TINY, activation="gelu"))
    assert lora.LoraConfig().validate(TINY).enabled is False


@pytest.mark.parametrize("scan", [False, True])
def test_engine_samples_the_same_tokens_merged_and_unmerged(scan):
    cfg = dataclasses.replace(GATED, scan_layers=scan)
    base = _base(cfg)
    adapters = _trained(cfg, RANK4)
    prompts = [[2, 5, 7], [3, 9], [4, 4, 4, 6], [8]]
    sampling = decoding.SamplingParams(num_samples=2, max_decode_len=10, temperature=1.0,
                                       eos_id=1)
    merged = engine.generate(lora.merge(base, adapters, RANK4, cfg), cfg, prompts, sampling,
                             seed=4, slots=8, chunk=4)
    unmerged = engine.generate(lora.adapted(base, adapters, RANK4, cfg), cfg, prompts, sampling,
                               seed=4, slots=8, chunk=4)
    np.testing.assert_array_equal(merged.tokens, unmerged.tokens)
    np.testing.assert_array_equal(merged.lengths, unmerged.lengths)
    np.testing.assert_allclose(merged.logprobs, unmerged.logprobs, atol=1e-4)
    plain = engine.generate(base, cfg, prompts, sampling, seed=4, slots=8, chunk=4)
    assert not np.array_equal(plain.tokens, merged.tokens)  # the adapters do change samples

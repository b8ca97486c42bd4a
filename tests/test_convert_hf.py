"""HF import/export: logit parity per family (packed and unpacked), round trips through
our checkpoint and back into transformers, streaming memory, bad input, tokenizer ids,
and the published sizes of the gin configs. Tiny random models, no downloads."""
import gc
import json
import os
import pathlib
import subprocess
import sys
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mathft_jax.core import gin_utils  # noqa: E402
from mathft_jax.models.config import DecoderConfig  # noqa: E402
from mathft_jax.models import partitioning
from mathft_jax.convert import families, hf, model_gin, tokenizer  # noqa: E402
from mathft_jax.convert.errors import ConversionError  # noqa: E402
from mathft_jax.convert.export_hf import export_checkpoint  # noqa: E402
from mathft_jax.convert.import_hf import import_checkpoint  # noqa: E402
from mathft_jax.models import Decoder, count_params  # noqa: E402
from waiting import HANG_LIMIT_S  # noqa: E402
from xla_env import one_device_env  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
VOCAB = 128
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
# family -> (config class, model class, config overrides). The knobs are set so each
# feature changes the logits of 14-token inputs (windows of 4, llama3 scaling from 8).
FAMILY_MODELS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(
        rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                           "original_max_position_embeddings": 8})),
    "llama2": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=4)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=4)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    # head_dim explicit and != hidden_size / heads (24 against 16), as Qwen3's are
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=24, tie_word_embeddings=True)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(head_dim=16, num_key_value_heads=1)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        head_dim=16, sliding_window=4, query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0)),
}
# Fields whose removal must break parity: proves the test sees each family feature.
SENSITIVE = {
    "llama": {"rope_scaling": None},
    "llama2": {"rope_theta": 1e6},
    "mistral": {"sliding_window": None},
    "qwen2": {"qkv_bias": False},
    "qwen3": {"qk_norm": False},
    "gemma": {"scale_embeddings": False},
    "gemma2": {"attn_logit_softcap": None, "final_logit_softcap": None, "sliding_window": None,
               "query_scale": None, "post_block_norms": False},
}


def build_hf_model(family, seed=0, **overrides):
    cfg_cls, model_cls, extra = FAMILY_MODELS[family]
    config = getattr(transformers, cfg_cls)(**{**COMMON, **extra, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)._from_config(config, attn_implementation="eager")
    with torch.no_grad():  # HF zero-inits biases and norms; randomise so they matter
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def hf_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens))).logits.float().numpy()


def our_logits(cfg, params, tokens, **kw) -> np.ndarray:
    return np.asarray(Decoder(cfg).apply({"params": params}, jnp.asarray(tokens), **kw))


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> (hf_dir, transformers model), built once per module."""
    cache = {}

    def get(family):
        if family not in cache:
            model = build_hf_model(family)
            path = tmp_path_factory.mktemp(family)
            model.save_pretrained(path)
            cache[family] = (path, model)
        return cache[family]
    return get


def tree_equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    return [p for p, _ in la] == [p for p, _ in lb] and all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for (_, x), (_, y) in zip(la, lb))


# ---------------------------------------------------------------- parity
@pytest.mark.parametrize("family", list(FAMILY_MODELS))
def test_logit_parity_unpacked_and_packed(saved, family):
    hf_dir, model = saved(family)
    cfg, params = hf.load_hf(hf_dir, dtype="float32")
    tokens = np.random.RandomState(1).randint(0, VOCAB, (2, 14))
    ref = hf_logits(model, tokens)
    assert max_diff(our_logits(cfg, params, tokens), ref) <= 1e-4

    # Packed: rows [a(6) b(8)] and [c(9) pad(5)] against HF run on each sequence alone.
    a, b, c = tokens[0, :6], tokens[1, :8], tokens[1, 5:14]
    packed = np.zeros((2, 14), np.int64)
    packed[0] = np.concatenate([a, b])
    packed[1, :9] = c
    segments = np.array([[1] * 6 + [2] * 8, [1] * 9 + [0] * 5])
    positions = np.array([list(range(6)) + list(range(8)), list(range(9)) + [0] * 5])
    ours = our_logits(cfg, params, packed, positions=jnp.asarray(positions),
                      segment_ids=jnp.asarray(segments))
    assert max_diff(ours[0, :6], hf_logits(model, a[None])[0]) <= 1e-4
    assert max_diff(ours[0, 6:], hf_logits(model, b[None])[0]) <= 1e-4
    assert max_diff(ours[1, :9], hf_logits(model, c[None])[0]) <= 1e-4

    for field, value in SENSITIVE[family].items():  # the comparison can fail
        broken = cfg.replace(**{field: value})
        assert max_diff(our_logits(broken, params, tokens), ref) > 1e-3, field


def test_config_mapping_reads_family_fields(saved):
    cfg, _ = hf.load_hf(saved("gemma2")[0], dtype="float32")
    assert (cfg.family, cfg.sliding_window, cfg.sliding_window_pattern) == ("gemma2", 4, 2)
    assert (cfg.attn_logit_softcap, cfg.final_logit_softcap) == (2.0, 3.0)
    assert cfg.query_scale == pytest.approx(24 ** -0.5)
    assert cfg.norm_scale_offset == 1.0 and cfg.scale_embeddings and cfg.tie_embeddings
    cfg, _ = hf.load_hf(saved("llama")[0], dtype="float32")
    assert cfg.rope_theta == 500000.0 and cfg.rope_scaling_dict["rope_type"] == "llama3"
    assert not cfg.tie_embeddings and cfg.num_kv_heads == 2 and not cfg.parallel_block
    cfg, params = hf.load_hf(saved("qwen3")[0], dtype="float32")
    assert cfg.qk_norm and not cfg.qkv_bias and cfg.head_dim == 24 and cfg.tie_embeddings
    attention = params["layers_1"]["attention"]
    assert attention["query_norm"]["scale"].shape == attention["key_norm"]["scale"].shape == (24,)
    assert "query_bias" not in attention and "logits_dense" not in params


def _param_paths(cfg) -> set:
    from flax import linen as nn
    from mathft_jax.models.decoder import abstract_params
    return {jax.tree_util.keystr(p)
            for p, _ in jax.tree_util.tree_leaves_with_path(nn.unbox(abstract_params(cfg)))}


def test_qk_norm_off_leaves_the_parameter_tree_as_it_was():
    """Models without q/k norms (every family but Qwen3, and ours) keep their parameters."""
    llama = DecoderConfig(family="llama", parallel_block=False, num_layers=1)
    assert not any("_norm" in p for p in _param_paths(llama) if "['attention']" in p)
    assert _param_paths(llama.replace(qk_norm=True)) - _param_paths(llama) == {
        "['layers_0']['attention']['query_norm']['scale']",
        "['layers_0']['attention']['key_norm']['scale']"}


def test_sharded_and_scanned_import(saved):
    hf_dir, model = saved("llama")
    tokens = np.random.RandomState(2).randint(0, VOCAB, (4, 10))  # batch over data*fsdp
    ref = hf_logits(model, tokens)
    mesh = partitioning.make_mesh(data=2, fsdp=2, tensor=2)
    cfg, params = hf.load_hf(hf_dir, mesh=mesh, dtype="float32")
    partitioner = partitioning.Partitioner.create(cfg, mesh)
    shardings = partitioner.param_shardings(cfg)
    q = params["layers_0"]["attention"]["query"]
    assert q.sharding.is_equivalent_to(shardings["layers_0"]["attention"]["query"], q.ndim)
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (32, 2, 16)
    with partitioner.context():
        assert max_diff(our_logits(cfg, params, tokens), ref) <= 1e-4

    cfg_s, stacked = hf.load_hf(hf_dir, dtype="float32", scan_layers=True)
    assert stacked["layers"]["layer"]["mlp"]["wi_0"].shape == (2, 64, 96)
    assert max_diff(our_logits(cfg_s, stacked, tokens), ref) <= 1e-4


def test_bfloat16_checkpoint_keeps_its_dtype(tmp_path):
    model = build_hf_model("qwen2").to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    cfg, params = hf.load_hf(tmp_path)
    assert cfg.param_dtype == "bfloat16" and params["embedding"].dtype == jnp.bfloat16
    want = model.model.layers[1].self_attn.k_proj.weight.detach().float().numpy()  # [kvh*hd, d]
    got = np.asarray(params["layers_1"]["attention"]["key"], np.float32)  # [d, kvh, hd]
    assert np.array_equal(got.reshape(64, -1).T, want)


def test_bfloat16_import_fine_tunes_in_float32_and_exports_as_it_came(tmp_path):
    from mathft_jax.convert import checkpoints
    model = build_hf_model("qwen2").to(torch.bfloat16)
    model.save_pretrained(tmp_path / "hf")
    _, original = hf.load_hf(tmp_path / "hf")  # bfloat16, as stored
    cfg = import_checkpoint(tmp_path / "hf", tmp_path / "ckpt")
    assert model_gin.read_model_gin(tmp_path / "ckpt" / "model.gin") == cfg
    # float32 master weights (and so optimizer state) for fine-tuning, bfloat16 compute
    assert (cfg.param_dtype, cfg.dtype) == ("float32", "bfloat16")
    loaded = checkpoints.load_params(str(tmp_path / "ckpt"), cfg)
    assert loaded["embedding"].dtype == jnp.float32
    assert tree_equal(jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), loaded), original)
    export_checkpoint(tmp_path / "ckpt", tmp_path / "export")
    _, exported = hf.load_hf(tmp_path / "export")
    assert tree_equal(exported, original)  # bfloat16 again, bit for bit


# ---------------------------------------------------------------- round trip
@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"])
def test_round_trip_through_checkpoint_and_transformers(saved, tmp_path, family):
    hf_dir, model = saved(family)
    cfg, params = hf.load_hf(hf_dir, dtype="float32")
    import_checkpoint(hf_dir, tmp_path / "ckpt", dtype="float32")
    export_checkpoint(tmp_path / "ckpt", tmp_path / "export", max_shard_bytes=40_000)
    exported = sorted(p.name for p in (tmp_path / "export").iterdir())
    assert "model.safetensors.index.json" in exported and "config.json" in exported
    assert sum(n.endswith(".safetensors") for n in exported) > 1  # really sharded

    cfg2, params2 = hf.load_hf(tmp_path / "export", dtype="float32")
    assert cfg2 == cfg and tree_equal(params2, params)

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "export", attn_implementation="eager")
    assert type(reloaded) is type(model)
    tokens = np.random.RandomState(3).randint(0, VOCAB, (2, 12))
    assert np.array_equal(hf_logits(reloaded, tokens), hf_logits(model, tokens))


def test_import_cli_output_reads_in_trainer_and_gin(saved, tmp_path):
    hf_dir, _ = saved("gemma")
    out = tmp_path / "ckpt"
    env = one_device_env(JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-m", "mathft_jax.convert.import_hf", f"--hf_dir={hf_dir}",
                    f"--out={out}", "--dtype=float32"], check=True, env=env, cwd=REPO,
                   timeout=HANG_LIMIT_S)
    cfg, params = hf.load_hf(hf_dir, dtype="float32")
    from mathft_jax.convert import checkpoints  # train.init_checkpoint's reader
    assert tree_equal(checkpoints.load_params(str(out), cfg), params)
    gin_utils.parse_gin([str(out / "model.gin")])
    assert DecoderConfig() == cfg
    assert model_gin.read_model_gin(out / "model.gin") == cfg
    assert (out / "hf" / "config.json").exists()


def test_converters_do_not_import_torch_or_transformers():
    code = ("import sys, mathft_jax.models, mathft_jax.convert.import_hf, "
            "mathft_jax.convert.export_hf; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=HANG_LIMIT_S,
                   env={**os.environ, "JAX_PLATFORMS": "cpu"})


# ---------------------------------------------------------------- streaming memory
def test_import_streams_one_tensor_at_a_time(tmp_path):
    """~65 MB model. numpy allocations during import (tracemalloc sees them; XLA's device
    buffers it does not) peak at what the output itself keeps (CPU jax may alias a numpy
    buffer as a device buffer) plus under two of the largest tensor: one read and at most
    one converted copy. Nothing else outlives the call, so no second copy of the model."""
    model = build_hf_model("llama", vocab_size=4096, hidden_size=512, intermediate_size=1408,
                           num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8,
                           rope_scaling=None)
    model.save_pretrained(tmp_path, max_shard_size="20MB")
    total = sum(p.numel() * 4 for p in model.parameters())
    largest = max(p.numel() * 4 for p in model.parameters())
    assert total > 45e6 and largest < total / 6
    del model
    hf.load_hf(tmp_path, dtype="float32")  # warm up: imports, tracing caches
    tracemalloc.start()
    try:
        cfg, params = hf.load_hf(tmp_path, dtype="float32")
        held, peak = tracemalloc.get_traced_memory()
        assert sum(x.size * 4 for x in jax.tree_util.tree_leaves(params)) == total
        del params
        gc.collect()
        left = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert peak - held <= 2 * largest + 2e6, (peak, held, largest)
    assert held <= total + 2e6 and left <= 2e6, (held, left)  # held = output buffers only


# ---------------------------------------------------------------- bad input
def _sharded_copy(saved, tmp_path, family="llama"):
    hf_dir, model = saved(family)
    model.save_pretrained(tmp_path / "src", max_shard_size="60KB")
    index = json.loads((tmp_path / "src" / "model.safetensors.index.json").read_text())
    return tmp_path / "src", sorted(set(index["weight_map"].values()))


def _assert_nothing_written(hf_dir, out, match):
    with pytest.raises(ConversionError, match=match):
        import_checkpoint(hf_dir, out)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_missing_shard_is_named(saved, tmp_path):
    src, shards = _sharded_copy(saved, tmp_path)
    assert len(shards) > 1
    (src / shards[1]).unlink()
    _assert_nothing_written(src, tmp_path / "out", shards[1])


def test_truncated_safetensors_is_named(saved, tmp_path):
    src, shards = _sharded_copy(saved, tmp_path)
    data = (src / shards[0]).read_bytes()
    (src / shards[0]).write_bytes(data[: len(data) // 2])
    _assert_nothing_written(src, tmp_path / "out", shards[0])


def test_unknown_architecture_is_named(saved, tmp_path):
    src, _ = _sharded_copy(saved, tmp_path)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(
        {**config, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    _assert_nothing_written(src, tmp_path / "out", "architecture.*GPT2LMHeadModel")


def test_shape_mismatch_names_the_tensor(saved, tmp_path):
    src, _ = _sharded_copy(saved, tmp_path)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "intermediate_size": 128}))
    _assert_nothing_written(src, tmp_path / "out", r"model\.layers\.0\.mlp\.gate_proj\.weight")


def test_existing_output_is_refused_and_untouched(saved, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConversionError, match="not an empty directory"):
        import_checkpoint(saved("llama")[0], out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_export_refuses_configs_without_hf_equivalent():
    from mathft_jax.models import DecoderConfig
    with pytest.raises(ConversionError, match="family"):
        families.hf_config_from_decoder(DecoderConfig())
    llama = DecoderConfig(family="llama", parallel_block=False, activation="swiglu")
    families.hf_config_from_decoder(llama)
    with pytest.raises(ConversionError, match="sliding_window"):
        families.hf_config_from_decoder(llama.replace(sliding_window=8))
    with pytest.raises(ConversionError, match="parallel_block"):
        families.hf_config_from_decoder(llama.replace(parallel_block=True))


# ---------------------------------------------------------------- tokenizer
def _hf_dir_with_tokenizer(saved, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    hf_dir, model = saved("qwen2")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "x": 3, "+": 4, "1": 5}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    d = tmp_path / "hf"
    model.save_pretrained(d)
    tok.save(str(d / "tokenizer.json"))
    config = json.loads((d / "config.json").read_text())
    config.update(bos_token_id=None, eos_token_id=[2, 5])  # list: Llama 3 instruct style
    (d / "config.json").write_text(json.dumps(config))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    return d


# import_hf run as a user runs it, with a hook recording any attempt to import TensorFlow.
_IMPORT_WITHOUT_TF = r"""
import json, runpy, sys
attempts = []
class _Spy:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "seqio"):
            attempts.append(name)
sys.meta_path.insert(0, _Spy())
sys.argv = ["import_hf", "--hf_dir=" + sys.argv[1], "--out=" + sys.argv[2]]
runpy.run_module("mathft_jax.convert.import_hf", run_name="__main__", alter_sys=True)
print("\n" + json.dumps(sorted(set(attempts))))
"""


def test_import_hf_with_a_tokenizer_needs_no_tensorflow(saved, tmp_path):
    d = _hf_dir_with_tokenizer(saved, tmp_path)
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-c", _IMPORT_WITHOUT_TF, str(d), str(tmp_path / "ck")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    ids = json.loads((tmp_path / "ck" / "tokenizer" / "special_ids.json").read_text())
    assert (ids["kind"], ids["bos_id"], ids["eos_id"], ids["decoder_start_id"]) == ("hf", 1, 2, 1)


def test_tokenizer_ids_and_vocabulary(saved, tmp_path):
    d = _hf_dir_with_tokenizer(saved, tmp_path)
    assert tokenizer.special_token_ids(d) == (1, 2)

    import_checkpoint(d, tmp_path / "ckpt", dtype="float32")
    text = (tmp_path / "ckpt" / "vocab.gin").read_text()
    assert "get_vocabulary.bos_id = 1" in text and "get_vocabulary.eos_id = 2" in text
    assert str(tmp_path / "ckpt" / "tokenizer" / "tokenizer.json") in text
    pytest.importorskip("seqio")
    vocabulary = tokenizer.hf_vocabulary(tmp_path / "ckpt" / "hf")
    assert (vocabulary.bos_id, vocabulary.eos_id) == (1, 2)
    assert list(vocabulary.encode("x + 1")) == [3, 4, 5]
    import gin
    from mathft_jax.data import vocab as vocab_lib
    # vocab.gin makes get_vocabulary() (what train and infer call) this tokenizer
    gin.parse_config_file(str(tmp_path / "ckpt" / "vocab.gin"))
    configured = vocab_lib.get_vocabulary()
    assert (configured.bos_id, configured.eos_id, configured.vocab_size) == (1, 2, 6)


def test_converter_errors_are_one_line_on_the_command_line(saved, tmp_path):
    d = _hf_dir_with_tokenizer(saved, tmp_path)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "eos_token_id": None}))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    with pytest.raises(ConversionError, match="names no EOS token"):
        tokenizer.hf_tokenizer_files(d)

    def cli(tool, *args):
        return subprocess.run([sys.executable, "-m", f"mathft_jax.convert.{tool}", *args],
                              capture_output=True, text=True, cwd=REPO, timeout=HANG_LIMIT_S,
                              env=one_device_env(JAX_PLATFORMS="cpu"))
    no_eos = cli("import_hf", f"--hf_dir={d}", f"--out={tmp_path / 'ck'}")
    assert no_eos.returncode == 1 and "Traceback" not in no_eos.stderr, no_eos.stderr[-2000:]
    assert no_eos.stderr.strip().splitlines()[-1].startswith("import_hf: error: ")
    assert "names no EOS token" in no_eos.stderr and not (tmp_path / "ck").exists()
    missing = cli("export_hf", f"--checkpoint={tmp_path / 'nope'}", f"--out={tmp_path / 'ex'}",
                  "--debug")  # the traceback too, on request
    assert missing.returncode == 1 and "Traceback" in missing.stderr
    assert missing.stderr.strip().splitlines()[-1].startswith("export_hf: error: ")


# ---------------------------------------------------------------- published sizes
PUBLISHED = {  # parameters, from the model cards (HF "Model size")
    "llama3_8b": 8.03e9, "qwen2_7b": 7.62e9, "qwen2.5_math_1.5b": 1.54e9,
    "gemma2_2b": 2.61e9, "mistral_7b": 7.24e9,
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_sizes(name):
    cfg = model_gin.read_model_gin(REPO / "gin_configs" / "models" / f"{name}.gin").validate()
    assert abs(count_params(cfg) - PUBLISHED[name]) <= 0.01 * PUBLISHED[name]
    families.hf_config_from_decoder(cfg)  # each is a family we can export

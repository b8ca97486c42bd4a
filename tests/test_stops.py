"""Stop strings and stop ids: each ends a sample at the token that completes it, in the
static and the continuous engine alike, with a byte-level BPE trained on MATH text (plus a
chat model's `<|im_end|>` special token); infer's records, resume and settings with stops."""
import dataclasses
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from mathft_jax import infer as infer_lib
from mathft_jax.convert import checkpoints, tokenizer as tokenizer_lib
from mathft_jax.core import settings
from mathft_jax.models import DecoderConfig
from mathft_jax.models.decoder import init_params
from mathft_jax.sampling import decoding, engine, stops
from mathft_jax.sampling.decoding import SamplingParams
from engine_faults import crash_on_chunk
from real_path_utils import BOS, EOS, math_lines, train_tokenizer

IM_END = "<|im_end|>"
PROBLEMS = ["What is $2+3$?", "Find $x$ if $2x = 10$.", "Compute $\\frac{1}{2}+\\frac{1}{3}$.",
            "How many primes are below 20?", "Simplify $\\sqrt{50}$."]
MAX_LEN, N, SEED = 24, 3, 4


@pytest.fixture(scope="module")
def vocab(data_dir, tmp_path_factory):
    """The trained tokenizer with a chat model's end-of-turn special token added."""
    import tokenizers

    from mathft_jax.data.vocab import HfTokenizerVocabulary

    path = train_tokenizer(math_lines(data_dir, limit=300), tmp_path_factory.mktemp("tok"))
    tok = tokenizers.Tokenizer.from_file(str(path))
    tok.add_special_tokens([IM_END])
    tok.save(str(path))
    return HfTokenizerVocabulary(str(path), eos_id=EOS, bos_id=BOS)


@pytest.fixture(scope="module")
def model(vocab):
    """A tiny random model over the tokenizer's ids, its `<|im_end|>` embedding scaled up so
    that some samples emit it (tied embeddings: the row is also its output weights)."""
    cfg = DecoderConfig(vocab_size=vocab.vocab_size, num_layers=2, d_model=32, num_heads=4,
                        num_kv_heads=2, head_dim=8, mlp_dim=64, max_seq_len=128)
    params = jax.tree_util.tree_map(lambda x: x * 3.0,
                                    nn.unbox(init_params(cfg, jax.random.PRNGKey(0))))
    im_end = vocab.tokenizer.token_to_id(IM_END)
    params["embedding"] = params["embedding"].at[im_end].multiply(2.0)
    return cfg, params


def prompts_of(vocab):
    return [[BOS] + list(vocab.encode(f"Problem:\n{p}\n\nSolution:\n")) for p in PROBLEMS]


def sampling(**kw):
    return SamplingParams(num_samples=N, max_decode_len=MAX_LEN, temperature=1.0, eos_id=EOS, **kw)


def first_holding(vocab, tokens, strings):
    """The reference: the shortest prefix whose text holds a string, found by decoding every
    prefix (None: no prefix does)."""
    for k in range(1, len(tokens) + 1):
        text = vocab.decode(tokens[:k])
        if any(s in text for s in strings):
            return k
    return None


# ----------------------------------------------------------------------------- the matcher


def test_first_stop_is_the_token_completing_the_string(vocab):
    text = "so $x = 5$.\n\nProblem:\nFind $y$.</s> and more"
    tokens = list(vocab.encode(text))
    for strings in [("\n\nProblem:",), ("Probl",), ("$y", "\n\nProblem:"), ("5$.\n",)]:
        want = first_holding(vocab, tokens, strings)
        stop = stops.StopStrings(strings, vocab.decode)
        assert stop.first_stop(tokens) == want, strings
        assert stop.first_stop(tokens, checked=want - 1) == want
        assert not stop.holds(tokens[:want - 1]) and stop.holds(tokens[:want])
    assert len(vocab.encode("\n\nProblem:")) > 1, "the string must span several tokens"
    assert stops.StopStrings(("Lemma",), vocab.decode).first_stop(tokens) is None
    # A special token never shows in the decoded text: infer makes it a stop id instead.
    assert EOS in tokens and stops.StopStrings(("</s>",), vocab.decode).first_stop(tokens) is None
    cut = stops.cut_text(vocab.decode(tokens), ("Problem:", "\n\n"))
    assert cut == "so $x = 5$."


def test_bad_stop_settings_raise():
    with pytest.raises(ValueError, match="stop_strings must hold non-empty strings"):
        SamplingParams(stop_strings=("",)).validate()
    with pytest.raises(ValueError, match="stop_strings must be a tuple of strings"):
        SamplingParams(stop_strings="</s>").validate()
    with pytest.raises(ValueError, match="stop_ids must be a tuple of token ids"):
        SamplingParams(stop_ids=(-1,)).validate()
    assert SamplingParams(stop_ids=[5, 1], eos_id=1).end_ids == (1, 5)  # lists from gin
    with pytest.raises(ValueError, match="stop_strings need the vocabulary's decode"):
        decoding.generate(None, DecoderConfig(), [[1]], SamplingParams(stop_strings=("x",)))
    base = dict(checkpoint="c", output_path="o")
    with pytest.raises(settings.SettingError, match="infer.stop_strings must hold non-empty"):
        infer_lib.InferConfig(**base, stop_strings=("a", "")).validate()
    with pytest.raises(settings.SettingError, match=r"infer.stop_ids=\('7',\) must be a tuple"):
        infer_lib.InferConfig(**base, stop_ids=("7",)).validate()
    assert infer_lib.InferConfig(**base, stop_strings=["a"]).validate().stop_strings == ("a",)


# ----------------------------------------------------------------------------- both engines


@pytest.fixture(scope="module")
def baseline(vocab, model):
    """Samples without stops: the stopped samples must be their prefixes."""
    cfg, params = model
    return decoding.generate(params, cfg, prompts_of(vocab), sampling(), seed=SEED)


def both_engines(vocab, model, sp):
    cfg, params = model
    prompts = prompts_of(vocab)
    static = decoding.generate(params, cfg, prompts, sp, seed=SEED, decode=vocab.decode)
    continuous = engine.generate(params, cfg, prompts, sp, seed=SEED, slots=4, chunk=5,
                                 decode=vocab.decode)
    np.testing.assert_array_equal(continuous.lengths, static.lengths)
    np.testing.assert_array_equal(continuous.tokens, static.tokens)
    # other slot counts than static batching's rows: other batch shapes, last bits apart
    # (tests/test_engine.py); infer's defaults give the same file, byte for byte (below)
    np.testing.assert_allclose(continuous.logprobs, static.logprobs, rtol=1e-5, atol=1e-5)
    return static


def spanning_string(vocab, tokens):
    """(string, k): a string of the sample's text that starts inside one token and ends one
    character into the k-th token, four tokens on, and occurs nowhere earlier."""
    ends = [len(vocab.decode(tokens[:m])) for m in range(len(tokens) + 1)]
    text = vocab.decode(tokens)
    for k in range(4, len(tokens) + 1):
        if ends[k] - ends[k - 1] >= 2 and ends[k - 3] > ends[k - 4]:
            string = text[ends[k - 3] - 1:ends[k - 1] + 1]
            if first_holding(vocab, tokens, (string,)) == k:
                return string, k
    raise AssertionError("no sample text to take a spanning string from")


def test_a_string_spanning_tokens_ends_samples_at_the_same_token_in_both_engines(
        vocab, model, baseline):
    string, k = spanning_string(vocab, baseline.tokens[0, 0, :baseline.lengths[0, 0]].tolist())
    strings = (string, "\n\nProblem:")
    stopped = both_engines(vocab, model, sampling(stop_strings=strings))
    ended = 0
    for i, j in np.ndindex(baseline.lengths.shape):
        full = baseline.tokens[i, j, :baseline.lengths[i, j]].tolist()
        want = first_holding(vocab, full, strings) or len(full)
        ended += want < len(full)
        assert stopped.lengths[i, j] == want, (i, j)
        assert stopped.tokens[i, j, :want].tolist() == full[:want]
        assert (stopped.tokens[i, j, want:] == decoding.PAD_ID).all()
        if want < len(full):  # the dropped tokens' log-probabilities are not counted
            assert stopped.logprobs[i, j] > baseline.logprobs[i, j]
        else:
            np.testing.assert_allclose(stopped.logprobs[i, j], baseline.logprobs[i, j], rtol=1e-6)
    assert stopped.lengths[0, 0] == k and 0 < ended < baseline.lengths.size
    # sample (0, 0)'s log-likelihood is that of its first k tokens
    cfg, params = model
    first_k = decoding.generate(params, cfg, prompts_of(vocab),
                                SamplingParams(num_samples=N, max_decode_len=k, eos_id=EOS),
                                seed=SEED)
    np.testing.assert_allclose(stopped.logprobs[0, 0], first_k.logprobs[0, 0], rtol=1e-5)


def test_a_special_token_ends_samples_on_device_in_both_engines(vocab, model, baseline):
    im_end = vocab.tokenizer.token_to_id(IM_END)
    stopped = both_engines(vocab, model, sampling(stop_ids=(im_end,)))
    emitted = 0
    for i, j in np.ndindex(baseline.lengths.shape):
        full = baseline.tokens[i, j, :baseline.lengths[i, j]].tolist()
        want = full.index(im_end) + 1 if im_end in full else len(full)
        emitted += im_end in full
        assert stopped.tokens[i, j, :stopped.lengths[i, j]].tolist() == full[:want], (i, j)
    assert 0 < emitted < baseline.lengths.size, "some samples, not all, must emit <|im_end|>"
    # the sample's tokens keep the stop id, as they keep an EOS; its text has neither
    sp = sampling(stop_ids=(im_end,))
    assert all(im_end not in seq for i in range(len(PROBLEMS)) for seq in
               stopped.sequences(i, sp.end_ids))


def test_no_stops_change_nothing(vocab, model, baseline):
    """Stops that never match leave the samples (and their log-likelihoods) as they were."""
    cfg, params = model
    never = sampling(stop_strings=("\u2603never",), stop_ids=(vocab.vocab_size + 5,))
    same = decoding.generate(params, cfg, prompts_of(vocab), never, seed=SEED, decode=vocab.decode)
    np.testing.assert_array_equal(same.tokens, baseline.tokens)
    np.testing.assert_allclose(same.logprobs, baseline.logprobs, rtol=1e-6)


# ----------------------------------------------------------------------------- infer


@pytest.fixture(scope="module")
def infer_setup(vocab, model, tmp_path_factory):
    root = tmp_path_factory.mktemp("stops_infer")
    cfg, params = model
    checkpoints.save_params(str(root / "ckpt"), params)
    with open(root / "problems.jsonl", "w") as f:
        for i, problem in enumerate(PROBLEMS * 2):
            f.write(json.dumps({"unique_id": f"p{i}", "problem": problem,
                                "solution": "\\boxed{1}"}) + "\n")
    return root, cfg


def run_infer(vocab, infer_setup, output, **kw):
    root, cfg = infer_setup
    args = dict(checkpoint=str(root / "ckpt"), output_path=str(output),
                problems_file=str(root / "problems.jsonl"), num_samples=2, max_decode_len=16,
                batch_size=8, vocabulary=vocab, progress=False, seed=1, model=cfg)
    return infer_lib.infer(**{**args, **kw})


def ascii_window(records, width=3):
    """A few printable ASCII characters of the first sample text that has them (the random
    model also writes bytes that decode to no character: U+FFFD is no stop string)."""
    import string
    for record in records:
        for sample in record["samples"]:
            text = sample["text"]
            for a in range(len(text) - width + 1):
                window = text[a:a + width]
                if all(c in string.printable for c in window) and window.strip():
                    return window
    raise AssertionError("no sample text has printable ASCII to stop on")


def read_records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_infer_with_stops_killed_and_resumed_writes_the_static_file(
        vocab, infer_setup, monkeypatch):
    root, _ = infer_setup
    plain = read_records(run_infer(vocab, infer_setup, root / "plain.jsonl", engine="static"))
    strings = (ascii_window(plain), IM_END)
    static = run_infer(vocab, infer_setup, root / "static.jsonl", engine="static",
                       stop_strings=strings)
    output = root / "continuous.jsonl"
    crash_on_chunk(monkeypatch, 2)  # after problems 0-7 are written, while 8-9 decode
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_infer(vocab, infer_setup, output, stop_strings=strings, chunk=16)
    monkeypatch.undo()
    assert os.listdir(infer_lib.parts_dir(str(output))) == ["00000000.jsonl"]
    run_infer(vocab, infer_setup, output, stop_strings=strings, chunk=16)
    # The same samples, texts and token counts; the log-likelihoods may differ in float32's
    # last bits where the drain decodes in smaller batches (tests/test_engine.py), so in
    # the file's 4th decimal.
    resumed, expected = read_records(output), read_records(static)
    assert [_without_logprobs(r) for r in resumed] == [_without_logprobs(r) for r in expected]
    np.testing.assert_allclose(_logprobs(resumed), _logprobs(expected), rtol=0, atol=2e-4)

    im_end = vocab.tokenizer.token_to_id(IM_END)
    cut_at_string = 0
    for before, after in zip(plain, read_records(static)):
        assert "stop" not in before
        assert after["stop"]["strings"] == list(strings) and im_end in after["stop"]["ids"]
        for old, new in zip(before["samples"], after["samples"]):
            # the text before the string, or less where <|im_end|> (no text) came first
            at = old["text"].find(strings[0])
            assert old["text"].startswith(new["text"]) and strings[0] not in new["text"]
            assert new["num_tokens"] <= old["num_tokens"]
            if at >= 0:
                assert len(new["text"]) <= at and new["num_tokens"] < old["num_tokens"]
                cut_at_string += new["text"] == old["text"][:at]
    assert cut_at_string > 0


def _without_logprobs(record):
    return {**record, "samples": [{k: v for k, v in sample.items() if k != "logprob"}
                                  for sample in record["samples"]]}


def _logprobs(records):
    return [sample["logprob"] for record in records for sample in record["samples"]]


def test_stop_ids_add_generation_config_eos_ids_and_single_token_strings(vocab, tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    assert tokenizer_lib.generation_eos_ids(hf) == (2,)
    (hf / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 9, 7]}))
    assert tokenizer_lib.generation_eos_ids(hf) == (2, 9, 7)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.gin").write_text("")
    (model_dir / "hf").symlink_to(hf)
    config = infer_lib.InferConfig(checkpoint=str(model_dir), output_path="o", stop_ids=(7, 5),
                                   stop_strings=(IM_END, "\n\nProblem:"))
    im_end = vocab.tokenizer.token_to_id(IM_END)
    strings = config.stop_strings
    assert infer_lib.stop_ids(config, vocab, strings) == (7, 5, 2, 9, im_end)
    off = dataclasses.replace(config, generation_eos=False)
    assert infer_lib.stop_ids(off, vocab, strings) == (7, 5, im_end)
    assert infer_lib.stop_ids(off, vocab) == (7, 5)  # strings not given: none of theirs
    bare = infer_lib.InferConfig(checkpoint=str(tmp_path), output_path="o")
    assert infer_lib.stop_ids(bare, vocab) == ()  # no model_dir: no generation config


def test_a_prompt_format_adds_its_stop_strings_after_the_run_s_own():
    from mathft_jax.data import prompts
    fewshot = prompts.prompt_format("minerva_math")
    assert fewshot.stop_strings  # its next exemplar's header ends a sample
    config = infer_lib.InferConfig(checkpoint="c", output_path="o",
                                   stop_strings=("</s>", fewshot.stop_strings[0]))
    assert infer_lib.stop_strings(config, fewshot) == ("</s>", fewshot.stop_strings[0])
    plain = infer_lib.InferConfig(checkpoint="c", output_path="o")
    assert infer_lib.stop_strings(plain, fewshot) == fewshot.stop_strings
    assert infer_lib.stop_strings(plain, prompts.prompt_format("plain")) == ()

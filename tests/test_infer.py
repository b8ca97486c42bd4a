"""The infer entry point: candidates schema, evaluator scores, crash-safe resumption, the CLI."""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import pytest
import numpy as np
import seqio

from mathft_jax.convert import checkpoints
from mathft_jax.core import gin_utils
from mathft_jax.models.config import DecoderConfig
from mathft_jax.results import candidates
from mathft_jax.sampling import decoding
from mathft_jax import infer as infer_lib
from mathft_jax.models.decoder import init_params
from gin_bound import gin_bound

MODEL_BINDINGS = [
    "DecoderConfig.vocab_size = 384", "DecoderConfig.num_layers = 1", "DecoderConfig.d_model = 32",
    "DecoderConfig.num_heads = 4", "DecoderConfig.num_kv_heads = 2", "DecoderConfig.head_dim = 8",
    "DecoderConfig.mlp_dim = 64", "DecoderConfig.max_seq_len = 192",
]
NUM_PROBLEMS, BATCH = 10, 8  # two batches; the 8 fake devices split each batch 8 ways


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    with gin_bound(MODEL_BINDINGS):
        cfg = DecoderConfig()
    checkpoints.save_params(str(root / "ckpt"), nn.unbox(init_params(cfg, jax.random.PRNGKey(0))))
    problems = root / "problems.jsonl"
    with open(problems, "w") as f:
        for i in range(NUM_PROBLEMS):
            f.write(json.dumps({"unique_id": f"p{i}", "problem": f"What is {i}+{i}?",
                                "solution": f"{i}+{i}={2 * i}. \\boxed{{{2 * i}}}"}) + "\n")
    return root


def run(setup, output, **kw):
    args = dict(checkpoint=str(setup / "ckpt"), output_path=str(output),
                problems_file=str(setup / "problems.jsonl"), num_samples=2, max_decode_len=6,
                batch_size=BATCH, evaluator_checkpoint=str(setup / "ckpt"),
                vocabulary=seqio.ByteVocabulary(), progress=False)
    with gin_bound(MODEL_BINDINGS):
        return infer_lib.infer(**{**args, **kw})


def read_lines(path):
    with open(path) as f:
        return f.read().splitlines()


@pytest.fixture(scope="module")
def uninterrupted(setup):
    return read_lines(run(setup, setup / "full.jsonl"))


def test_writes_the_candidates_schema_with_scores(setup, uninterrupted):
    records = candidates.read_candidates(str(setup / "full.jsonl"))
    assert [r["problem_id"] for r in records] == [f"p{i}" for i in range(NUM_PROBLEMS)]
    for i, record in enumerate(records):
        assert set(record) == {"problem_id", "problem", "gold", "extraction_policy",
                               "score_method", "samples"}
        assert record["extraction_policy"] == "strict" and record["score_method"] == "label"
        assert record["problem"] == f"What is {i}+{i}?" and record["gold"] == str(2 * i)
        assert len(record["samples"]) == 2
        for sample in record["samples"]:
            assert set(sample) == {"text", "answer", "score", "logprob", "num_tokens"}
            assert isinstance(sample["text"], str)
            assert 0.0 < sample["score"] < 1.0
            assert sample["logprob"] < 0 and 1 <= sample["num_tokens"] <= 8
    assert not os.path.exists(infer_lib.parts_dir(str(setup / "full.jsonl")))


def test_crash_leaves_complete_chunks_and_resume_redoes_only_the_rest(setup, uninterrupted, monkeypatch):
    output = str(setup / "resumed.jsonl")
    real_generate, calls = decoding.generate, []

    def crash_on_second_batch(*args, **kwargs):
        calls.append(kwargs["prompt_ids"])
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(decoding, "generate", crash_on_second_batch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(setup, output, engine="static")
    assert not os.path.exists(output), "no final (let alone truncated) file after a crash"
    parts = os.listdir(infer_lib.parts_dir(output))
    assert parts == ["00000000.jsonl"], parts  # one complete chunk, no temporary files
    assert len(candidates.read_candidates(os.path.join(infer_lib.parts_dir(output), parts[0]))) == BATCH

    calls.clear()
    run(setup, output, engine="static")
    assert [list(c) for c in calls] == [[8, 9]], "only the undone problems are sampled again"
    # uninterrupted is the default (continuous) engine's file: the engines agree, too
    assert read_lines(output) == uninterrupted, "a resumed run writes what an uninterrupted one does"

    calls.clear()
    run(setup, output, engine="static")
    assert calls == [] and read_lines(output) == uninterrupted
    run(setup, output)  # the continuous engine too: nothing to do is no error
    assert read_lines(output) == uninterrupted


@pytest.mark.parametrize("engine", ["static", "continuous"])
def test_sigterm_stops_after_the_chunk_being_sampled_and_a_rerun_resumes(
        setup, uninterrupted, monkeypatch, engine):
    from mathft_jax.core import preemption
    output = str(setup / f"preempted_{engine}.jsonl")
    real_records = infer_lib.make_records

    def sigterm_while_sampling(*args, **kwargs):  # what the SIGTERM handler does, mid-chunk
        preemption._requested.set()  # noqa: SLF001
        return real_records(*args, **kwargs)

    monkeypatch.setattr(infer_lib, "make_records", sigterm_while_sampling)
    try:
        with pytest.raises(preemption.Preempted, match="after 8 of 10 problems.*rerun to resume"):
            run(setup, output, engine=engine)
        assert preemption.Preempted.exit_code == 75
        assert not os.path.exists(output)
        assert os.listdir(infer_lib.parts_dir(output)) == ["00000000.jsonl"]  # that chunk stays
        preemption.reset()
        run(setup, output, engine=engine)  # a SIGTERM during the last chunk: it merges anyway
        assert preemption.requested()
    finally:
        preemption.reset()
    assert read_lines(output) == uninterrupted


def test_an_unreadable_chunk_is_redone_but_an_unreadable_final_file_is_an_error(tmp_path):
    output = str(tmp_path / "cands.jsonl")
    good = {"problem_id": "a", "problem": "p", "gold": "1",
            "samples": [{"text": "\\boxed{1}", "answer": "1"}]}
    infer_lib.write_chunk(output, 0, [good])
    bad_chunk = os.path.join(infer_lib.parts_dir(output), "00000001.jsonl")
    with open(bad_chunk, "w") as f:
        f.write("{not json\n")
    assert list(infer_lib.read_done(output)) == ["a"]
    assert not os.path.exists(bad_chunk)  # its problems will be sampled again

    with open(output, "w") as f:
        f.write("{not json\n")
    with pytest.raises(candidates.CandidatesError):
        infer_lib.read_done(output)
    assert os.path.exists(output)  # the user's file is not deleted


def test_bad_settings_raise(setup):
    with pytest.raises(ValueError, match="infer.batch_size=3 must be divisible"):
        run(setup, setup / "x.jsonl", batch_size=3)
    with pytest.raises(ValueError, match="infer.num_samples=0 must be an integer >= 1"):
        run(setup, setup / "x.jsonl", num_samples=0)
    with pytest.raises(ValueError, match=r"infer.top_p=1.5 must be a number in \(0.0, 1.0\]"):
        run(setup, setup / "x.jsonl", top_p=1.5)
    assert not os.path.exists(setup / "x.jsonl") and not os.path.exists(setup / "x.jsonl.parts")
    with pytest.raises(ValueError, match="infer.task='nope'"):
        infer_lib.load_problems("nope", "test")


def test_cli_runs_from_gin_files(setup, tmp_path):
    output = tmp_path / "cli.jsonl"
    cmd = [sys.executable, "-m", "mathft_jax.infer", "--gin_file=gin_configs/infer/synthetic.gin"]
    cmd += [f"--gin_bindings={b}" for b in MODEL_BINDINGS + [
        f"infer.checkpoint='{setup / 'ckpt'}'", f"infer.output_path='{output}'",
        "infer.max_problems=3", "infer.num_samples=2", "infer.max_decode_len=4"]]
    subprocess.run(cmd, check=True, cwd=gin_utils.REPO_ROOT, capture_output=True, text=True)
    records = candidates.read_candidates(str(output))
    assert len(records) == 3 and all(len(r["samples"]) == 2 for r in records)
    assert records[0]["problem_id"] == "synthetic/test/0"


def test_records_keep_the_extraction_policy_that_read_them():
    from mathft_jax.sampling import decoding

    vocab = seqio.ByteVocabulary()
    text = "So the answer is 12."
    ids = np.asarray(vocab.encode(text), np.int32)
    samples = decoding.Samples(tokens=ids[None, None, :], lengths=np.asarray([[len(ids)]]),
                               logprobs=np.zeros((1, 1), np.float32))
    problem = {"problem_id": "p", "problem": "?", "gold": "12"}
    sampling = decoding.SamplingParams(eos_id=1)
    strict = infer_lib.make_records([problem], samples, vocab, sampling)
    lenient = infer_lib.make_records([problem], samples, vocab, sampling, policy="lenient")
    assert strict[0]["extraction_policy"] == "strict" and strict[0]["samples"][0]["answer"] is None
    assert lenient[0]["extraction_policy"] == "lenient"
    assert lenient[0]["samples"][0]["answer"] == "12"
    with pytest.raises(ValueError, match="infer.extraction_policy='loose'"):
        infer_lib.InferConfig(checkpoint="c", output_path="o", extraction_policy="loose").validate()


def test_a_run_samples_in_its_prompt_format_and_records_it(setup, tmp_path):
    from chat_tokenizers import CHATML, write_tokenizer
    from mathft_jax.data import prompts

    class Recording(seqio.ByteVocabulary):  # what infer tokenises: the prompts
        encoded = []

        def encode(self, s):
            self.encoded.append(s)
            return super().encode(s)

    tokenizer_dir = write_tokenizer(tmp_path / "tokenizer", CHATML, eos_token="<|im_end|>")
    output = run(setup, tmp_path / "chat.jsonl", evaluator_checkpoint=None, max_problems=2,
                 vocabulary=Recording(), prompt=prompts.PromptConfig(
                     name="chat", system="Be brief.", tokenizer_dir=str(tokenizer_dir)))
    records = candidates.read_candidates(output)
    assert [(r["prompt_format"], r["system_prompt"]) for r in records] == [("chat", "Be brief.")] * 2
    # the chat format's end of turn ends samples: looked up as a single-token stop id first
    assert Recording.encoded[0] == "<|im_end|>"
    assert records[0]["stop"]["strings"] == ["<|im_end|>"]
    assert Recording.encoded[1:] == [
        f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is {i}+{i}?<|im_end|>\n"
        "<|im_start|>assistant\n" for i in range(2)]
    with pytest.raises(ValueError, match="prompt_format.name='chatty': expected one of"):
        run(setup, tmp_path / "x.jsonl", prompt=prompts.PromptConfig(name="chatty"))

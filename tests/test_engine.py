"""The continuous-batching engine: the samples of static batching, token for token, in every
arrangement of slots, chunks, prompt lengths and devices; shared prefill; attention over the
filled part of the cache only; infer's resume with the engine."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from mathft_jax.convert import checkpoints
from mathft_jax.core import settings
from mathft_jax.models import partitioning
from mathft_jax.sampling import batching, decoding, engine
from mathft_jax import infer as infer_lib
from mathft_jax.sampling.decoding import SamplingParams
from mathft_jax.models import DecoderConfig
from mathft_jax.models import layers
from mathft_jax.models.decoder import init_params
from engine_faults import crash_on_chunk
from gin_bound import gin_bound

CFG = DecoderConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                    head_dim=8, mlp_dim=64, max_seq_len=64)
_rng = np.random.RandomState(0)
# Lengths in three prefill buckets (16, 32, 64); 60 leaves room for 4 tokens, 64 for none.
PROMPTS = [_rng.randint(2, 64, size=n).tolist() for n in (3, 9, 1, 20, 60, 5, 64)]
IDS = [4, 0, 9, 2, 7, 1, 3]  # global ids, not in order: the rng streams follow them
MAX_LEN, EOS = 12, 7


@pytest.fixture(scope="module")
def params():
    # Scaled-up random weights, as tests/test_decoding.py: sharper, input-dependent draws.
    weights = nn.unbox(init_params(CFG, jax.random.PRNGKey(0)))
    return jax.tree_util.tree_map(lambda x: x * 3.0, weights)


def sampling(n, eos=EOS, **kw):
    return SamplingParams(num_samples=n, max_decode_len=MAX_LEN, temperature=1.0, eos_id=eos, **kw)


def assert_same(static, continuous):
    np.testing.assert_array_equal(continuous.lengths, static.lengths)
    np.testing.assert_array_equal(continuous.tokens, static.tokens)
    # the samples' log-likelihoods too: the same float32 sum, step by step (bit for bit
    # where the shapes are static batching's, as infer's defaults make them; other slot
    # counts reduce the vocabulary in other batch shapes, last bits apart)
    np.testing.assert_allclose(continuous.logprobs, static.logprobs, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("n,slots,chunk", [(6, 4, 3), (2, 8, 5), (3, 3, 1)],
                         ids=["N>slots", "N<slots", "chunk=1"])
def test_same_samples_as_static_batching(params, n, slots, chunk):
    static = decoding.generate(params, CFG, PROMPTS, sampling(n), seed=3, prompt_ids=IDS)
    stats = engine.Stats()
    continuous = engine.generate(params, CFG, PROMPTS, sampling(n), seed=3, prompt_ids=IDS,
                                 slots=slots, chunk=chunk, stats=stats)
    assert_same(static, continuous)
    lengths = static.lengths
    assert (lengths[:4] < MAX_LEN).any() and (lengths[:4] == MAX_LEN).any(), \
        "some samples must end at EOS and some at the length limit"
    assert (lengths[4] <= 4).all() and (lengths[4] > 0).any() and (lengths[6] == 0).all()
    assert stats.tokens == lengths.sum() and stats.tokens <= stats.slot_steps
    # Each prompt is prefilled once (the full-context one only along with its group, as static
    # batching prefills it), even when its samples take slots in several rounds.
    assert stats.prefills == len(PROMPTS) - (-(-slots // n) == 1)


def test_eos_at_the_first_step(params):
    """EOS = the first token that sample 0 of prompt 0 draws: that sample ends at step 1."""
    first = decoding.generate(params, CFG, PROMPTS[:1], sampling(4, eos=-1), seed=5,
                              prompt_ids=IDS[:1]).tokens[0, 0, 0]
    static = decoding.generate(params, CFG, PROMPTS, sampling(4, eos=int(first)), seed=5,
                               prompt_ids=IDS)
    continuous = engine.generate(params, CFG, PROMPTS, sampling(4, eos=int(first)), seed=5,
                                 prompt_ids=IDS, slots=4, chunk=4)
    assert static.lengths[0, 0] == 1
    assert_same(static, continuous)


def test_groups_of_mostly_full_context_prompts_wait_for_room_in_the_prefill_pool(params):
    """Prefill groups of 4 whose prompts mostly fill the context take few slots, so one
    refill round reaches more groups than the pool holds: the rest wait a round."""
    prompts = []
    for k in range(4):
        prompts += [PROMPTS[6]] * 3 + [PROMPTS[k]]
    static = decoding.generate(params, CFG, prompts, sampling(2), seed=8)
    stats = engine.Stats()
    continuous = engine.generate(params, CFG, prompts, sampling(2), seed=8, slots=8, chunk=4,
                                 stats=stats)
    assert_same(static, continuous)
    assert stats.prefills == len(prompts)


@pytest.mark.slow
def test_greedy_and_top_p_match_static(params):
    for sp in (SamplingParams(num_samples=2, max_decode_len=MAX_LEN, temperature=0.0, eos_id=EOS),
               sampling(2, top_p=0.8, top_k=10)):
        static = decoding.generate(params, CFG, PROMPTS[:4], sp, seed=1)
        assert_same(static, engine.generate(params, CFG, PROMPTS[:4], sp, seed=1, slots=4))


@pytest.mark.slow
def test_eight_devices_give_the_samples_of_one(params):
    assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
    partitioner = partitioning.Partitioner.create(
        CFG, partitioning.make_mesh(data=2, fsdp=2, tensor=2))
    sharded = jax.device_put(params, partitioner.param_shardings(CFG))
    one = decoding.generate(params, CFG, PROMPTS, sampling(3), seed=11, prompt_ids=IDS)
    eight = engine.generate(sharded, CFG, PROMPTS, sampling(3), seed=11, prompt_ids=IDS,
                            partitioner=partitioner, slots=8, chunk=4)
    assert_same(one, eight)


def test_attention_reads_only_the_filled_part_of_the_cache(params):
    """NaN in every cache block past the furthest query: reading one would poison the
    logits (0 * NaN). And the logits are bit for bit those of a cache of half the size,
    which is what makes a sample independent of the cache it sits in."""
    prefill = jax.jit(decoding.prefill, static_argnums=(1, 3))
    extend = jax.jit(decoding.extend, static_argnums=1)
    tokens, lengths = batching.pad_prompts(PROMPTS[:4], 4, 32)
    last = decoding.last_tokens(tokens, lengths)[:, None]
    small = prefill(params, CFG, tokens, layers.CACHE_BLOCK)
    big = prefill(params, CFG, tokens, 3 * layers.CACHE_BLOCK)
    poisoned = [tuple(x.at[:, layers.CACHE_BLOCK:].set(np.nan) for x in kv) for kv in big]
    logits, _ = extend(params, CFG, last, poisoned, jnp.asarray(lengths - 1))
    assert np.isfinite(np.asarray(logits)).all()
    unpoisoned, _ = extend(params, CFG, last, small, jnp.asarray(lengths - 1))
    np.testing.assert_array_equal(logits, unpoisoned)


def test_prompts_stream_out_as_they_finish(params):
    """A short prompt's samples come out before a later long one's are done."""
    sp = SamplingParams(num_samples=2, max_decode_len=30, temperature=1.0, eos_id=-1)
    budget_limited = [PROMPTS[4], PROMPTS[0]]  # 4 tokens each, then 30 each
    order = [i for i, _, _, _ in engine.stream(params, CFG, budget_limited, sp, slots=4, chunk=4)]
    assert order == [0, 1]


def test_bad_slots_raise(params):
    with pytest.raises(ValueError, match="slots must be a positive int"):
        engine.generate(params, CFG, PROMPTS, sampling(2), slots=0)
    partitioner = partitioning.Partitioner.create(
        CFG, partitioning.make_mesh(data=2, fsdp=2, tensor=2))
    with pytest.raises(ValueError, match=r"slots=6 must be divisible by data\*fsdp=4"):
        engine.generate(params, CFG, PROMPTS, sampling(2), slots=6, partitioner=partitioner)


# ----------------------------------------------------------------------------- infer


MODEL_BINDINGS = [
    "DecoderConfig.vocab_size = 384", "DecoderConfig.num_layers = 1", "DecoderConfig.d_model = 32",
    "DecoderConfig.num_heads = 4", "DecoderConfig.num_kv_heads = 2", "DecoderConfig.head_dim = 8",
    "DecoderConfig.mlp_dim = 64", "DecoderConfig.max_seq_len = 192",
]
NUM_PROBLEMS, BATCH = 10, 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine_infer")
    with gin_bound(MODEL_BINDINGS):
        cfg = DecoderConfig()
    weights = nn.unbox(init_params(cfg, jax.random.PRNGKey(0)))
    checkpoints.save_params(str(root / "ckpt"), jax.tree_util.tree_map(lambda x: x * 3.0, weights))
    with open(root / "problems.jsonl", "w") as f:
        for i in range(NUM_PROBLEMS):
            f.write(json.dumps({"unique_id": f"p{i}", "problem": f"What is {i}+{i}?" * (1 + i % 3),
                                "solution": f"\\boxed{{{2 * i}}}"}) + "\n")
    return root


def run_infer(setup, output, **kw):
    args = dict(checkpoint=str(setup / "ckpt"), output_path=str(output),
                problems_file=str(setup / "problems.jsonl"), num_samples=2, max_decode_len=12,
                batch_size=BATCH, vocabulary=seqio.ByteVocabulary(), progress=False)
    with gin_bound(MODEL_BINDINGS):
        return infer_lib.infer(**{**args, **kw})


def read_lines(path):
    with open(path) as f:
        return f.read().splitlines()


@pytest.mark.slow
def test_infer_continuous_killed_and_resumed_writes_the_static_file(setup, monkeypatch):
    static = read_lines(run_infer(setup, setup / "static.jsonl", engine="static"))
    output = str(setup / "continuous.jsonl")
    crash_on_chunk(monkeypatch, 2)  # after problems 0-7 are written, while 8-9 decode
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_infer(setup, output, engine="continuous", chunk=16)
    assert not os.path.exists(output)
    assert os.listdir(infer_lib.parts_dir(output)) == ["00000000.jsonl"]
    monkeypatch.undo()
    assert read_lines(run_infer(setup, output, engine="continuous", chunk=5)) == static
    # Other slots: other batch shapes, so the log-likelihoods may differ in their last bits,
    # and so in the file's 4th decimal; the samples are the same.
    other_slots = read_lines(run_infer(setup, setup / "c2.jsonl", engine="continuous", slots=8,
                                       chunk=3))
    assert [_without_logprobs(line) for line in other_slots] == \
        [_without_logprobs(line) for line in static]
    np.testing.assert_allclose(_logprobs(other_slots), _logprobs(static), rtol=0, atol=2e-4)


def _without_logprobs(line):
    record = json.loads(line)
    record["samples"] = [{k: v for k, v in s.items() if k != "logprob"} for s in record["samples"]]
    return record


def _logprobs(lines):
    return [s["logprob"] for line in lines for s in json.loads(line)["samples"]]


def test_infer_rejects_an_unknown_engine(setup):
    with pytest.raises(settings.SettingError, match="infer.engine='paged' must be"):
        run_infer(setup, setup / "x.jsonl", engine="paged")

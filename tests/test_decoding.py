"""The sampler: KV-cache correctness, greedy, the sampling distribution, batching, sharding."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mathft_jax.models import partitioning
from mathft_jax.sampling import batching, decoding
from mathft_jax.sampling.decoding import SamplingParams
from mathft_jax.models import Decoder, DecoderConfig
from mathft_jax.models.decoder import init_params

# Heads, KV heads, mlp, d_model and vocab all divide 2: the 2x2x2 mesh shards every axis.
CFG = DecoderConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                    head_dim=8, mlp_dim=64, max_seq_len=64)
PROMPTS = [[5, 9, 2], [7, 1, 33, 12, 40, 8, 3, 21, 19], [11]]  # three lengths, two buckets


@pytest.fixture(scope="module")
def init_weights():
    return nn.unbox(init_params(CFG, jax.random.PRNGKey(0)))


@pytest.fixture(scope="module")
def params(init_weights):
    # Scaled-up random weights: sharper, input-dependent distributions than the init gives.
    return jax.tree_util.tree_map(lambda x: x * 3.0, init_weights)


@jax.jit
def _forward(params, tokens):
    return Decoder(CFG).apply({"params": params}, tokens)


def full_logits(params, tokens):
    """Next-token logits after `tokens`: a full forward without a cache (right-padded to
    max_seq_len, which a causal model ignores, so it compiles once)."""
    padded = np.zeros((1, CFG.max_seq_len), np.int32)
    padded[0, :len(tokens)] = tokens
    return np.asarray(_forward(params, padded)[0, len(tokens) - 1])


def greedy_reference(params, prompt, steps):
    seq = list(prompt)
    for _ in range(steps):
        seq.append(int(np.argmax(full_logits(params, seq))))
    return seq[len(prompt):]


def sample(params, prompts=PROMPTS, **kw):
    opts = dict(num_samples=2, max_decode_len=6, temperature=1.0, eos_id=-1)
    call = {k: kw.pop(k) for k in ("seed", "prompt_ids", "partitioner", "truncate_prompts") if k in kw}
    return decoding.generate(params, CFG, prompts, SamplingParams(**{**opts, **kw}), **call)


def test_cached_decode_matches_full_forward_at_every_step(init_weights):
    """The decode path (prefill, then the last prompt token and each new token at its own
    slot) gives the full forward's logits over the same prefix, for mixed lengths."""
    params = init_weights  # unscaled: logits O(1), so 1e-5 is float32's precision
    prefill = jax.jit(decoding.prefill, static_argnums=(1, 3))
    extend = jax.jit(decoding.extend, static_argnums=1)
    tokens, lengths = batching.pad_prompts(PROMPTS, len(PROMPTS), 16)
    tokens, lengths = jnp.asarray(tokens), jnp.asarray(lengths)
    cache = prefill(params, CFG, tokens, 16 + 8)
    token = decoding.last_tokens(tokens, lengths)
    seqs = [list(p) for p in PROMPTS]
    for step in range(8):
        logits, cache = extend(params, CFG, token[:, None], cache, lengths - 1 + step)
        for row, seq in enumerate(seqs):
            np.testing.assert_allclose(logits[row, 0], full_logits(params, seq), atol=1e-5, rtol=0)
        token = jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)
        for seq, t in zip(seqs, np.asarray(token)):
            seq.append(int(t))


def test_greedy_equals_argmax_over_full_forwards(params):
    out = sample(params, temperature=0.0)
    for i, prompt in enumerate(PROMPTS):
        ref = greedy_reference(params, prompt, 6)
        assert len(set(ref)) > 1, "a degenerate model would make this test vacuous"
        for j in range(2):
            assert out.tokens[i, j].tolist() == ref
            assert out.lengths[i, j] == 6


@pytest.mark.parametrize("kw", [{"top_k": 1, "temperature": 1.0}, {"temperature": 1e-6}])
def test_top_k_one_and_tiny_temperature_equal_greedy(params, kw):
    greedy = sample(params, temperature=0.0)
    other = sample(params, seed=3, **kw)
    np.testing.assert_array_equal(other.tokens, greedy.tokens)


def test_stops_at_eos_and_pads_after_it(params):
    ref = greedy_reference(params, PROMPTS[1], 6)
    eos = ref[2]
    out = decoding.generate(params, CFG, [PROMPTS[1]], SamplingParams(
        max_decode_len=6, temperature=0.0, eos_id=eos))
    stop = ref.index(eos) + 1
    assert out.lengths[0, 0] == stop
    assert out.tokens[0, 0, :stop].tolist() == ref[:stop]
    assert (out.tokens[0, 0, stop:] == decoding.PAD_ID).all()
    assert out.sequences(0, end_ids=eos) == [ref[:stop - 1]]


def test_prompt_filling_the_context_gets_no_room_beyond_it(params):
    prompt = list(range(1, 61))  # 60 of max_seq_len=64: room for 4 tokens
    out = decoding.generate(params, CFG, [prompt], SamplingParams(max_decode_len=10, eos_id=-1))
    assert out.lengths[0, 0] == 4
    assert (out.tokens[0, 0, 4:] == decoding.PAD_ID).all()


def test_first_token_frequencies_match_softmax_chi_square(params):
    prompt, temperature, n = PROMPTS[0], 0.7, 4000
    probs = np.asarray(jax.nn.softmax(full_logits(params, prompt) / temperature), np.float64)
    out = decoding.generate(params, CFG, [prompt], SamplingParams(
        num_samples=n, max_decode_len=1, temperature=temperature, eos_id=-1), seed=1234)
    counts = np.bincount(out.tokens[0, :, 0], minlength=CFG.vocab_size)

    def p_value(expected_probs):
        expected = expected_probs * n
        big = expected >= 5  # pool the rare tokens into one bin
        obs = np.append(counts[big], counts[~big].sum())
        exp = np.append(expected[big], expected[~big].sum())
        return stats.chisquare(obs, exp / exp.sum() * obs.sum()).pvalue

    assert p_value(probs) > 1e-3
    flatter = np.asarray(jax.nn.softmax(full_logits(params, prompt) / 1.0), np.float64)
    assert p_value(flatter) < 1e-6, "the test must be able to tell temperatures apart"


@pytest.mark.parametrize("top_k", [0, 10])
def test_top_p_never_leaves_the_nucleus(params, top_k):
    prompt, top_p = PROMPTS[1], 0.6
    logits = full_logits(params, prompt)
    order = np.argsort(-logits)
    if top_k:
        order = order[:top_k]
    probs = np.exp(logits[order] - logits[order].max())
    probs /= probs.sum()
    mass_before = np.cumsum(probs) - probs
    nucleus = set(order[mass_before < top_p].tolist())
    assert 1 < len(nucleus) < len(order)
    out = decoding.generate(params, CFG, [prompt], SamplingParams(
        num_samples=1000, max_decode_len=1, top_p=top_p, top_k=top_k, eos_id=-1), seed=7)
    drawn = set(out.tokens[0, :, 0].tolist())
    assert drawn <= nucleus
    assert len(drawn) > 1


def test_top_k_never_leaves_the_top_k(params):
    logits = full_logits(params, PROMPTS[2])
    top = set(np.argsort(-logits)[:5].tolist())
    out = decoding.generate(params, CFG, [PROMPTS[2]], SamplingParams(
        num_samples=500, max_decode_len=1, top_k=5, temperature=2.0, eos_id=-1))
    assert set(out.tokens[0, :, 0].tolist()) <= top


def test_mixed_lengths_in_one_batch_equal_each_prompt_alone(params):
    together = sample(params, prompt_ids=[0, 1, 2], seed=5)
    for i, prompt in enumerate(PROMPTS):
        alone = sample(params, prompts=[prompt], prompt_ids=[i], seed=5)
        np.testing.assert_array_equal(alone.tokens[0], together.tokens[i])
    assert any(not np.array_equal(t[0], t[1]) for t in together.tokens), "samples differ"


def test_shared_prefill_gives_the_samples_of_separate_prefills(params):
    shared = sample(params, seed=9, num_samples=3)
    separate = sample(params, seed=9, num_samples=3, share_prefill=False)
    np.testing.assert_array_equal(shared.tokens, separate.tokens)
    np.testing.assert_array_equal(shared.lengths, separate.lengths)


def test_scanned_layers_decode_like_unrolled(params):
    cfg = dataclasses.replace(CFG, scan_layers=True)
    scanned = {k: v for k, v in params.items() if not k.startswith("layers_")}
    scanned["layers"] = {"layer": jax.tree_util.tree_map(
        lambda *xs: jnp.stack(xs), *[params[f"layers_{i}"] for i in range(CFG.num_layers)])}
    sp = SamplingParams(num_samples=2, max_decode_len=5, eos_id=-1)
    a = decoding.generate(params, CFG, PROMPTS, sp, seed=2)
    b = decoding.generate(scanned, cfg, PROMPTS, sp, seed=2)
    np.testing.assert_array_equal(a.tokens, b.tokens)


def test_eight_devices_give_the_samples_of_one(params):
    assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
    mesh = partitioning.make_mesh(data=2, fsdp=2, tensor=2)
    partitioner = partitioning.Partitioner.create(CFG, mesh)
    sharded = jax.device_put(params, partitioner.param_shardings(CFG))
    kw = dict(num_samples=2, max_decode_len=6, top_p=0.9, seed=11)
    one = sample(params, **kw)
    eight = sample(sharded, partitioner=partitioner, **kw)
    np.testing.assert_array_equal(eight.tokens, one.tokens)
    np.testing.assert_array_equal(eight.lengths, one.lengths)


def test_samples_not_prompts_are_split_over_devices(params):
    mesh = partitioning.make_mesh(data=2, fsdp=2, tensor=2)
    partitioner = partitioning.Partitioner.create(CFG, mesh)
    assert partitioner.batch_shards == 4  # 8 sequences, 2 a shard: no dummy prompt
    sharded = jax.device_put(params, partitioner.param_shardings(CFG))
    kw = dict(prompts=PROMPTS[1:2], num_samples=8, max_decode_len=5, seed=4)
    one = sample(params, **kw)
    eight = sample(sharded, partitioner=partitioner, **kw)
    np.testing.assert_array_equal(eight.tokens, one.tokens)
    assert eight.tokens.shape == (1, 8, 5)


@pytest.mark.parametrize("prompts,kw,match", [
    ([], {}, "prompts is empty"),
    ([[1, 2], []], {}, r"prompts\[1\] is empty"),
    ([list(range(1, 66))], {}, r"prompts\[0\] has 65 tokens, more than the model's max_seq_len=64"),
    (PROMPTS, {"num_samples": 0}, "num_samples must be a positive int"),
    (PROMPTS, {"temperature": -0.5}, "temperature must be >= 0"),
    (PROMPTS, {"top_p": 0.0}, "top_p must be in"),
    (PROMPTS, {"top_k": -1}, "top_k must be an int >= 0"),
    (PROMPTS, {"max_decode_len": 0}, "max_decode_len must be a positive int"),
])
def test_bad_inputs_raise_naming_the_argument(params, prompts, kw, match):
    with pytest.raises(ValueError, match=match):
        sample(params, prompts=prompts, **kw)


def test_a_truncated_prompt_keeps_room_for_every_new_token(params):
    long = [1] + [int(t) for t in np.random.RandomState(5).randint(2, CFG.vocab_size, 80)]
    out = sample(params, prompts=[long], truncate_prompts=True)  # 81 > max_seq_len = 64
    assert list(out.lengths.ravel()) == [6, 6]  # max_decode_len each, not 0


# ----------------------------------------------------------------------------- the samplers


@pytest.mark.parametrize("vocab", [7, 1000])  # 1000: the last block is partly padding
def test_categorical_matches_softmax_chi_square(vocab):
    n = 20000
    logits = np.random.RandomState(vocab).randn(vocab).astype(np.float32) * 2
    keys = decoding.sample_keys(jnp.int32(3), jnp.arange(n))
    draws = np.asarray(jax.jit(decoding.categorical)(keys, jnp.tile(logits, (n, 1))))
    probs = np.exp(logits.astype(np.float64) - logits.max())
    probs /= probs.sum()
    expected = probs * n
    big = expected >= 5
    obs, exp = np.bincount(draws, minlength=vocab)[big], expected[big]
    if not big.all():  # pool the rare tokens into one bin
        obs, exp = np.append(obs, (~big[draws]).sum()), np.append(exp, expected[~big].sum())
    assert stats.chisquare(obs, exp / exp.sum() * obs.sum()).pvalue > 1e-3
    flat = np.full(vocab, n / vocab)  # the test can fail: draws are not uniform
    assert stats.chisquare(np.bincount(draws, minlength=vocab), flat).pvalue < 1e-6


def test_categorical_never_draws_a_zero_probability_token():
    vocab = 300  # blocks of 32: the support crosses block edges and skips whole blocks
    support = np.array([0, 31, 32, 100, 250, 299])
    logits = np.full((4000, vocab), -np.inf, np.float32)
    logits[:, support] = np.random.RandomState(1).randn(len(support))
    keys = decoding.sample_keys(jnp.int32(0), jnp.arange(4000))
    draws = np.asarray(jax.jit(decoding.categorical)(keys, logits))
    assert set(draws.tolist()) == set(support.tolist())


@pytest.mark.parametrize("u,expected", [(0.0, 31), (1.0, 250)])
def test_categorical_at_the_ends_of_the_cdf_stays_in_the_support(monkeypatch, u, expected):
    # u = 1 puts the target exactly at the total mass, where rounding could step past the
    # last token of the support into a zero-probability one.
    logits = np.full((2, 300), -np.inf, np.float32)
    logits[:, [31, 100, 250]] = 0.0
    monkeypatch.setattr(jax.random, "uniform", lambda key: jnp.float32(u))
    keys = decoding.sample_keys(jnp.int32(0), jnp.arange(2))
    np.testing.assert_array_equal(decoding.categorical(keys, jnp.asarray(logits)), [expected] * 2)


def test_recorded_log_likelihood_is_the_teacher_forced_one(params):
    """Samples.logprobs = sum over the generated tokens (the EOS included) of the model's own
    log softmax, as a full forward over prompt + sample computes it: at temperature 1 and
    without top-p, although the samples were drawn at 0.7 with top-p 0.9."""
    opts = dict(num_samples=4, max_decode_len=8, temperature=0.7, top_p=0.9, seed=1)
    eos = int(sample(params, eos_id=-1, **opts).tokens[0, 0, 2])  # sample (0, 0) stops by 3
    out = sample(params, eos_id=eos, **opts)
    stopped = 0
    for i, prompt in enumerate(PROMPTS):
        for j in range(4):
            n = int(out.lengths[i, j])
            generated = out.tokens[i, j, :n].tolist()
            stopped += generated[-1] == eos
            padded = np.zeros((1, CFG.max_seq_len), np.int32)
            padded[0, :len(prompt) + n] = prompt + generated
            logp = jax.nn.log_softmax(_forward(params, padded)[0].astype(jnp.float32), axis=-1)
            positions = np.arange(len(prompt) - 1, len(prompt) - 1 + n)
            expected = float(np.asarray(logp)[positions, generated].sum())
            assert out.logprobs[i, j] == pytest.approx(expected, rel=1e-4, abs=1e-4), (i, j)
    assert out.logprobs.dtype == np.float32 and (out.logprobs < 0).all()
    assert stopped > 0  # some samples ended on the EOS: its log-probability counts too

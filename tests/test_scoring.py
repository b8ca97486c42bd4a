"""Evaluator scoring: S(X|P) from the shared-prefix pass equals the full-forward computation."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from mathft_jax.models import partitioning
from mathft_jax.scoring import evaluator
from mathft_jax.data.formats import evaluator_prompt, generation_prompt
from mathft_jax.models import Decoder, DecoderConfig
from mathft_jax.models.decoder import init_params

CFG = DecoderConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                    head_dim=8, mlp_dim=64, max_seq_len=256)
START = 2
PROBLEMS = ["What is 2+3?", "Compute 7*6.", "What is 2+3?", "Find x if x-4=1."]
SOLUTIONS = ["2+3=5. \\boxed{5}", "7*6=42, so \\boxed{42}", "It is \\boxed{6}", "x=5 \\boxed{5}"]


class FakeVocab:
    """A byte-level vocabulary folded into 64 ids (seqio-free): what score_solutions needs."""

    eos_id = 1

    def encode(self, text):
        return [3 + b % 61 for b in text.encode("utf-8")]


@pytest.fixture(scope="module")
def params():
    # The init's small logits keep S(X|P) away from 0 and 1, where differences would vanish.
    return nn.unbox(init_params(CFG, jax.random.PRNGKey(0)))


@jax.jit
def _log_probs(params, tokens):
    return jax.nn.log_softmax(Decoder(CFG).apply({"params": params}, tokens), axis=-1)


def direct_logprob(params, context, label):
    """log p(label | context) from one full forward over context + label."""
    seq = np.zeros((1, CFG.max_seq_len), np.int32)
    seq[0, :len(context) + len(label)] = context + label
    logp = np.asarray(_log_probs(params, seq)[0], np.float64)
    return sum(logp[len(context) - 1 + i, t] for i, t in enumerate(label))


def direct_scores(params, problems, solutions, labels=(" correct", " incorrect")):
    vocab = FakeVocab()
    out = []
    for p, s in zip(problems, solutions):
        context = [START] + vocab.encode(evaluator_prompt(p, s))
        lc, li = (direct_logprob(params, context, vocab.encode(l)) for l in labels)
        out.append(np.exp(lc) / (np.exp(lc) + np.exp(li)))
    return np.asarray(out)


def test_scores_match_full_forward_logits(params):
    got = evaluator.score_solutions(params, CFG, FakeVocab(), PROBLEMS, SOLUTIONS, batch_size=3,
                                  start_id=START)
    want = direct_scores(params, PROBLEMS, SOLUTIONS)
    assert got.shape == (4,) and ((got > 0) & (got < 1)).all()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.ptp(got) > 1e-3, "different candidates should get different scores"


def test_single_token_labels(params):
    labels = ("Y", "N")
    got = evaluator.score_solutions(params, CFG, FakeVocab(), PROBLEMS[:2], SOLUTIONS[:2],
                                  batch_size=2, start_id=START, labels=labels)
    np.testing.assert_allclose(got, direct_scores(params, PROBLEMS[:2], SOLUTIONS[:2], labels),
                               atol=1e-5, rtol=0)


def test_default_labels_are_the_ones_the_evaluator_was_trained_on(params):
    import gin
    with gin.unlock_config():
        gin.bind_parameter("evaluator_target.positive", "Y")
        gin.bind_parameter("evaluator_target.negative", "N")
    got = evaluator.score_solutions(params, CFG, FakeVocab(), PROBLEMS[:2], SOLUTIONS[:2],
                                    batch_size=2, start_id=START)
    np.testing.assert_allclose(got, direct_scores(params, PROBLEMS[:2], SOLUTIONS[:2], ("Y", "N")),
                               atol=1e-5, rtol=0)


def eight_devices(params):
    """(partitioner, params sharded) on a data=2, fsdp=2, tensor=2 mesh of 8 devices."""
    partitioner = partitioning.Partitioner.create(
        CFG, partitioning.make_mesh(data=2, fsdp=2, tensor=2))
    return partitioner, jax.device_put(params, partitioner.param_shardings(CFG))


def test_eight_devices_score_like_one(params):
    partitioner, sharded = eight_devices(params)
    kw = dict(batch_size=3, start_id=START)
    one = evaluator.score_solutions(params, CFG, FakeVocab(), PROBLEMS, SOLUTIONS, **kw)
    eight = evaluator.score_solutions(sharded, CFG, FakeVocab(), PROBLEMS, SOLUTIONS,
                                    partitioner=partitioner, **kw)
    np.testing.assert_allclose(eight, one, atol=1e-6, rtol=0)


def test_bad_inputs(params):
    vocab = FakeVocab()
    with pytest.raises(ValueError, match=r"problems \(2\) and solutions \(1\)"):
        evaluator.score_solutions(params, CFG, vocab, PROBLEMS[:2], SOLUTIONS[:1], start_id=START)
    with pytest.raises(ValueError, match="evaluator contexts\\[0\\] has"):
        evaluator.score_solutions(params, CFG, vocab, ["x" * 300], ["y"], start_id=START,
                                truncate=False)
    assert evaluator.score_solutions(params, CFG, vocab, [], [], start_id=START).shape == (0,)


def test_long_contexts_are_truncated_not_rejected(params):
    got = evaluator.score_solutions(params, CFG, FakeVocab(), ["x" * 300], ["y"], batch_size=1,
                                  start_id=START)
    assert got.shape == (1,) and np.isfinite(got).all()


def test_score_groups_split_one_flat_call_per_problem(params):
    vocab = FakeVocab()
    flat = evaluator.score_solutions(params, CFG, vocab, PROBLEMS, SOLUTIONS, batch_size=3,
                                   start_id=START)
    problems = ["What is 2+3?", "No solutions here.", "Compute 7*6.", "Find x if x-4=1."]
    groups = [[SOLUTIONS[0], SOLUTIONS[2]], [], [SOLUTIONS[1]], [SOLUTIONS[3]]]
    got = evaluator.score_groups(params, CFG, vocab, problems, groups, batch_size=3, start_id=START)
    assert [g.shape for g in got] == [(2,), (0,), (1,), (1,)]
    np.testing.assert_allclose(np.concatenate(got), flat[[0, 2, 1, 3]], atol=1e-6, rtol=0)
    assert evaluator.score_groups(params, CFG, vocab, [], [], start_id=START) == []
    with pytest.raises(ValueError, match=r"problems \(1\) and solution groups \(2\)"):
        evaluator.score_groups(params, CFG, vocab, PROBLEMS[:1], [[], []], start_id=START)


def test_score_records_steps_is_the_least_score_over_line_prefixes(params):
    solutions = ["3 + 4 = 7\n7 * 2 = 15\n\\boxed{15}", "\\boxed{9}", "1 + 1 = 2\n\\boxed{2}"]
    records = [{"problem": PROBLEMS[0], "samples": [{"text": t} for t in solutions[:2]]},
               {"problem": PROBLEMS[1], "samples": [{"text": solutions[2]}]}]
    assert evaluator.score_records(params, CFG, FakeVocab(), records, batch_size=3,
                                 start_id=START, steps=True) == 3
    for record in records:
        for sample in record["samples"]:
            prefixes = sample["text"].split("\n")
            prefixes = ["\n".join(prefixes[:i]) for i in range(1, len(prefixes) + 1)]
            want = direct_scores(params, [record["problem"]] * len(prefixes), prefixes).min()
            np.testing.assert_allclose(sample["score"], want, atol=1e-5, rtol=0)
    whole = [dict(s) for s in records[0]["samples"]]
    evaluator.score_records(params, CFG, FakeVocab(), [{"problem": PROBLEMS[0], "samples": whole}],
                          batch_size=3, start_id=START)
    assert whole[0]["score"] >= records[0]["samples"][0]["score"]  # the whole is one prefix
    assert whole[1]["score"] == pytest.approx(records[0]["samples"][1]["score"], abs=1e-6)


def test_likelihood_scores_are_the_mean_token_probability_of_a_full_forward(params):
    """method='likelihood': S = exp(log P(X + EOS | generation prompt) / tokens), the
    tokens being X's and its EOS; the rows are batched, padded and filled, the values are
    those of one forward over each example alone."""
    vocab = FakeVocab()
    records = [{"problem": p, "samples": [{"text": s}, {"text": s + " 1"}]}
               for p, s in zip(PROBLEMS[:3], SOLUTIONS[:3])]
    assert evaluator.score_records(params, CFG, vocab, records, batch_size=4, start_id=START,
                                 method="likelihood") == 6
    assert all(record["score_method"] == "likelihood" for record in records)  # for evaluate
    for record in records:
        for sample in record["samples"]:
            context = [START] + vocab.encode(generation_prompt(record["problem"]))
            target = vocab.encode(sample["text"]) + [vocab.eos_id]
            want = np.exp(direct_logprob(params, context, target) / len(target))
            assert 0 < sample["score"] < 1
            np.testing.assert_allclose(sample["score"], want, rtol=1e-4)
    # on 8 devices (a batch of 3 rounds up to 4 rows a shard pair), and with the output
    # projection a chunk of positions at a time: the same scores
    partitioner, sharded = eight_devices(params)
    again = [{"problem": r["problem"], "samples": [{"text": s["text"]} for s in r["samples"]]}
             for r in records]
    evaluator.score_records(sharded, CFG, vocab, again, batch_size=3, start_id=START,
                          method="likelihood", partitioner=partitioner, loss_chunk=16)
    np.testing.assert_allclose([s["score"] for r in again for s in r["samples"]],
                               [s["score"] for r in records for s in r["samples"]], rtol=1e-5)


def test_score_records_rejects_settings_that_do_not_fit_the_method(params):
    records = [{"problem": PROBLEMS[0], "samples": [{"text": SOLUTIONS[0]}]}]
    with pytest.raises(ValueError, match=r"score_records.method='loglik': choose from"):
        evaluator.score_records(params, CFG, FakeVocab(), records, method="loglik")
    with pytest.raises(ValueError, match="does not combine with method='likelihood'"):
        evaluator.score_records(params, CFG, FakeVocab(), records, method="likelihood", steps=True)
    with pytest.raises(ValueError, match="loss_chunk applies to method='likelihood' only"):
        evaluator.score_records(params, CFG, FakeVocab(), records, loss_chunk=16)
    assert "score" not in records[0]["samples"][0] and "score_method" not in records[0]

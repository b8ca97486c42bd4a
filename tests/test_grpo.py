"""GRPO: advantages, the k3 KL estimator and the clipped loss against hand-computed values;
one update raises the log-probability of rewarded completions; the loop resumes
bit-identical after a crash mid-iteration; 8 devices give the iteration of one."""
import functools
import math

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mathft_jax.convert import checkpoints
from mathft_jax.models import partitioning
from mathft_jax.training import objectives, trainer
from mathft_jax.data.packing import empty_batch, write_segment
from mathft_jax.core.metrics_writer import read_metrics
from mathft_jax.models import Decoder
from mathft_jax.models.decoder import init_params
from mathft_jax.training.optim import learning_rate_schedule, make_optimizer
from mathft_jax.rl import grpo, loop, rewards, rollout
from train_utils import TINY


class CharVocab:
    """Characters to ids 3.. (fits TINY's 64): enough of a vocabulary to decode and grade."""
    CHARS = "0123456789+-*=(). abcdefghijklmnopqrstuvwxyz\\{}:\n?"
    eos_id, bos_id = 1, None

    def encode(self, text):
        return [3 + self.CHARS.index(c) for c in text if c in self.CHARS]

    def decode(self, ids):
        return "".join(self.CHARS[i - 3] for i in ids if 3 <= i < 3 + len(self.CHARS))


PROBLEMS = [{"problem_id": f"p{i}", "problem": f"{i}+{i}?", "gold": str(2 * i)} for i in range(4)]


@rewards.register_reward("digits")
def digits(problem, text):
    """A reward that varies within groups under a random model: the share of digits."""
    return sum(c.isdigit() for c in text) / max(len(text), 1)


CRASH = {"after": None}


@rewards.register_reward("crash_test")
def crash_test(problem, text):
    """Raises on its `after`-th call: a run killed in the middle of an iteration."""
    if CRASH["after"] is not None:
        CRASH["after"] -= 1
        if CRASH["after"] < 0:
            CRASH["after"] = None
            raise KeyboardInterrupt("killed mid-iteration")
    return 0.0


@rewards.register_reward("odd_digits")
def odd_digits(problem, text):
    """`digits` on odd problems only: the groups of even ones are all equal (no signal)."""
    return digits(problem, text) if int(problem["problem_id"][1:]) % 2 else 0.0


# ----------------------------------------------------------------------------- pure functions


def test_group_advantages_by_hand():
    r = np.array([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0], [3.0, 0.0, 0.0, 0.0]])
    adv = np.asarray(grpo.group_advantages(r, scale_std=True, eps=1e-4))
    np.testing.assert_allclose(adv[0], np.array([0.5, -0.5, -0.5, 0.5]) / (0.5 + 1e-4), rtol=1e-6)
    np.testing.assert_array_equal(adv[1], 0.0)  # all equal: no signal
    std = math.sqrt(((3 - 0.75) ** 2 + 3 * 0.75 ** 2) / 4)
    np.testing.assert_allclose(adv[2], np.array([2.25, -0.75, -0.75, -0.75]) / (std + 1e-4), rtol=1e-6)
    dr = np.asarray(grpo.group_advantages(r, scale_std=False))  # Dr. GRPO: mean-centred only
    np.testing.assert_allclose(dr[2], [2.25, -0.75, -0.75, -0.75], rtol=1e-6)


def test_k3_kl_value_gradient_and_unbiasedness():
    log_p, ref = jnp.log(0.5), jnp.log(0.25)
    # q = log(0.25 / 0.5): exp(q) - q - 1 = 0.5 + log 2 - 1
    assert float(grpo.k3_kl(log_p, ref)) == pytest.approx(0.5 + math.log(2) - 1, rel=1e-6)
    # d/d log p = 1 - p_ref / p = 0.5; d/d log p_ref = p_ref / p - 1 = -0.5
    g_p, g_ref = jax.grad(grpo.k3_kl, argnums=(0, 1))(log_p, ref)
    assert float(g_p) == pytest.approx(0.5, rel=1e-6) and float(g_ref) == pytest.approx(-0.5, rel=1e-6)
    assert float(grpo.k3_kl(ref, ref)) == 0.0
    # E_{x ~ p}[k3] is exactly KL(p || ref) on a categorical
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.5, 0.3])
    expectation = float(jnp.sum(p * grpo.k3_kl(jnp.log(p), jnp.log(q))))
    assert expectation == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-5)


def test_clipped_token_loss_by_hand():
    ratio = np.array([[1.5, 0.5], [0.5, 1.5]], np.float32)
    old = np.log(np.full((2, 2), 0.4, np.float32))
    log_p = jnp.asarray(old + np.log(ratio))
    adv = jnp.array([1.0, -1.0])
    out = grpo.clipped_token_loss(log_p, jnp.asarray(old), None, adv, 0.2, 0.2, kl_coef=0.1)
    # A=+1: -min(1.5, 1.2) = -1.2 (clipped), -min(0.5, 0.8) = -0.5; A=-1: -min(-0.5, -0.8) =
    # 0.8 (clipped), -min(-1.5, -1.2) = 1.5
    np.testing.assert_allclose(out["loss"], [[-1.2, -0.5], [0.8, 1.5]], rtol=1e-5)
    np.testing.assert_array_equal(out["clipped"], [[1, 0], [1, 0]])
    grad = jax.grad(lambda lp: grpo.clipped_token_loss(lp, jnp.asarray(old), None, adv, 0.2, 0.2,
                                                       0.0)["loss"].sum())(log_p)
    # clipped tokens carry no gradient; the others -A * ratio
    np.testing.assert_allclose(grad, [[0.0, -0.5], [0.0, 1.5]], rtol=1e-5)
    # clip-higher: eps_high 0.6 lets ratio 1.5 with A > 0 through
    high = grpo.clipped_token_loss(log_p, jnp.asarray(old), None, adv, 0.2, 0.6, 0.0)
    assert float(high["loss"][0, 0]) == pytest.approx(-1.5, rel=1e-5)
    # the KL term adds kl_coef * k3 per token
    with_kl = grpo.clipped_token_loss(log_p, jnp.asarray(old), jnp.asarray(old), adv, 0.2, 0.2, 0.1)
    k3 = np.asarray(grpo.k3_kl(log_p, jnp.asarray(old)))
    np.testing.assert_allclose(with_kl["loss"], np.asarray(out["loss"]) + 0.1 * k3, rtol=1e-5)


def test_token_log_probs_are_of_the_tempered_distribution():
    logits = jnp.log(jnp.array([[[1.0, 3.0]]]))  # p = (1/4, 3/4)
    logp, entropy = grpo.token_log_probs(logits, jnp.array([[1]]))
    assert float(logp[0, 0]) == pytest.approx(math.log(0.75), rel=1e-6)
    assert float(entropy[0, 0]) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)),
                                                 rel=1e-6)
    cold, _ = grpo.token_log_probs(logits, jnp.array([[1]]), temperature=0.5)  # p ~ (1, 9)
    assert float(cold[0, 0]) == pytest.approx(math.log(0.9), rel=1e-6)


def test_rewards_by_name_and_weights():
    problems = [{"problem_id": "a", "problem": "2+2?", "gold": "4"}]
    texts = [["so \\boxed{4}", "so \\boxed{4.0}", "so \\boxed{5}", "four"]]
    total, parts = rewards.compute_rewards(problems, texts, {"boxed": 0.5, "digits": 1.0})
    np.testing.assert_array_equal(parts["correct"], [[1, 1, 0, 0]])  # always graded
    np.testing.assert_array_equal(parts["boxed"], [[1, 1, 1, 0]])
    want = 0.5 * parts["boxed"] + np.array([[digits(None, t) for t in texts[0]]])
    np.testing.assert_allclose(total, want)
    assert rewards.reward_weights() == {"correct": 1.0}
    with pytest.raises(ValueError, match="unknown rewards \\['nope'\\]"):
        rewards.reward_weights({"nope": 1.0})
    with pytest.raises(ValueError, match="already registered"):
        rewards.register_reward("correct")(lambda p, t: 0.0)


def test_correct_reward_takes_a_benchmarks_parts_and_tolerance():
    """A problem record of a benchmark (data.sources.problem_record): a list gold needs every
    part, and `gold_tolerance` is granted."""
    problems = [{"problem_id": "a", "problem": "?", "gold": ["69", "84"]},
                {"problem_id": "b", "problem": "?", "gold": "4.2", "gold_tolerance": 0.1}]
    texts = [["\\boxed{84, 69}", "\\boxed{69}"], ["\\boxed{4.25}", "\\boxed{4.4}"]]
    _, parts = rewards.compute_rewards(problems, texts, {"correct": 1.0})
    np.testing.assert_array_equal(parts["correct"], [[1, 0], [1, 0]])


def test_correct_reward_is_the_pipelines_judgment_by_the_chosen_grader(monkeypatch):
    """`correct` is candidates.grade_sample's verdict by the grader given (the pipeline's
    `pipeline.grader` in its grpo stage), not always mathft's."""
    from mathft_jax.results import candidates
    from mathft_jax.grading import graders
    monkeypatch.setitem(graders.GRADERS, "contrary", graders.Grader(
        "contrary", lambda text, answer, gold, deadline: answer == "5", lambda: "contrary 1"))
    problems = [{"problem_id": "a", "problem": "2+2?", "gold": "4"}]
    texts = [["so \\boxed{4}", "so \\boxed{5}", "four"]]
    _, mathft = rewards.compute_rewards(problems, texts, {"correct": 1.0})
    _, contrary = rewards.compute_rewards(problems, texts, {"correct": 1.0}, grader="contrary")
    np.testing.assert_array_equal(mathft["correct"], [[1, 0, 0]])
    np.testing.assert_array_equal(contrary["correct"], [[0, 1, 0]])
    assert [candidates.grade_sample({"text": t}, "4", grader="contrary")
            for t in texts[0]] == [False, True, False]
    with pytest.raises(Exception, match="grpo.grader: unknown grader 'nope'"):
        loop.GrpoConfig(model_dir="x", grader="nope").validate()


def test_process_reward_pays_only_right_answers_with_right_steps(monkeypatch):
    from mathft_jax.grading import graders
    problems = [{"problem_id": "a", "problem": "2 + 2, then minus 1?", "gold": "3"}]
    texts = [["2 + 2 = 4\n4 - 1 = 3\n\\boxed{3}", "2 + 2 = 5\n5 - 1 = 3\n\\boxed{3}",
              "2 + 2 = 4\n4 - 1 = 2\n\\boxed{2}", "\\boxed{3}", "2 + 2 = 4\n\\boxed{4}"]]
    total, parts = rewards.compute_rewards(problems, texts, {"process": 1.0})
    np.testing.assert_array_equal(parts["correct"], [[1, 1, 0, 1, 0]])
    np.testing.assert_array_equal(total, [[1, 0, 0, 1, 0]])  # the lucky answer earns nothing
    # It grades with the loop's grader, as `correct` does.
    monkeypatch.setitem(graders.GRADERS, "contrary", graders.Grader(
        "contrary", lambda text, answer, gold, deadline: answer == "4", lambda: "contrary 1"))
    _, contrary = rewards.compute_rewards(problems, texts, {"process": 1.0}, grader="contrary")
    np.testing.assert_array_equal(contrary["process"], [[0, 0, 0, 0, 1]])


def test_prompt_order_is_arithmetic_on_the_position():
    first = rollout.problem_indices(5, seed=3, first=0, count=5)
    assert sorted(first) == list(range(5))  # an epoch is a permutation
    again = rollout.problem_indices(5, seed=3, first=3, count=6)  # across the epoch boundary
    np.testing.assert_array_equal(again[:2], first[3:])
    np.testing.assert_array_equal(again[2:], rollout.problem_indices(5, 3, 5, 4))
    assert sorted(rollout.problem_indices(5, 3, 5, 5)) == list(range(5))


def test_dynamic_sampling_chooses_groups_with_signal_first_in_sampled_order():
    flat, mixed = [1.0, 1.0], [0.0, 1.0]
    rounds = [np.array([flat, mixed, flat]), np.array([mixed, flat, mixed])]
    assert loop.choose_groups(rounds[:1], 3) == [(0, 0), (0, 1), (0, 2)]  # one round: as is
    assert loop.choose_groups(rounds, 3) == [(0, 1), (1, 0), (1, 2)]
    assert loop.choose_groups(rounds, 2) == [(0, 1), (1, 0)]
    # too few groups with signal: all-equal ones fill the batch, earliest first
    assert loop.choose_groups([np.array([flat, flat, mixed])], 2) == [(0, 0), (0, 2)]
    with pytest.raises(ValueError, match="3 groups sampled, 4 needed"):
        loop.choose_groups(rounds[:1], 4)


def _rows(rng, b=4, t=10):
    tokens = rng.integers(3, TINY.vocab_size, (b, t + 1)).astype(np.int32)
    mask = np.zeros((b, t), np.float32)
    for r, n in enumerate([2, 5, 7, 0][:b]):  # completion lengths, one empty
        mask[r, 3:3 + n] = 1
    return {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
            "decoder_loss_weights": mask}


@pytest.mark.parametrize("normalization", grpo.NORMALIZATIONS)
def test_objective_normalisations_by_hand(normalization):
    """At the sampling policy (ratio 1) and with the reference equal to it, every token's loss
    is -A: the three normalisers are three weighted means of -A."""
    rng = np.random.default_rng(0)
    batch = _rows(rng)
    params = nn.unbox(init_params(TINY, jax.random.PRNGKey(0)))
    model = Decoder(TINY)
    # at a temperature, as the loop samples: the objective tempers its log-probs alike
    logp, _ = grpo.policy_token_stats(model, params, batch, temperature=0.7)
    adv = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
    batch.update(old_log_probs=logp, ref_log_probs=logp, advantages=adv)
    out = grpo.grpo_objective(model, params, batch, kl_coef=0.5, normalization=normalization,
                              temperature=0.7)
    n = batch["decoder_loss_weights"].sum(-1)  # 2, 5, 7, 0
    want = {"token": (-(adv * n).sum(), n.sum()),
            "sequence": (-(adv[:3]).sum(), 3.0),  # the empty row counts for nothing
            "constant": (-(adv * n).sum(), 4 * 10.0)}[normalization]
    assert float(out["loss"]) == pytest.approx(want[0], rel=1e-5)
    assert float(out["weight"]) == want[1]
    assert float(out["token_kl"]) == pytest.approx(0.0, abs=1e-6)
    assert float(out["tokens"]) == 14.0 and float(out["token_clipped"]) == 0.0
    # rows the loop trimmed from 12 positions to 10: Dr. GRPO's constant is still 4 x 12
    out = grpo.grpo_objective(model, params, {**batch, "full_length": np.full(4, 12.0)},
                              kl_coef=0.5, normalization=normalization, temperature=0.7)
    assert float(out["weight"]) == (4 * 12.0 if normalization == "constant" else want[1])


@pytest.mark.slow
@pytest.mark.parametrize("normalization", grpo.NORMALIZATIONS)
def test_supervised_term_adds_the_weighted_mean_cross_entropy_of_the_solutions(normalization):
    """with_supervised: after the trainer's division by the rollout's weight, the loss and its
    gradient are GRPO's plus weight x the solutions' mean token cross-entropy, whatever the
    normaliser; the solution rows ride under `sft/` keys and change nothing else."""
    rng = np.random.default_rng(1)
    batch = _rows(rng)
    params = nn.unbox(init_params(TINY, jax.random.PRNGKey(0)))
    model = Decoder(TINY)
    logp, _ = grpo.policy_token_stats(model, params, batch)
    batch.update(old_log_probs=logp + 0.1, advantages=np.array([1.0, -2.0, 0.5, 3.0], np.float32))
    solutions = _rows(np.random.default_rng(2))
    solutions["decoder_loss_weights"][:, :3] = 1.0  # 3 + 2, 3 + 5, 3 + 7, 3 + 0 tokens
    both = {**batch, **{grpo.SUPERVISED + k: v for k, v in solutions.items()}}
    policy = functools.partial(grpo.grpo_objective, normalization=normalization)

    def mean_loss(fn, data):
        return lambda p: (lambda out: out["loss"] / out["weight"])(fn(model, p, data))

    combined = mean_loss(grpo.with_supervised(policy, 0.3), both)
    want = lambda p: (mean_loss(policy, batch)(p)  # noqa: E731
                      + 0.3 * mean_loss(objectives.lm_objective, solutions)(p))
    xent = objectives.lm_objective(model, params, solutions)
    assert float(xent["weight"]) == 5 + 8 + 10 + 3  # the solutions' tokens, hand-counted
    assert float(combined(params)) == pytest.approx(float(want(params)), rel=1e-5)
    out = grpo.with_supervised(policy, 0.3)(model, params, both)
    assert float(out["sft_xent"] / out["weight"]) == pytest.approx(
        float(xent["xent"] / xent["weight"]), rel=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(jax.grad(combined)(params)),
                    jax.tree_util.tree_leaves(jax.grad(want)(params))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("normalization", grpo.NORMALIZATIONS)
@pytest.mark.parametrize("softcap", [None, 5.0], ids=["untied", "tied+softcap"])
def test_loss_chunk_gives_the_loss_and_gradients_of_full_logits(normalization, softcap):
    """Off the sampling policy (ratios != 1, some clipped) and with a KL term: the chunked
    output projection (fused_loss.chunked_row_sums) changes neither the sums nor the grads,
    also where the chunk does not divide the rows' length (16 positions padded to 18)."""
    cfg = TINY.replace(dtype="float32", tie_embeddings=softcap is not None,
                       final_logit_softcap=softcap)
    rng = np.random.default_rng(1)
    batch = _rows(rng, t=16)
    params = nn.unbox(init_params(cfg, jax.random.PRNGKey(3)))
    model = Decoder(cfg)
    logp, _ = grpo.policy_token_stats(model, params, batch, temperature=0.7)
    mask = batch["decoder_loss_weights"]
    batch.update(advantages=np.array([1.0, -2.0, 0.5, 3.0], np.float32),
                 old_log_probs=np.asarray(logp) + 0.3 * rng.standard_normal(mask.shape) * mask,
                 ref_log_probs=np.asarray(logp) + 0.2 * rng.standard_normal(mask.shape) * mask)

    def loss(p, **kw):
        sums = grpo.grpo_objective(model, p, batch, kl_coef=0.1, normalization=normalization,
                                   temperature=0.7, **kw)
        return sums["loss"] / sums["weight"], sums

    (_, ref), ref_grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    (_, sums), grads = jax.jit(jax.value_and_grad(
        functools.partial(loss, loss_chunk=6), has_aux=True))(params)
    assert 0 < float(ref["token_clipped"]) < float(ref["tokens"]) and float(ref["token_kl"]) > 0
    for k in ref:
        np.testing.assert_allclose(sums[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for (path, r), g in zip(jax.tree_util.tree_leaves_with_path(ref_grads),
                            jax.tree_util.tree_leaves(grads)):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    head = "logits_dense" if "logits_dense" in grads else "embedding"
    assert float(jnp.abs(grads[head]).max()) > 1e-4


# ----------------------------------------------------------------------------- one update


@pytest.mark.slow
def test_one_update_raises_rewarded_completions_log_probability():
    vocab = CharVocab()
    opt_schedule = learning_rate_schedule(peak=3e-3)
    optimizer = make_optimizer(schedule=opt_schedule)
    _, sh = trainer.abstract_state(TINY, optimizer, partitioning.Partitioner.single_device(TINY))
    state = trainer.init_state(TINY, optimizer, sh, seed=0)
    sampling = rollout.sampling_params(8, 12, 1.0, 0, 1.0, vocab.eos_id)
    roll = rollout.rollout_batch(state.params, TINY, vocab, PROBLEMS[:2], sampling, seed=3,
                                 prompt_ids=[0, 1], sequence_length=48, start_id=0)
    reward = np.array([[digits(None, t) for t in group] for group in roll.texts])
    adv = np.asarray(grpo.group_advantages(reward)).reshape(-1)
    assert (adv > 0).any() and (adv < 0).any()
    model = Decoder(TINY)
    stats = jax.jit(lambda p, b: grpo.policy_token_stats(model, p, b)[0].sum(-1))
    before = np.asarray(stats(state.params, roll.batch))
    old, _ = grpo.policy_token_stats(model, state.params, roll.batch)
    batch = dict(roll.batch, advantages=adv, old_log_probs=np.asarray(old))
    step = jax.jit(trainer.make_train_step(TINY, optimizer, opt_schedule, grpo.grpo_objective))
    state, metrics = step(state, batch)
    delta = np.asarray(stats(state.params, roll.batch)) - before
    assert float(metrics["token_clipped"]) == 0.0  # first step: ratio 1
    assert delta[adv > 0].mean() > 0 > delta[adv < 0].mean()
    # advantage-weighted: the change follows the advantage across completions
    assert np.corrcoef(adv, delta)[0, 1] > 0.5


# ----------------------------------------------------------------------------- the loop


def _run_loop(tmp_path, name, mesh=None, iterations=2, reward="digits", **kw):
    kw.setdefault("kl_coef", 0.05)
    kw.setdefault("length_bucket", 16)  # rows of 48 trained cut to 32 or 48
    gin.bind_parameter("reward_weights.weights", {reward: 1.0, "crash_test": 1.0, "boxed": 0.1})
    gin.bind_parameter("learning_rate_schedule.peak", 3e-3)
    return loop.grpo(model_dir=str(tmp_path / name), problems=PROBLEMS, iterations=iterations,
                     prompts_per_iteration=2, num_generations=4, max_decode_len=12,
                     sequence_length=48, steps_per_iteration=2, checkpoint_every=1,
                     async_checkpoints=False, model=TINY, vocabulary=CharVocab(),
                     mesh_fn=mesh or (lambda: partitioning.make_mesh(devices=jax.devices()[:1])),
                     progress=False, seed=1, **kw)


def test_settings_fail_early_naming_the_binding(tmp_path):
    from mathft_jax.core import settings
    with pytest.raises(settings.SettingError, match="grpo.model_dir is not set"):
        loop.grpo(problems=PROBLEMS)
    with pytest.raises(settings.SettingError, match="grpo.num_generations=0"):
        loop.grpo(model_dir=str(tmp_path), num_generations=0)
    with pytest.raises(settings.SettingError, match="grpo.sequence_length=16 leaves no room"):
        loop.grpo(model_dir=str(tmp_path), sequence_length=16, max_decode_len=16)
    gin.parse_config("grpo.kl_coef = -1.0")
    with pytest.raises(settings.SettingError, match="grpo.kl_coef=-1.0"):
        loop.grpo(model_dir=str(tmp_path))
    assert not list(tmp_path.iterdir())  # nothing written


def _params(model_dir):
    one_device = partitioning.Partitioner.single_device(TINY)
    return jax.device_get(checkpoints.load_params(model_dir, TINY, one_device))


def _rows_without_time(model_dir):
    return [{k: v for k, v in row.items() if "seconds" not in k and k != "time"}
            for row in read_metrics(model_dir)]


@pytest.mark.slow
def test_killed_run_resumes_bit_identical_and_8_devices_match_one(tmp_path, monkeypatch):
    # every run also adds 0.5 * S(X|P) of an "evaluator" (a random TINY model)
    evaluator = str(tmp_path / "evaluator")
    checkpoints.save_params(evaluator, nn.unbox(init_params(TINY, jax.random.PRNGKey(7))))
    _run = functools.partial(_run_loop, evaluator_checkpoint=evaluator, evaluator_weight=0.5)
    whole = _run(tmp_path, "whole")
    assert whole.final_iteration == 2
    rows = _rows_without_time(whole.model_dir)
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward", "accuracy", "kl", "clip_fraction", "response_length", "entropy"):
        assert f"grpo/{key}" in rows[0]
    assert rows[0]["grpo/kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts at the reference
    assert rows[1]["grpo/kl"] > 0 and rows[0]["grpo/clip_fraction"] >= 0
    assert 0 < rows[0]["grpo/reward_evaluator"] < 1
    assert rows[0]["grpo/reward"] == pytest.approx(
        rows[0]["grpo/reward_digits"] + 0.1 * rows[0]["grpo/reward_boxed"]
        + 0.5 * rows[0]["grpo/reward_evaluator"])

    CRASH["after"] = 8 + 3  # all of iteration 1's 8 completions, then 3 into iteration 2
    # the killed run's checkpoint is as the code before dynamic sampling wrote it, with no
    # data position: the resume must take it as P prompts an iteration
    save = checkpoints.save
    monkeypatch.setattr(checkpoints, "save", lambda mngr, step, params, opt, meta: save(
        mngr, step, params, opt, {k: v for k, v in meta.items() if k != "position"}))
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "killed")
    monkeypatch.setattr(checkpoints, "save", save)
    assert checkpoints.any_complete(str(tmp_path / "killed")) == 1
    resumed = _run(tmp_path, "killed")
    assert (resumed.start_iteration, resumed.final_iteration) == (1, 2)
    assert checkpoints.tree_equal(_params(whole.model_dir), _params(resumed.model_dir))
    # iteration 2's metrics of the resumed run equal the uninterrupted run's
    assert _rows_without_time(resumed.model_dir)[-1] == rows[1]

    assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
    sharded = _run(tmp_path, "sharded", iterations=1,
                   mesh=lambda: partitioning.make_mesh(data=2, fsdp=2, tensor=2))
    got = _rows_without_time(sharded.model_dir)[0]
    for key in ("grpo/reward_digits", "grpo/response_length", "grpo/accuracy"):
        assert got[key] == rows[0][key], key  # the same samples
    # the evaluator's scores, computed on 8 devices, agree up to float round-off
    assert got["grpo/reward"] == pytest.approx(rows[0]["grpo/reward"], rel=1e-6)
    assert got["grpo/loss"] == pytest.approx(rows[0]["grpo/loss"], rel=1e-4, abs=1e-6)
    after_one = _params(str(tmp_path / "whole" / "1"))  # the uninterrupted run's iteration 1
    for a, b in zip(jax.tree_util.tree_leaves(_params(sharded.model_dir)),
                    jax.tree_util.tree_leaves(after_one)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def test_trim_rows_cuts_the_shared_padding_to_a_bucket_multiple():
    rows = empty_batch(3, 40)
    for row, n in enumerate((5, 11)):  # the third row stays empty
        write_segment(rows, row, 0, 1, np.arange(3, 3 + n // 2, dtype=np.int32),
                      np.arange(3, 3 + n - n // 2, dtype=np.int32), 0)
    trimmed = rollout.trim_rows(rows, 8)
    assert {v.shape for v in trimmed.values()} == {(3, 16)}  # the longest row ends at 11
    for k, v in rows.items():
        np.testing.assert_array_equal(trimmed[k], v[:, :16])
        assert not v[:, 16:].any(), k  # only padding was cut
    assert rollout.trim_rows(rows, 0) is rows
    assert rollout.trim_rows(rows, 64)["decoder_segment_ids"].shape == (3, 40)  # at most L
    assert rollout.trim_rows(empty_batch(2, 40), 8)["decoder_segment_ids"].shape == (2, 8)


@pytest.mark.parametrize("normalization", ["token", "constant"])
def test_trimmed_rows_give_the_iteration_of_whole_rows(tmp_path, normalization):
    gin.bind_parameter("grpo_objective.normalization", normalization)
    whole = _run_loop(tmp_path, "whole", iterations=1, length_bucket=0)
    trimmed = _run_loop(tmp_path, "trimmed", iterations=1, length_bucket=8)
    got, want = (_rows_without_time(r.model_dir)[0] for r in (trimmed, whole))
    assert want["grpo/row_length"] == 48 and got["grpo/row_length"] < 48
    assert got.pop("grpo/row_length") % 8 == 0
    want.pop("grpo/row_length")
    assert got.keys() == want.keys()
    for key in got:
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    for a, b in zip(jax.tree_util.tree_leaves(_params(trimmed.model_dir)),
                    jax.tree_util.tree_leaves(_params(whole.model_dir))):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_dynamic_sampling_fills_the_batch_with_signal_and_resumes_at_its_data_position(
        tmp_path):
    _run = functools.partial(_run_loop, reward="odd_digits", max_sampling_rounds=3)
    whole = _run(tmp_path, "whole")
    rows = _rows_without_time(whole.model_dir)
    # 2 odd problems in every 4 positions: 3 rounds of 2 find both (their `digits` rewards
    # differ within each group under this seed's random model, seed 1)
    for row in rows:
        assert row["grpo/batch_groups_with_signal"] == 1.0
        assert row["grpo/prompts_sampled"] in (2.0, 4.0, 6.0)
    first = rows[0]["grpo/prompts_sampled"]
    assert first > 2, "iteration 1 took one round: the resume below would not test the position"
    assert rows[0]["grpo/groups_all_same"] == pytest.approx(1 - 2 / first)  # the even ones

    CRASH["after"] = int(first) * 4 + 3  # iteration 1's completions, then 3 into iteration 2
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "killed")
    resumed = _run(tmp_path, "killed")
    assert (resumed.start_iteration, resumed.final_iteration) == (1, 2)
    assert checkpoints.tree_equal(_params(whole.model_dir), _params(resumed.model_dir))
    assert _rows_without_time(resumed.model_dir)[-1] == rows[1]


class SolutionRows:
    """Packed-like rows of `rows` x `length` tokens, a new draw per batch (its index seeds
    it), resumable as the dataset iterators are: a stand-in for `grpo.sft_task`'s batches."""

    def __init__(self, rows=8, length=48):
        self.rows, self.length, self.index = rows, length, 0

    def __next__(self):
        rng = np.random.default_rng(self.index)
        self.index += 1
        tokens = rng.integers(3, TINY.vocab_size, (self.rows, self.length + 1)).astype(np.int32)
        return {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
                "decoder_loss_weights": np.ones((self.rows, self.length), np.float32)}

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state):
        self.index = state["index"]


@pytest.mark.slow
def test_supervised_term_resumes_at_its_solution_position_and_8_devices_match_one(tmp_path):
    """With grpo.sft_weight each policy step also learns a batch of solutions: the run logs
    their cross-entropy, a killed run resumes at the same solution batch (bit-identical), and
    8 devices give the iteration of one."""
    def run(name, **kw):
        return _run_loop(tmp_path, name, sft_weight=2.0, solutions=SolutionRows(), **kw)

    whole = run("whole")
    rows = _rows_without_time(whole.model_dir)
    assert all(r["grpo/sft_xent"] > 0 for r in rows)
    # the loss is GRPO's plus 2 x the solutions' cross-entropy (which is ~log 64 here)
    assert rows[0]["grpo/loss"] > 2 * 0.9 * math.log(TINY.vocab_size)

    CRASH["after"] = 8 + 3  # iteration 1's completions, then 3 into iteration 2
    with pytest.raises(KeyboardInterrupt):
        run("killed")
    resumed = run("killed")
    assert (resumed.start_iteration, resumed.final_iteration) == (1, 2)
    assert checkpoints.tree_equal(_params(whole.model_dir), _params(resumed.model_dir))
    assert _rows_without_time(resumed.model_dir)[-1] == rows[1]

    sharded = run("sharded", iterations=1,
                  mesh=lambda: partitioning.make_mesh(data=2, fsdp=2, tensor=2))
    got = _rows_without_time(sharded.model_dir)[0]
    assert got["grpo/sft_xent"] == pytest.approx(rows[0]["grpo/sft_xent"], rel=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(_params(sharded.model_dir)),
                    jax.tree_util.tree_leaves(_params(str(tmp_path / "whole" / "1")))):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)

    from mathft_jax.core import settings
    _run_loop(tmp_path, "plain", iterations=1)  # a checkpoint with no solution position
    with pytest.raises(settings.SettingError, match="was run without it"):
        run("plain")
    with pytest.raises(settings.SettingError, match="was run with a supervised term"):
        _run_loop(tmp_path, "whole", iterations=3)  # its term dropped on resume
    with pytest.raises(settings.SettingError, match="takes one micro-batch"):
        run("other", micro_batches=2)
    with pytest.raises(settings.SettingError, match="sft_batch_size=12 must be divisible"):
        _run_loop(tmp_path, "odd", sft_weight=1.0, solutions=SolutionRows(rows=12),
                  sft_batch_size=12, mesh=lambda: partitioning.make_mesh(data=8))


def test_solution_batches_read_the_task_as_training_does():
    """The supervised term's rows are the trainer's batches of the task (packed, seeded,
    resumable through JSON checkpoint metadata); an unknown task names grpo.sft_task."""
    import json
    from mathft_jax.data import dataset
    rows = loop._solution_batches(loop.GrpoConfig(task="synthetic_arith_steps", split="train",
                                                  sequence_length=64, sft_batch_size=8, seed=3))
    trainer_rows = dataset.get_dataset("synthetic_arith_steps", "train", 64, 8, shuffle=True,
                                       seed=3, pack=True)
    first, want = next(rows), next(trainer_rows)
    assert first.keys() == want.keys() and first["decoder_target_tokens"].shape == (8, 64)
    for key in want:
        np.testing.assert_array_equal(first[key], want[key])
    state = json.loads(json.dumps(rows.get_state()))
    second = next(rows)
    rows.set_state(state)
    np.testing.assert_array_equal(next(rows)["decoder_input_tokens"],
                                  second["decoder_input_tokens"])
    with pytest.raises(ValueError, match="grpo.sft_task='nope' is not a registered"):
        loop._solution_batches(loop.GrpoConfig(sft_task="nope", sequence_length=64,
                                               sft_batch_size=8))

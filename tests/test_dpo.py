"""DPO: the loss against hand-computed values, the objective on a tiny model, the preference
file, and the path candidates -> reference log-likelihoods -> `dpo_pairs` batches -> loss."""
import json
import math

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mathft_jax.models import partitioning
from mathft_jax.scoring import reference
from mathft_jax.training import losses, objectives, optim, trainer
from mathft_jax.data import preferences as preference_file
from mathft_jax.models import Decoder
from mathft_jax.models.config import DecoderConfig
from mathft_jax.models.decoder import init_params
from train_utils import TINY


def _softplus(x):
    return math.log1p(math.exp(x))


def test_dpo_loss_variants_by_hand():
    # h = (-3 - -4) - (-5 - -4.5) = 1.5
    args = [jnp.float32(v) for v in (-3.0, -5.0, -4.0, -4.5)]
    # -log sigmoid(beta h) = log(1 + exp(-beta h)), beta h = 0.75
    assert float(losses.dpo_loss(*args, beta=0.5)) == pytest.approx(_softplus(-0.75), rel=1e-6)
    # conservative DPO: labels flipped with probability 0.1
    want = 0.9 * _softplus(-0.75) + 0.1 * _softplus(0.75)
    assert float(losses.dpo_loss(*args, beta=0.5, label_smoothing=0.1)) == pytest.approx(want, rel=1e-6)
    # IPO: (h - 1 / (2 beta))^2 = (1.5 - 1)^2
    assert float(losses.dpo_loss(*args, beta=0.5, loss_type="ipo")) == pytest.approx(0.25, rel=1e-6)
    # the policy equal to the reference: log 2, whatever beta
    z = jnp.float32(-7.0)
    assert float(losses.dpo_loss(z, z, z, z, beta=3.0)) == pytest.approx(math.log(2), rel=1e-6)
    with pytest.raises(ValueError, match="loss_type='kto'"):
        losses.dpo_loss(*args, beta=0.5, loss_type="kto")


def test_dpo_loss_gradient_pushes_chosen_up_and_rejected_down():
    grad = jax.grad(lambda c, r: losses.dpo_loss(c, r, 0.0, 0.0, beta=0.5), argnums=(0, 1))
    gc, gr = grad(jnp.float32(-1.0), jnp.float32(-1.0))
    # d/dc -log sig(beta (c - r)) = -beta sig(-beta h) = -0.25 at h = 0
    assert float(gc) == pytest.approx(-0.25) and float(gr) == pytest.approx(0.25)


def _pair_batch(rng, pairs=3, t=12, cfg=TINY):
    tokens = rng.integers(2, cfg.vocab_size, (2 * pairs, t + 1)).astype(np.int32)
    weights = np.zeros((2 * pairs, t), np.float32)
    weights[:, 5:] = 1
    return {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
            "decoder_loss_weights": weights,
            "pair_id": np.repeat(np.arange(pairs, dtype=np.int32), 2)}


def test_dpo_objective_matches_direct_computation():
    rng = np.random.default_rng(0)
    batch = _pair_batch(rng)
    batch["pair_id"][4:] = -1  # the third pair is padding
    params = nn.unbox(init_params(TINY, jax.random.PRNGKey(0)))
    model = Decoder(TINY)
    logits = model.apply({"params": params}, batch["decoder_input_tokens"])
    ll = np.asarray(losses.sequence_log_likelihood(logits, batch["decoder_target_tokens"],
                                                   batch["decoder_loss_weights"]))
    ref = ll + rng.normal(0, 2, ll.shape).astype(np.float32)
    batch["ref_log_likelihood"] = ref
    out = objectives.dpo_objective(model, params, batch, beta=0.3, label_smoothing=0.2)
    h = (ll[0::2] - ref[0::2]) - (ll[1::2] - ref[1::2])
    per_pair = [0.8 * _softplus(-0.3 * x) + 0.2 * _softplus(0.3 * x) for x in h[:2]]
    assert float(out["weight"]) == 2.0
    assert float(out["loss"]) == pytest.approx(sum(per_pair), rel=1e-4)
    assert float(out["reward_margin"]) == pytest.approx(0.3 * h[:2].sum(), rel=1e-4, abs=1e-5)
    assert float(out["pair_accuracy"]) == float(np.sum(h[:2] > 0))
    # the policy as its own reference: log 2 a pair
    batch["ref_log_likelihood"] = ll
    same = objectives.dpo_objective(model, params, batch, beta=0.3)
    assert float(same["loss"]) == pytest.approx(2 * math.log(2), rel=1e-5)
    assert objectives.rows_per_group(objectives.dpo_objective) == 2
    del batch["ref_log_likelihood"]
    with pytest.raises(KeyError, match="ref_log_likelihood"):
        objectives.dpo_objective(model, params, batch)


@pytest.mark.slow
def test_dpo_steps_widen_the_margin_with_micro_batches():
    rng = np.random.default_rng(1)
    batch = _pair_batch(rng, pairs=4)
    params = nn.unbox(init_params(TINY, jax.random.PRNGKey(1)))
    logits = Decoder(TINY).apply({"params": params}, batch["decoder_input_tokens"])
    batch["ref_log_likelihood"] = np.asarray(losses.sequence_log_likelihood(
        logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"]))
    sched = optim.learning_rate_schedule(peak=1e-2)
    opt = optim.make_optimizer(schedule=sched)
    _, sh = trainer.abstract_state(TINY, opt, partitioning.Partitioner.single_device(TINY))
    state = trainer.init_state(TINY, opt, sh, seed=0, params=params)
    step = jax.jit(trainer.make_train_step(TINY, opt, sched, objectives.dpo_objective,
                                           micro_batches=2))
    margins = []
    for _ in range(4):
        state, metrics = step(state, batch)
        margins.append(float(metrics["reward_margin"]))
    assert margins[0] == pytest.approx(0.0, abs=1e-5)  # the start is the reference
    assert margins[-1] > margins[0] + 1e-3 and float(metrics["loss"]) < math.log(2)


# ----------------------------------------------------------------------------- the file


def test_preference_file_round_trip_and_errors(tmp_path):
    path = str(tmp_path / "p.jsonl")
    records = [{"problem": "1+1?", "chosen": "2", "rejected": "3"},
               {"prompt": "Q: 2+2\nA:", "chosen": "4", "rejected": "5", "source": "x"}]
    preference_file.write_preferences(path, records)
    assert preference_file.read_preferences(path) == records
    examples = preference_file.preference_examples(records)
    assert [e["pair_id"] for e in examples] == [0, 0, 1, 1]
    assert [e["is_positive"] for e in examples] == [1, 0, 1, 0]
    assert examples[0]["inputs"] == "Problem:\n1+1?\n\nSolution:\n"  # generation format
    assert examples[2]["inputs"] == "Q: 2+2\nA:" and "ref_log_likelihood" not in examples[0]
    half = [preference_file.with_reference(records[:1], np.array([[-1.0, -2.0]]), 64)[0], records[1]]
    (tmp_path / "half.jsonl").write_text("".join(json.dumps(r) + "\n" for r in half))
    with pytest.raises(preference_file.PreferenceFormatError, match="1 of 2 pairs"):
        preference_file.read_preferences(str(tmp_path / "half.jsonl"))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"problem": "q", "chosen": "a"}) + "\n")
    with pytest.raises(preference_file.PreferenceFormatError, match="bad.jsonl:1: 'rejected'"):
        preference_file.read_preferences(str(tmp_path / "bad.jsonl"))


def test_pairs_from_graded_candidates():
    records = [{"problem_id": "a", "problem": "1+1?", "gold": "2",
                "samples": [{"text": "so \\boxed{2}", "correct": True},
                            {"text": "so \\boxed{3}", "correct": False},
                            {"text": "so \\boxed{4}", "correct": False}]},
               {"problem_id": "b", "problem": "2+2?", "gold": "4",  # one-sided: no pair
                "samples": [{"text": "\\boxed{4}", "correct": True}]}]
    pairs = preference_file.from_candidates(records)
    assert len(pairs) == 2 and {p["problem_id"] for p in pairs} == {"a"}
    assert all(p["chosen"] == "so \\boxed{2}" and p["rejected"] in ("so \\boxed{3}", "so \\boxed{4}")
               for p in pairs)
    assert pairs[0]["rejected"] != pairs[1]["rejected"]


BYTE_MODEL = dict(vocab_size=384, num_layers=1, d_model=32, num_heads=2, num_kv_heads=1,
                  head_dim=16, mlp_dim=64, max_seq_len=128, dtype="float32")


@pytest.mark.slow
def test_reference_log_likelihoods_reach_the_batches_exactly(tmp_path):
    """candidates -> make_preferences (reference checkpoint) -> dpo_pairs task batches ->
    dpo_objective with the reference's own parameters: log 2 a pair, and the batch's
    `ref_log_likelihood` is the float32 the reference computed."""
    pytest.importorskip("seqio")
    from mathft_jax.convert import checkpoints
    from mathft_jax.results import candidates
    from mathft_jax.data import dataset, paths  # noqa: F401 (registers preference_file)
    cfg = DecoderConfig(**BYTE_MODEL)
    params = nn.unbox(init_params(cfg, jax.random.PRNGKey(3)))
    checkpoints.save_params(str(tmp_path / "ref"), params)
    records = [{"problem_id": f"p{i}", "problem": f"{i}+{i}?", "gold": str(2 * i),
                "samples": [{"text": f"{i}+{i}={2 * i} \\boxed{{{2 * i}}}", "correct": True},
                            {"text": f"{i}+{i}={2 * i + 1} \\boxed{{{2 * i + 1}}}", "correct": False}]}
               for i in range(5)]
    candidates.write_candidates(str(tmp_path / "graded.jsonl"), records)
    gin.bind_parameter("get_vocabulary.name_or_path", "byte")
    for key, value in BYTE_MODEL.items():
        gin.bind_parameter(f"DecoderConfig.{key}", value)
    out = str(tmp_path / "prefs.jsonl")
    info = reference.make_preferences(output_path=out, reference_checkpoint=str(tmp_path / "ref"),
                                        candidates_path=str(tmp_path / "graded.jsonl"),
                                        sequence_length=48, batch_size=8)
    assert info["pairs"] == 5
    written = preference_file.read_preferences(out)
    assert all(r["ref_sequence_length"] == 48 and r["ref_chosen"] < 0 for r in written)
    gin.bind_parameter("preference_file.path", out)
    batch = next(dataset.get_dataset("dpo_pairs", "train", 48, 10, pack=False, shuffle=False))
    assert batch["ref_log_likelihood"].dtype == np.float32
    by_pair = {int(p): batch["ref_log_likelihood"][i] for i, p in enumerate(batch["pair_id"])
               if batch["is_positive"][i]}
    assert by_pair == {i: np.float32(r["ref_chosen"]) for i, r in enumerate(written)}
    sums = objectives.dpo_objective(Decoder(cfg), params,
                                    {k: jnp.asarray(v) for k, v in batch.items()}, beta=0.5)
    assert float(sums["weight"]) == 5.0
    # the same rows and code as the reference: equal up to float round-off of batching
    assert float(sums["loss"]) / 5 == pytest.approx(math.log(2), abs=1e-4)
    assert abs(float(sums["reward_margin"])) < 1e-3


def _preference_file(path, margin: float) -> str:
    """Two pairs with made-up reference log-likelihoods (chosen - rejected = margin)."""
    records = [{"problem": f"{i}+{i}?", "chosen": str(2 * i), "rejected": str(2 * i + 1)}
               for i in range(2)]
    lls = np.array([[-1.0, -1.0 - margin]] * 2)
    preference_file.write_preferences(str(path), preference_file.with_reference(records, lls, 48))
    return str(path)


def _ref_margins(batch) -> list:
    ll, positive = batch["ref_log_likelihood"], batch["is_positive"]
    return [float(ll[i] - ll[i + 1]) for i in range(0, len(ll), 2) if positive[i]]


def test_data_file_is_the_file_dpo_pairs_reads(tmp_path):
    """train.data_file names the preference file in place of the gin-bound one, which stays
    the fallback."""
    pytest.importorskip("seqio")
    from mathft_jax.data import dataset
    gin.bind_parameter("get_vocabulary.name_or_path", "byte")
    gin.bind_parameter("preference_file.path", _preference_file(tmp_path / "bound.jsonl", 1.0))
    given = _preference_file(tmp_path / "given.jsonl", 3.0)

    def first_batch(data_file):
        return next(dataset.task_batches("dpo_pairs", "train", 48, 4, seed=0, pack=False,
                                         shuffle=False, data_file=data_file))

    assert _ref_margins(first_batch(given)) == [3.0, 3.0]
    assert _ref_margins(first_batch(None)) == [1.0, 1.0]

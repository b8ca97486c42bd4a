"""Evaluator and sequence losses against hand-computed values; objectives on real batches."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mathft_jax.training import losses, objectives
from mathft_jax.models import Decoder
from mathft_jax.models.decoder import init_params
import flax.linen as nn
from train_utils import TINY


def test_log_evaluator_score_by_hand():
    # p(c) = 0.6, p(i) = 0.2 -> S = 0.75
    got = losses.log_evaluator_score(jnp.log(0.6), jnp.log(0.2))
    assert float(got) == pytest.approx(math.log(0.75), rel=1e-6)
    # p -> 0 and p -> 1 stay finite
    assert float(losses.log_evaluator_score(jnp.float32(-1e4), jnp.float32(0.0))) == pytest.approx(-1e4)
    assert float(losses.log_evaluator_score(jnp.float32(0.0), jnp.float32(-1e4))) == pytest.approx(0.0)


def test_evaluator_margin_loss_by_hand():
    pos, neg = jnp.log(0.75), jnp.log(0.5)
    assert float(losses.evaluator_margin_loss(pos, neg, 1.0)) == pytest.approx(
        math.log(0.5) - math.log(0.75) + 1.0, rel=1e-6)
    assert float(losses.evaluator_margin_loss(pos, neg, 0.1)) == 0.0  # satisfied margin


def test_evaluator_xent_loss_by_hand():
    llc, lli = jnp.log(jnp.array([0.6, 0.3])), jnp.log(jnp.array([0.2, 0.5]))
    got = losses.evaluator_xent_loss(llc, lli, jnp.array([1, 0]))
    np.testing.assert_allclose(got, [-math.log(0.6), -math.log(0.5)], rtol=1e-6)


def test_sequence_and_contrastive_losses_by_hand():
    assert float(losses.sequence_margin_loss(-10.0, -9.0, 0.5)) == pytest.approx(1.5)
    got = losses.contrastive_mle_loss(jnp.float32(-10.0), jnp.float32(-9.0), jnp.float32(5), 0.5, 0.3)
    assert float(got) == pytest.approx(1.5 + 0.3 * 2.0)


@pytest.mark.parametrize("fn", ["margin", "xent", "sequence", "contrastive"])
@pytest.mark.parametrize("point", ["hinge", "p0", "p1"])
def test_gradients_finite_at_hinge_and_extremes(fn, point):
    vals = {"hinge": (jnp.log(0.5), jnp.log(0.5), jnp.log(0.5), jnp.log(0.5)),
            "p0": (jnp.float32(-1e4), jnp.float32(0.0), jnp.float32(-1e4), jnp.float32(0.0)),
            "p1": (jnp.float32(0.0), jnp.float32(-1e4), jnp.float32(0.0), jnp.float32(-1e4))}[point]

    def loss(x):
        pc, pi, nc, ni = x
        if fn == "margin":
            return losses.evaluator_margin_loss(losses.log_evaluator_score(pc, pi),
                                                losses.log_evaluator_score(nc, ni), 0.0)
        if fn == "xent":
            return losses.evaluator_xent_loss(pc, pi, jnp.float32(1.0))
        if fn == "sequence":
            return losses.sequence_margin_loss(pc, nc, 0.0)
        return losses.contrastive_mle_loss(pc, nc, jnp.float32(3.0), 0.0, 1.0)

    g = jax.grad(loss)(jnp.stack(vals))
    assert np.isfinite(np.asarray(g)).all()


def _pair_batch(rng, pairs=2, length=12):
    tokens = rng.integers(2, TINY.vocab_size, size=(4 * pairs, length)).astype(np.int32)
    weights = np.zeros_like(tokens)
    weights[:, 8:11] = 1
    tokens[:, 10] = 1  # EOS at the last label position: excluded from the score
    return {"decoder_input_tokens": tokens, "decoder_target_tokens": np.roll(tokens, -1, 1),
            "decoder_loss_weights": weights,
            "decoder_segment_ids": np.ones_like(tokens),
            "decoder_positions": np.broadcast_to(np.arange(length), tokens.shape).astype(np.int32),
            "pair_id": np.repeat(np.array([0, -1] if pairs == 2 else np.arange(pairs)), 4).astype(np.int32)}


def test_evaluator_objective_matches_direct_computation():
    rng = np.random.default_rng(0)
    batch = _pair_batch(rng)
    params = nn.unbox(init_params(TINY, jax.random.PRNGKey(0)))
    model = Decoder(TINY)
    out = objectives.evaluator_objective(model, params, batch, margin_weight=1.0,
                                         xent_weight=0.5, margin=0.7)
    logp = np.asarray(jax.nn.log_softmax(model.apply({"params": params}, batch["decoder_input_tokens"])))
    # every weighted target token counts: the evaluator tasks' targets carry no EOS to drop
    w = batch["decoder_loss_weights"]
    ll = np.array([sum(logp[r, t, batch["decoder_target_tokens"][r, t]] * w[r, t] for t in range(12))
                   for r in range(8)])
    s = lambda c, i: c - np.logaddexp(c, i)  # noqa: E731
    pos, neg = s(ll[0], ll[1]), s(ll[2], ll[3])
    margin = max(0.0, neg - pos + 0.7)
    xent = 0.5 * (-ll[0] - ll[3])
    assert float(out["weight"]) == 1.0  # the second pair is padding (pair_id -1)
    assert float(out["loss"]) == pytest.approx(margin + 0.5 * xent, rel=1e-4)
    assert float(out["pair_accuracy"]) == float(pos > neg)


def test_sequence_objective_matches_direct_computation():
    rng = np.random.default_rng(1)
    batch = _pair_batch(rng, pairs=3)
    params = nn.unbox(init_params(TINY, jax.random.PRNGKey(0)))
    model = Decoder(TINY)
    out = objectives.sequence_objective(model, params, batch, margin=0.5, alpha=0.2)
    logits = model.apply({"params": params}, batch["decoder_input_tokens"])
    ll = np.asarray(losses.sequence_log_likelihood(logits, batch["decoder_target_tokens"],
                                                   batch["decoder_loss_weights"])).reshape(-1, 2)
    want = sum(max(0.0, n - p + 0.5) + 0.2 * (-p / 3) for p, n in ll)
    assert float(out["loss"]) == pytest.approx(want, rel=1e-4)
    assert float(out["weight"]) == 6.0  # 12 rows = 6 (X+, X-) pairs

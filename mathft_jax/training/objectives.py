"""Training objectives: what one batch contributes to the loss, as sums plus a `weight`.

Each objective is `objective(model, params, batch) -> dict` with a `loss` sum and a
`weight` normaliser (target tokens, or valid pairs); the train step divides by the summed
weight, which keeps gradient accumulation exact. Select one in gin with
`train.objective = @evaluator_objective` etc. Each takes `loss_chunk`: > 0 applies the output
projection `loss_chunk` positions at a time (fused_loss.py), so the [batch, length, vocab]
logits never exist; the sums and gradients are the same.

  lm_objective          SSFT: MLE on solution tokens (and xent evaluator on scr_pointwise)
  evaluator_objective   SCR: margin and/or xent on S(X|P), batches of `scr_pairwise`
  sequence_objective    sequence margin / contrastive MLE, batches of `scr_sequence_pairwise`
  dpo_objective         DPO / IPO / conservative DPO on preference pairs (`dpo_pairs`), the
                        reference's log-likelihoods read from the batch (`ref_log_likelihood`)
"""
from __future__ import annotations

from typing import Dict

import gin
import jax
import jax.numpy as jnp

from mathft_jax.training import losses
from mathft_jax.training.fused_loss import chunked_sequence_log_likelihood, fused_head_cross_entropy
from mathft_jax.models import lora
from mathft_jax.models.decoder import output_projection

Batch = Dict[str, jax.Array]


def rows_per_group(objective) -> int:
    """How many consecutive batch rows the objective reads as one unit (an evaluator pair is 4
    rows, a sequence pair 2). The trainer never splits a unit across micro-batches."""
    return getattr(objective, "rows_per_group", 1)


def model_inputs(batch: Batch) -> dict:
    """Decoder keyword arguments from a feature-converted batch (packed or not)."""
    return {"tokens": batch["decoder_input_tokens"],
            "positions": batch.get("decoder_positions"),
            "segment_ids": batch.get("decoder_segment_ids")}


@gin.configurable
def lm_objective(model, params, batch: Batch, z_loss: float | None = None, loss_chunk: int = 0):
    """MLE on the target tokens only: the prompt is masked by `decoder_loss_weights`."""
    cfg = model.cfg
    z = cfg.z_loss if z_loss is None else z_loss
    targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    if loss_chunk:
        return fused_head_cross_entropy(*hidden_and_head(model, params, batch), targets, weights,
                                        z_loss=z, softcap=cfg.final_logit_softcap,
                                        chunk=loss_chunk)
    logits = lora.apply(model, params, **model_inputs(batch))
    return losses.token_cross_entropy(logits, targets, weights, z)


def hidden_and_head(model, params, batch: Batch):
    """The final hidden states and the output projection, for a loss that applies it."""
    hidden = lora.apply(model, params, **model_inputs(batch), return_hidden=True)
    return hidden, output_projection(lora.base_params(params), model.cfg)


def _row_log_likelihoods(model, params, batch: Batch, loss_chunk: int) -> jax.Array:
    targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    if loss_chunk:
        return chunked_sequence_log_likelihood(*hidden_and_head(model, params, batch), targets,
                                               weights, softcap=model.cfg.final_logit_softcap,
                                               chunk=loss_chunk)
    logits = lora.apply(model, params, **model_inputs(batch))
    return losses.sequence_log_likelihood(logits, targets, weights)


@gin.configurable
def evaluator_objective(model, params, batch: Batch, margin_weight: float = 1.0,
                        xent_weight: float = 0.0, margin: float = 1.0, loss_chunk: int = 0):
    """SCR on `scr_pairwise` batches: rows 4k..4k+3 = (X+, c), (X+, i), (X-, c), (X-, i).

    loss per pair = margin_weight * evaluator_margin_loss(log S(X+), log S(X-), margin)
                  + xent_weight * (evaluator_xent(X+) + evaluator_xent(X-)) / 2
    The evaluator tasks' targets are the label alone (no EOS, `tasks.EVALUATOR_LABEL_TASKS`),
    so a row's likelihood is the label's, as `scoring.score_solutions` computes it.
    """
    ll = _row_log_likelihoods(model, params, batch, loss_chunk).reshape(-1, 4)
    valid = (batch["pair_id"].reshape(-1, 4)[:, 0] >= 0).astype(jnp.float32)
    log_s_pos = losses.log_evaluator_score(ll[:, 0], ll[:, 1])
    log_s_neg = losses.log_evaluator_score(ll[:, 2], ll[:, 3])
    margin_l = losses.evaluator_margin_loss(log_s_pos, log_s_neg, margin)
    xent_l = 0.5 * (losses.evaluator_xent_loss(ll[:, 0], ll[:, 1], jnp.ones_like(valid))
                    + losses.evaluator_xent_loss(ll[:, 2], ll[:, 3], jnp.zeros_like(valid)))
    loss = margin_weight * margin_l + xent_weight * xent_l
    return {"loss": jnp.sum(valid * loss),
            "margin_loss": jnp.sum(valid * margin_l),
            "xent_loss": jnp.sum(valid * xent_l),
            "pair_accuracy": jnp.sum(valid * (log_s_pos > log_s_neg)),
            "weight": jnp.sum(valid)}


evaluator_objective.rows_per_group = 4


@gin.configurable
def sequence_objective(model, params, batch: Batch, margin: float = 1.0, alpha: float = 0.0,
                       loss_chunk: int = 0):
    """Sequence margin (alpha = 0) or contrastive MLE (alpha > 0) on generation-format pairs:
    rows 2k, 2k+1 = (P, X+), (P, X-) from `scr_sequence_pairwise`."""
    ll = _row_log_likelihoods(model, params, batch, loss_chunk).reshape(-1, 2)
    tokens = batch["decoder_loss_weights"].sum(-1).reshape(-1, 2)[:, 0]
    valid = (batch["pair_id"].reshape(-1, 2)[:, 0] >= 0).astype(jnp.float32)
    loss = losses.contrastive_mle_loss(ll[:, 0], ll[:, 1], tokens, margin, alpha)
    return {"loss": jnp.sum(valid * loss),
            "pair_accuracy": jnp.sum(valid * (ll[:, 0] > ll[:, 1])),
            "weight": jnp.sum(valid)}


sequence_objective.rows_per_group = 2


@gin.configurable
def dpo_objective(model, params, batch: Batch, beta: float = 0.1, loss_type: str = "sigmoid",
                  label_smoothing: float = 0.0, loss_chunk: int = 0):
    """DPO on generation-format pairs: rows 2k, 2k+1 = (P, chosen), (P, rejected), as
    `scr_sequence_pairwise` and `dpo_pairs` give them. The frozen reference's sequence
    log-likelihood of each row is the float feature `ref_log_likelihood`, computed once
    (`mathft_jax.scoring.reference`), so training holds one model. See `losses.dpo_loss`.

    Metrics (per pair): the implicit rewards beta * (log P - log Pref) of chosen and rejected,
    their margin, and pair_accuracy, the share of pairs whose margin is > 0.
    """
    if "ref_log_likelihood" not in batch:
        raise KeyError("dpo_objective needs the batch feature 'ref_log_likelihood': train on "
                       "a preference file with reference log-likelihoods (python -m "
                       "mathft_jax.scoring.reference, task dpo_pairs)")
    ll = _row_log_likelihoods(model, params, batch, loss_chunk).reshape(-1, 2)
    ref = batch["ref_log_likelihood"].astype(jnp.float32).reshape(-1, 2)
    valid = (batch["pair_id"].reshape(-1, 2)[:, 0] >= 0).astype(jnp.float32)
    loss = losses.dpo_loss(ll[:, 0], ll[:, 1], ref[:, 0], ref[:, 1], beta, loss_type,
                           label_smoothing)
    chosen, rejected = beta * (ll[:, 0] - ref[:, 0]), beta * (ll[:, 1] - ref[:, 1])
    return {"loss": jnp.sum(valid * loss),
            "chosen_reward": jnp.sum(valid * chosen),
            "rejected_reward": jnp.sum(valid * rejected),
            "reward_margin": jnp.sum(valid * (chosen - rejected)),
            "pair_accuracy": jnp.sum(valid * (chosen > rejected)),
            "weight": jnp.sum(valid)}


dpo_objective.rows_per_group = 2

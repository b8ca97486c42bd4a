"""GRPO's pure functions: group-relative advantages, the k3 KL estimator, the clipped
policy-gradient loss, and `grpo_objective`, an objective of the trainer's kind (sums and a
`weight`), so `trainer.make_train_step` runs GRPO's steps with its micro-batches, sharding
and optimizer unchanged; `with_supervised` adds the MLE of reference solutions to it.

Per completion token t of a row with advantage A (DeepSeekMath's GRPO, Shao et al. 2024):

    r_t  = exp(log pi(t) - log pi_old(t))                   the importance ratio
    pg_t = -min(r_t A, clip(r_t, 1 - eps, 1 + eps_high) A)  PPO's clipped surrogate
    kl_t = exp(q_t) - q_t - 1, q_t = log pi_ref(t) - log pi(t)   (k3: unbiased, >= 0)
    l_t  = pg_t + kl_coef * kl_t

normalised over the batch by `normalization`:
    token     sum_t l_t / (completion tokens in the batch)   (DAPO's token-level mean)
    sequence  mean over rows of each row's token mean       (the original GRPO)
    constant  sum_t l_t / (rows * row length)               (Dr. GRPO, Liu et al. 2025:
              no per-sequence length normalisation; with `group_advantages(scale_std=False)`)
"""
from __future__ import annotations

from typing import Dict

import gin
import jax
import jax.numpy as jnp

from mathft_jax.models import lora
from mathft_jax.training.fused_loss import chunked_row_sums
from mathft_jax.training.objectives import hidden_and_head, lm_objective, model_inputs

Batch = Dict[str, jax.Array]
NORMALIZATIONS = ("token", "sequence", "constant")
ROW_SUMS = ("loss", "pg", "kl", "clipped", "entropy")  # grpo_objective's per-row sums
SUPERVISED = "sft/"  # prefix of the reference-solution rows riding in a GRPO batch


def group_advantages(rewards: jax.Array, scale_std: bool = True, eps: float = 1e-4) -> jax.Array:
    """rewards [prompts, G] -> advantages [prompts, G]: each reward minus its group's mean,
    divided by the group's (population) standard deviation + eps when `scale_std` (GRPO;
    Dr. GRPO drops the division, which up-weights groups of near-equal rewards)."""
    rewards = jnp.asarray(rewards, jnp.float32)
    centred = rewards - rewards.mean(axis=-1, keepdims=True)
    if not scale_std:
        return centred
    return centred / (rewards.std(axis=-1, keepdims=True) + eps)


def k3_kl(log_p: jax.Array, ref_log_p: jax.Array) -> jax.Array:
    """Schulman's k3 estimate of KL(pi || pi_ref) from a token sampled from pi: exp(q) - q - 1
    with q = log pi_ref - log pi. Its gradient in log pi is 1 - pi_ref / pi."""
    q = ref_log_p - log_p
    return jnp.exp(q) - q - 1.0


def token_log_probs(logits: jax.Array, targets: jax.Array,
                    temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """(log p(target), entropy of the distribution), each [batch, length], in float32, for
    p = softmax(logits / temperature): the distribution the sampler draws from."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    target = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return target, entropy


def policy_token_stats(model, params, batch: Batch,
                       temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """Teacher-forced (log p, entropy) of the batch's target tokens, zero off the completion.
    The sampling policy's log-probs are these under the parameters that sampled, at the
    sampler's temperature, so the sampler need not record them (top-k / top-p truncation is
    not modelled: keep them off for GRPO)."""
    logits = lora.apply(model, params, **model_inputs(batch))
    logp, entropy = token_log_probs(logits, batch["decoder_target_tokens"], temperature)
    mask = batch["decoder_loss_weights"].astype(jnp.float32)
    return logp * mask, entropy * mask


def clipped_token_loss(log_p, old_log_p, ref_log_p, advantages, clip_eps: float,
                       clip_eps_high: float, kl_coef: float) -> dict:
    """Per token ([batch, length]; advantages [batch]): the loss l_t of the module docstring,
    its k3 KL term, and whether the clip is active (the clipped term is the one taken)."""
    a = advantages.astype(jnp.float32)[:, None]
    ratio = jnp.exp(log_p - old_log_p)
    clipped_ratio = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps_high)
    pg = -jnp.minimum(ratio * a, clipped_ratio * a)
    kl = k3_kl(log_p, ref_log_p) if ref_log_p is not None else jnp.zeros_like(log_p)
    clipped = ((ratio < 1.0 - clip_eps) & (a < 0)) | ((ratio > 1.0 + clip_eps_high) & (a > 0))
    return {"loss": pg + kl_coef * kl, "pg": pg, "kl": kl, "clipped": clipped.astype(jnp.float32)}


@gin.configurable
def grpo_objective(model, params, batch: Batch, clip_eps: float = 0.2,
                   clip_eps_high: float | None = None, kl_coef: float = 0.0,
                   normalization: str = "token", temperature: float = 1.0,
                   loss_chunk: int = 0):
    """GRPO on rollout batches (`rl.rollout.rollout_batch`): the model's rows plus float32
    `advantages` [batch], `old_log_probs` and, when kl_coef > 0, `ref_log_probs` [batch,
    length]. clip_eps_high (default clip_eps) > clip_eps is DAPO's clip-higher. temperature:
    the sampler's (the loop passes it), so ratios and KL are of the sampled distribution.
    loss_chunk > 0: the output projection `loss_chunk` positions at a time
    (`fused_loss.chunked_row_sums`), as the other objectives: the same sums and gradients
    without the [batch, length, vocab] logits; rows it does not divide (the loop's trimmed
    rows) are padded up to whole chunks. `constant` normalisation divides by rows x length,
    the length before trimming where the batch gives it (`full_length`).

    Besides the loss, sums whose ratios are the per-token metrics whatever the normaliser:
    token_kl / tokens, token_clipped / tokens, token_entropy / tokens.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"grpo_objective.normalization={normalization!r}; expected one of "
                         f"{NORMALIZATIONS}")
    if kl_coef and "ref_log_probs" not in batch:
        raise KeyError("grpo_objective.kl_coef > 0 needs the batch feature 'ref_log_probs'")
    rows, length = batch["decoder_loss_weights"].shape
    # Dr. GRPO's constant: the rows' length before the loop trimmed their padding, so
    # trimming changes no loss (the float feature `full_length` [batch], where it is given)
    constant = (jnp.sum(batch["full_length"].astype(jnp.float32)) if "full_length" in batch
                else jnp.float32(rows * length))
    if loss_chunk and length > loss_chunk and length % loss_chunk:
        batch = _pad_length(batch, -length % loss_chunk)  # trimmed rows: whole chunks again
    mask = batch["decoder_loss_weights"].astype(jnp.float32)
    advantages = batch["advantages"]
    has_ref = "ref_log_probs" in batch

    def row_sums(logits, targets, mask, old, ref):
        """[b, 5]: per-row sums of the token loss, pg, kl, clipped and entropy."""
        log_p, entropy = token_log_probs(logits, targets, temperature)
        log_p = jnp.where(mask > 0, log_p, 0.0)  # off the completion: ratio 1, kl 0, finite
        per = clipped_token_loss(log_p, old, ref if has_ref else None, advantages, clip_eps,
                                 clip_eps if clip_eps_high is None else clip_eps_high, kl_coef)
        per["entropy"] = jax.lax.stop_gradient(entropy)
        return jnp.stack([jnp.sum(per[k] * mask, axis=-1) for k in ROW_SUMS], axis=-1)

    per_position = (batch["decoder_target_tokens"], mask,
                    batch["old_log_probs"].astype(jnp.float32),
                    batch["ref_log_probs"].astype(jnp.float32) if has_ref else mask)
    if loss_chunk:
        hidden, head = hidden_and_head(model, params, batch)
        sums = chunked_row_sums(hidden, head, row_sums, per_position,
                                softcap=model.cfg.final_logit_softcap, chunk=loss_chunk)
    else:
        sums = row_sums(lora.apply(model, params, **model_inputs(batch)), *per_position)
    row_loss, pg, kl, clipped, entropy = (sums[:, i] for i in range(len(ROW_SUMS)))
    row_tokens = mask.sum(-1)
    if normalization == "sequence":
        loss = jnp.sum(row_loss / jnp.maximum(row_tokens, 1.0))
        weight = jnp.sum((row_tokens > 0).astype(jnp.float32))
    else:
        loss = jnp.sum(row_loss)
        weight = jnp.sum(row_tokens) if normalization == "token" else constant
    return {"loss": loss, "weight": weight,
            "pg_loss": jnp.sum(pg),
            "tokens": jnp.sum(row_tokens),
            "token_kl": jnp.sum(kl),
            "token_clipped": jnp.sum(clipped),
            "token_entropy": jnp.sum(entropy)}


def _pad_length(batch: Batch, pad: int) -> Batch:
    """The batch's [batch, length] features with `pad` empty positions more (zeros: no
    segment, no loss); per-row features ([batch]) as they are."""
    return {k: jnp.pad(v, ((0, 0), (0, pad))) if v.ndim == 2 else v for k, v in batch.items()}


def with_supervised(objective, weight: float):
    """`objective` (GRPO's) plus `weight` times the MLE of reference solutions, in one step
    (single-stage SFT + RL, as SRFT and LUFFY mix demonstrations into GRPO). The batch holds
    the rollout rows and, under keys prefixed `sft/`, a batch of packed solution rows (the
    SSFT task's). The trainer divides every sum by the rollout's `weight`, so the solution
    rows' summed loss is rescaled by weight_rollout / tokens_solutions: the step minimises

        GRPO's normalised loss + weight * mean token loss of the solutions

    (`lm_objective`'s: cross-entropy plus the model's z-loss; bind `lm_objective.loss_chunk`
    for a large vocabulary), exactly, in one micro-batch (the loop allows no more with a
    supervised term). Metric `sft_xent`: the solutions' mean token cross-entropy."""
    def combined(model, params, batch: Batch):
        rollout = {k: v for k, v in batch.items() if not k.startswith(SUPERVISED)}
        solutions = {k[len(SUPERVISED):]: v for k, v in batch.items()
                     if k.startswith(SUPERVISED)}
        sums = dict(objective(model, params, rollout))
        mle = lm_objective(model, params, solutions)
        # the trainer divides by max(weight, 1): a rollout of (near) zero weight keeps the term
        scale = jnp.maximum(sums["weight"], 1.0) / jnp.maximum(mle["weight"], 1.0)
        sums["loss"] = sums["loss"] + weight * scale * mle["loss"]
        sums["sft_xent"] = jax.lax.stop_gradient(scale * mle["xent"])
        return sums

    return combined

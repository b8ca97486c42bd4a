"""Optimizers and learning-rate schedules, all set through gin.

AdamW, or Adafactor (PaLM's optimizer; here with factored second moments, whose memory
is what lets the larger PaLMs train on one device, update clipping, and a
parameter-scale-free step size so fine-tuning learning rates carry over).
Schedules: linear warm-up, then constant, cosine or rsqrt decay. Global-norm clipping
and decoupled weight decay wrap either. The optimizer state takes the parameters' dtype
(`DecoderConfig.param_dtype`, float32 in every shipped and imported config); mixed
precision lives in the model's compute `dtype`.
"""
from __future__ import annotations

import gin
import jax.numpy as jnp
import optax


@gin.configurable(denylist=["train_steps"])
def learning_rate_schedule(peak: float = 1e-3, warmup_steps: int = 0, decay: str = "constant",
                           total_steps: int | None = None, end_factor: float = 0.0,
                           train_steps: int | None = None) -> optax.Schedule:
    """Linear warm-up from 0 to `peak`, then `decay`: constant | cosine | rsqrt | linear.

    The decay ends at `total_steps` when it is bound on purpose, else at `train_steps`, the
    length of the training run the trainer passes (`train.total_steps`): one home for a
    stage's length.
    """
    total_steps = total_steps if total_steps is not None else (train_steps or 1000)
    if decay not in ("constant", "cosine", "rsqrt", "linear"):
        raise ValueError(f"learning_rate_schedule.decay={decay!r}; expected constant, cosine, "
                         "rsqrt or linear")
    warmup_steps = max(int(warmup_steps), 0)
    rest = max(int(total_steps) - warmup_steps, 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = jnp.minimum(1.0, (step + 1) / max(warmup_steps, 1)) if warmup_steps else 1.0
        t = jnp.clip((step - warmup_steps) / rest, 0.0, 1.0)
        if decay == "constant":
            factor = 1.0
        elif decay == "cosine":
            factor = end_factor + (1 - end_factor) * 0.5 * (1 + jnp.cos(jnp.pi * t))
        elif decay == "linear":
            factor = 1.0 - (1 - end_factor) * t
        else:  # rsqrt: 1/sqrt(step) after warm-up, continuous at the boundary
            factor = jnp.sqrt(max(warmup_steps, 1) / jnp.maximum(step, max(warmup_steps, 1)))
        return peak * warm * factor

    return schedule


@gin.configurable
def make_optimizer(name: str = "adamw", schedule: optax.Schedule | None = None,
                   b1: float = 0.9, b2: float = 0.95, eps: float = 1e-8,
                   weight_decay: float = 0.0, clip_norm: float | None = 1.0,
                   adafactor_decay_rate: float = 0.8) -> optax.GradientTransformation:
    """AdamW or Adafactor with global-norm clipping and decoupled weight decay."""
    schedule = schedule or learning_rate_schedule()
    if name == "adamw":
        core = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    elif name == "adafactor":
        core = optax.adafactor(schedule, decay_rate=adafactor_decay_rate,
                               multiply_by_parameter_scale=False, clipping_threshold=1.0,
                               momentum=None if b1 == 0 else b1,
                               weight_decay_rate=weight_decay or None)
    else:
        raise ValueError(f"make_optimizer.name={name!r}; expected 'adamw' or 'adafactor'")
    chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    return optax.chain(*chain, core)

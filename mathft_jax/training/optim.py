"""Optimizers and learning-rate schedules: typed configs, set through gin, built explicitly.

AdamW, or Adafactor (PaLM's optimizer; here with factored second moments, whose memory
is what lets the larger PaLMs train on one device, update clipping, and a
parameter-scale-free step size so fine-tuning learning rates carry over).
Schedules: linear warm-up, then constant, cosine or rsqrt decay. Global-norm clipping
and decoupled weight decay wrap either. The optimizer state takes the parameters' dtype
(`DecoderConfig.param_dtype`, float32 in every shipped and imported config); mixed
precision lives in the model's compute `dtype`.

`OptimizerConfig` (gin name `make_optimizer`) holds a `ScheduleConfig` (gin name
`learning_rate_schedule`), so the bindings `make_optimizer.name = 'adamw'` and
`ssft/learning_rate_schedule.peak = 1e-2` set them. A run config takes one as a field,
built from gin in the run's scope when the run config is made; the run then calls
`optimizer.build(total_steps)` (Levanter's pattern) and reads gin no more.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import gin
import jax.numpy as jnp
import optax

DECAYS = ("constant", "cosine", "rsqrt", "linear")
OPTIMIZERS = ("adamw", "adafactor")


@gin.configurable("learning_rate_schedule")
@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Linear warm-up from 0 to `peak`, then `decay`: constant | cosine | rsqrt | linear.

    The decay ends at `total_steps` when it is bound on purpose, else at the length of the
    training run that builds it (`train.total_steps`): one home for a stage's length.
    """

    peak: float = 1e-3
    warmup_steps: int = 0
    decay: str = "constant"
    total_steps: Optional[int] = None
    end_factor: float = 0.0

    def __post_init__(self):
        if self.decay not in DECAYS:
            raise ValueError(f"learning_rate_schedule.decay={self.decay!r}; expected constant, "
                             "cosine, rsqrt or linear")

    def build(self, train_steps: Optional[int] = None) -> optax.Schedule:
        """The schedule of a run of `train_steps` optimizer steps (1000 when neither it nor
        `total_steps` is given)."""
        peak, decay, end_factor = self.peak, self.decay, self.end_factor
        total_steps = self.total_steps if self.total_steps is not None else (train_steps or 1000)
        warmup_steps = max(int(self.warmup_steps), 0)
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


@gin.configurable("make_optimizer")
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW or Adafactor with global-norm clipping and decoupled weight decay, and its
    learning-rate schedule (made from gin in the current scope unless given)."""

    name: str = "adamw"
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: Optional[float] = 1.0
    adafactor_decay_rate: float = 0.8
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"make_optimizer.name={self.name!r}; expected 'adamw' or "
                             "'adafactor'")

    def build(self, total_steps: Optional[int] = None
              ) -> tuple[optax.GradientTransformation, optax.Schedule]:
        """(the optimizer, its schedule) for a run of `total_steps` optimizer steps."""
        schedule = self.schedule.build(total_steps)
        return self.transformation(schedule), schedule

    def transformation(self, schedule: optax.Schedule) -> optax.GradientTransformation:
        """The optimizer stepping at `schedule`'s learning rates."""
        if self.name == "adamw":
            core = optax.adamw(schedule, b1=self.b1, b2=self.b2, eps=self.eps,
                               weight_decay=self.weight_decay)
        else:
            core = optax.adafactor(schedule, decay_rate=self.adafactor_decay_rate,
                                   multiply_by_parameter_scale=False, clipping_threshold=1.0,
                                   momentum=None if self.b1 == 0 else self.b1,
                                   weight_decay_rate=self.weight_decay or None)
        chain = [optax.clip_by_global_norm(self.clip_norm)] if self.clip_norm else []
        return optax.chain(*chain, core)


def learning_rate_schedule(train_steps: Optional[int] = None, **settings) -> optax.Schedule:
    """`ScheduleConfig(**settings).build(train_steps)`: the gin-bound schedule (current
    scope), with `settings` replacing some of its fields; for tests and benchmarks."""
    return ScheduleConfig(**settings).build(train_steps)


def make_optimizer(name: Optional[str] = None, schedule: Optional[optax.Schedule] = None,
                   **settings) -> optax.GradientTransformation:
    """The gin-bound optimizer (current scope), with `name` and `settings` replacing some of
    its fields, stepping at `schedule` (default: its own); for tests and benchmarks."""
    config = OptimizerConfig(**({"name": name} if name else {}), **settings)
    return config.transformation(schedule or config.schedule.build())

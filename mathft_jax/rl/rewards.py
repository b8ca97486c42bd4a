"""Rewards of sampled solutions, registered by name in one table and weighted in gin:

    reward_weights.weights = {"correct": 1.0, "boxed": 0.1}

A reward is `fn(problem, text) -> float`, with `problem` a record of `data.sources.problem_records`
({"problem_id", "problem", "gold"}) and `text` the decoded completion (no EOS). Built in:

  correct   1 where the completion's answer grades equal to the gold answer, else 0:
            `candidates.grade_sample`, the pipeline's one judgment, with the grader
            `compute_rewards` is given (the loop's `grpo.grader`; the pipeline's grpo stage
            sets it to `pipeline.grader`), bounded in time as the evaluation grades
  boxed     1 where the completion has a `\\boxed{}` answer at all: a format reward
  process   1 where `correct` is 1 and no "a op b = c" line of the completion is wrong
            (`formats.has_wrong_step`): a process reward, which gives nothing for a right
            answer reached through wrong arithmetic (the evaluator's process labels,
            `formats.evaluator_labels`); with the same grader as `correct`

Register others with `@register_reward("name")`. The SCR evaluator's score, a reward that
needs a model, is added by the loop (`grpo.evaluator_checkpoint`, `grpo.evaluator_weight`).
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable, Mapping, Optional, Sequence

import gin
import numpy as np

from mathft_jax.data import formats
from mathft_jax.grading import extract_answer

RewardFn = Callable[[dict, str], float]
REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str):
    """Decorator: `fn` becomes the reward `name` (a second registration of a name raises)."""
    def add(fn: RewardFn) -> RewardFn:
        if name in REWARDS and REWARDS[name] is not fn:
            raise ValueError(f"reward {name!r} is already registered")
        REWARDS[name] = fn
        return fn
    return add


@functools.lru_cache(maxsize=4096)
def _graded(gold: str | tuple[str, ...], text: str, grader: str,
            tolerance: float | None = None) -> bool:
    # The judgment the pipeline's scr_data and evaluate stages make, by the same grader
    # (candidates is the results layer: imported here, as data.readers does). Cached, so
    # `correct` and `process` on one completion grade it once.
    from mathft_jax.results.candidates import grade_sample  # noqa: PLC0415
    return grade_sample({"text": text}, list(gold) if isinstance(gold, tuple) else gold,
                        grader=grader, tolerance=tolerance)


@register_reward("correct")
def correct(problem: dict, text: str, grader: str = "mathft") -> float:
    gold = problem["gold"]  # a list (multiple answers) is hashed as a tuple for the cache
    return float(_graded(tuple(gold) if isinstance(gold, list) else gold, text, grader,
                         problem.get("gold_tolerance")))


@register_reward("boxed")
def boxed(problem: dict, text: str) -> float:
    del problem
    return float(extract_answer(text) is not None)


@register_reward("process")
def process(problem: dict, text: str, grader: str = "mathft") -> float:
    return correct(problem, text, grader) * float(not formats.has_wrong_step(text))


@gin.configurable
def reward_weights(weights: Optional[Mapping[str, float]] = None) -> dict[str, float]:
    """The weighted rewards that add up to a completion's reward (default: correct alone)."""
    weights = dict(weights) if weights is not None else {"correct": 1.0}
    unknown = sorted(set(weights) - set(REWARDS))
    if unknown:
        raise ValueError(f"reward_weights: unknown rewards {unknown}; registered: {sorted(REWARDS)}")
    return weights


def compute_rewards(problems: Sequence[dict], texts: Sequence[Sequence[str]],
                    weights: Mapping[str, float], grader: str = "mathft"
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(total [prompts, G], per-reward [prompts, G]) for texts[i][j], completion j of problem
    i. `correct` is always computed (the accuracy metric), weighted or not, by `grader`
    (grading.GRADERS)."""
    names = list(dict.fromkeys(["correct", *weights]))
    # Rewards that grade take the loop's grader.
    fns = {name: functools.partial(fn, grader=grader)
           if "grader" in inspect.signature(fn).parameters else fn
           for name, fn in REWARDS.items()}
    parts = {name: np.array([[fns[name](p, t) for t in group]
                             for p, group in zip(problems, texts)], np.float64)
             for name in names}
    total = sum((w * parts[name] for name, w in weights.items()),
                np.zeros_like(parts["correct"]))
    return total, parts

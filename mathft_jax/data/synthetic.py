r"""Synthetic arithmetic curriculum: the whole recipe, run meaningfully on a laptop CPU.

A problem is a chain `start op1 x1 op2 x2 ...` over small non-negative integers with +, -,
* and exact integer division, phrased as an expression, as instructions or as a short word
problem. Its solution comes in two styles, both ending in `\boxed{answer}`:
  - "steps" (PRM800K-like): one line per operation with the intermediate result;
  - "terse" (MATH-like): the key expression and the answer.

Deterministic: the same gin parameters and seed give the same problems on every machine
(`random.Random` with an integer seed). Splits are disjoint by construction: a chain's split
is fixed by a hash of the chain itself (not its phrasing), so no test chain appears in train
under another wording. Difficulty knobs (`level`, `num_ops`, `max_operand`, `max_value`) are
documented in docs/data.md.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import zlib
from typing import Optional

import gin

from mathft_jax.data.records import Problem

STYLES = ("steps", "terse")
SPLITS = ("train", "validation", "test")
# Hash buckets (of 100) owned by each split: 80% / 10% / 10% of all possible chains.
_SPLIT_BUCKETS = {"train": range(0, 80), "validation": range(80, 90), "test": range(90, 100)}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_VERBS = {"+": "add {x}", "-": "subtract {x}", "*": "multiply by {x}", "/": "divide by {x}"}
_STORY = {"+": "They get {x} more.", "-": "They give away {x}.",
          "*": "Then they have {x} times as many.", "/": "They keep 1/{x} of them."}
_NAMES = ("Ana", "Ben", "Kai", "Mia", "Sam", "Zoe", "Leo", "Ivy")
_ITEMS = ("apples", "coins", "books", "stamps", "shells", "cards", "marbles", "pens")


@dataclasses.dataclass(frozen=True)
class Difficulty:
    """Chain length range and number sizes. Operands are drawn from 1..max_operand (2.. for *
    and /); every intermediate value stays within 0..max_value."""

    min_ops: int
    max_ops: int
    max_operand: int
    max_value: int


LEVELS = {
    1: Difficulty(min_ops=1, max_ops=2, max_operand=9, max_value=99),
    2: Difficulty(min_ops=2, max_ops=3, max_operand=9, max_value=99),
    3: Difficulty(min_ops=3, max_ops=4, max_operand=12, max_value=199),
    4: Difficulty(min_ops=4, max_ops=5, max_operand=20, max_value=499),
    5: Difficulty(min_ops=5, max_ops=6, max_operand=30, max_value=999),
}


@dataclasses.dataclass(frozen=True)
class Chain:
    start: int
    ops: tuple[tuple[str, int], ...]

    def values(self) -> list[int]:
        """Start value and every intermediate result, in order."""
        values = [self.start]
        for op, x in self.ops:
            values.append(_apply(op, values[-1], x))
        return values

    @property
    def answer(self) -> int:
        return self.values()[-1]

    def key(self) -> str:
        return f"{self.start}" + "".join(f"{op}{x}" for op, x in self.ops)


def _apply(op: str, v: int, x: int) -> int:
    if op == "/":
        assert v % x == 0, (v, x)
        return v // x
    return {"+": v + x, "-": v - x, "*": v * x}[op]


def _operands(op: str, v: int, d: Difficulty) -> list[int]:
    """Operands that keep the result an integer within 0..max_value."""
    if op == "+":
        return list(range(1, min(d.max_operand, d.max_value - v) + 1))
    if op == "-":
        return list(range(1, min(d.max_operand, v) + 1))
    if op == "*":
        return list(range(2, min(d.max_operand, d.max_value // v) + 1)) if v else []
    return [x for x in range(2, min(d.max_operand, v) + 1) if v % x == 0]


def sample_chain(rng: random.Random, d: Difficulty) -> Chain:
    value = rng.randint(1, d.max_operand)
    start, ops = value, []
    for _ in range(rng.randint(d.min_ops, d.max_ops)):
        choices = [(op, xs) for op in ("+", "-", "*", "/") if (xs := _operands(op, value, d))]
        op, xs = rng.choice(choices)
        x = rng.choice(xs)
        ops.append((op, x))
        value = _apply(op, value, x)
    return Chain(start, tuple(ops))


def split_of(chain: Chain) -> str:
    bucket = zlib.crc32(chain.key().encode()) % 100
    return next(s for s, buckets in _SPLIT_BUCKETS.items() if bucket in buckets)


# ----------------------------------------------------------------------------- text


def expression(chain: Chain) -> str:
    """Left-to-right infix form, parenthesised only where precedence needs it."""
    text, top = str(chain.start), 3
    for op, x in chain.ops:
        if _PRECEDENCE[op] > top:
            text = f"({text})"
        text, top = f"{text} {op} {x}", _PRECEDENCE[op]
    return text


def phrase_problem(chain: Chain, rng: random.Random) -> str:
    form = rng.choice(("expression", "instructions", "story"))
    if form == "expression":
        return f"Compute {expression(chain)}."
    steps = [_VERBS[op].format(x=x) for op, x in chain.ops]
    if form == "instructions":
        listed = ", ".join(steps[:-1]) + (", then " if len(steps) > 1 else "") + steps[-1]
        return f"Start with {chain.start}, {listed}. What is the result?"
    item = rng.choice(_ITEMS)
    story = " ".join(_STORY[op].format(x=x) for op, x in chain.ops)
    return f"{rng.choice(_NAMES)} has {chain.start} {item}. {story} How many {item} now?"


def steps_solution(chain: Chain) -> str:
    values = chain.values()
    lines = [f"{v} {op} {x} = {r}" for (op, x), v, r in zip(chain.ops, values, values[1:])]
    return "\n".join(lines + [f"\\boxed{{{chain.answer}}}"])


def terse_solution(chain: Chain) -> str:
    return f"{expression(chain)} = {chain.answer}, so the answer is \\boxed{{{chain.answer}}}"


SOLUTION_WRITERS = {"steps": steps_solution, "terse": terse_solution}


# ----------------------------------------------------------------------------- generation


def resolve_difficulty(level: int, num_ops: Optional[tuple[int, int]] = None,
                       max_operand: Optional[int] = None, max_value: Optional[int] = None) -> Difficulty:
    """A preset `level`, with any knob given explicitly overriding it."""
    if level not in LEVELS:
        raise ValueError(f"unknown synthetic level {level}; choose from {sorted(LEVELS)}")
    d = LEVELS[level]
    min_ops, max_ops = num_ops if num_ops is not None else (d.min_ops, d.max_ops)
    d = Difficulty(min_ops, max_ops, max_operand or d.max_operand, max_value or d.max_value)
    if not 1 <= d.min_ops <= d.max_ops or d.max_operand < 2 or d.max_value < d.max_operand:
        raise ValueError(f"invalid synthetic difficulty {d}")
    return d


@gin.configurable
def synthetic_problems(split: str, style: str = "steps", level: int = 2,
                       num_ops: Optional[tuple[int, int]] = None, max_operand: Optional[int] = None,
                       max_value: Optional[int] = None, seed: int = 0,
                       split_sizes: Optional[dict] = None) -> list[Problem]:
    """Distinct problems of one split (deduplicated by text), with solutions in `style`.

    `split_sizes` defaults to train 20,000 / validation 500 / test 500. The two styles share
    the problems: only the solution text differs. Where a small difficulty cannot supply
    that many distinct problems the split is smaller, with a warning.
    """
    if split not in SPLITS or style not in STYLES:
        raise ValueError(f"split must be one of {SPLITS} and style one of {STYLES}")
    sizes = {"train": 20_000, "validation": 500, "test": 500, **(split_sizes or {})}
    d = resolve_difficulty(level, num_ops, max_operand, max_value)
    rng = random.Random(seed * len(SPLITS) + SPLITS.index(split))
    problems: dict[str, Problem] = {}
    for _ in range(50 * sizes[split]):
        if len(problems) == sizes[split]:
            break
        chain = sample_chain(rng, d)
        if split_of(chain) != split:
            continue
        text = phrase_problem(chain, rng)
        problems.setdefault(text, Problem(
            problem_id=f"synthetic/{split}/{len(problems)}",
            problem=text,
            solution=SOLUTION_WRITERS[style](chain),
            answer=str(chain.answer),
            level=str(level),
            subject=f"arithmetic/{len(chain.ops)}_ops",
        ))
    if len(problems) < sizes[split]:
        logging.warning("synthetic %s: only %d distinct problems at %s (asked %d)",
                        split, len(problems), d, sizes[split])
    return list(problems.values())

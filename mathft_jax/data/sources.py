"""Problem sources by name: the one registry that the seqio tasks, `infer` and `rl` read.

A source maps a split to a list of `readers.Problem` (problem, solution, answer, id), with
every path and knob resolved from gin when it is read. Light: no TensorFlow.

  math500                 PRM800K's MATH splits: train = its 12,000, test = MATH500
  math                    MATH itself: train 7,500, test 5,000
  gsm8k, aime24, amc23,   the evaluation benchmarks, test split only, each with its makers'
  minerva_math,           gold answers (data/benchmarks.py, docs/benchmarks.md)
  olympiadbench
  synthetic_arith_steps   the synthetic curriculum, step-by-step solutions
  synthetic_arith_terse   the same problems, terse solutions

Register another with `@register("name")` on a function `(split, require_answer) -> list`.
"""
from __future__ import annotations

import collections
import logging
from typing import Callable, Optional

from mathft_jax.data import benchmarks, paths, readers, synthetic
from mathft_jax.core.settings import SettingError

Source = Callable[[str, bool], list]
_SOURCES: dict[str, Source] = {}


def register(name: str) -> Callable[[Source], Source]:
    def add(fn: Source) -> Source:
        _SOURCES[name] = fn
        return fn
    return add


def names() -> list[str]:
    return sorted(_SOURCES)


class UnknownSource(ValueError):
    """A problem source name that is not registered."""


def problems(name: str, split: str, require_answer: bool = False) -> list[readers.Problem]:
    """The problems of source `name`'s `split`."""
    if name not in _SOURCES:
        raise UnknownSource(f"unknown problem source {name!r}; known: {', '.join(names())}")
    return _SOURCES[name](split, require_answer)


def problem_records(name: str, split: str, problems_file: Optional[str] = None,
                    setting: Optional[str] = None) -> list[dict]:
    """[{"problem_id", "problem", "gold"}]: what `infer` samples and `rl` trains on (`gold` a
    list where a problem needs several answers; `gold_tolerance`, `unit`, `answer_type` where
    the benchmark gives them: docs/formats.md). A
    `problems_file` (MATH-style JSON lines or folder) wins over the source `name`. Problems
    with no answer are skipped, with a warning that counts them: nothing could grade their
    samples, which would count as wrong. Problem ids must be unique. `setting` (`infer`,
    `grpo`): an unknown source is a SettingError naming `<setting>.task`."""
    if problems_file:
        found = readers.read_math(problems_file, split, require_answer=True)
    else:
        try:
            found = problems(name, split, require_answer=True)
        except UnknownSource as e:
            if setting is None:
                raise
            raise SettingError(f"{setting}.task={name!r}: {e}, or set {setting}.problems_file") from None
    if not found:
        raise readers.DataFormatError(f"{problems_file or name}/{split}: no problem has an "
                                      "answer (an `answer` field, or a \\boxed{} in the "
                                      "solution) to grade samples against")
    records = [problem_record(p) for p in found]
    repeated = sorted({i for i, n in collections.Counter(r["problem_id"] for r in records).items()
                       if n > 1})
    if repeated:
        raise readers.DataFormatError(f"{problems_file or name}/{split}: problem ids are not "
                                      f"unique: {readers.first_ids(list(map(repr, repeated)))}")
    return records


def problem_record(problem: readers.Problem) -> dict:
    """The record of one problem: a multi-part gold as a list, and the benchmark's grading
    fields only where it gives them (so MATH records stay as they were)."""
    answer = problem.answer
    record = {"problem_id": problem.problem_id, "problem": problem.problem,
              "gold": list(answer) if isinstance(answer, tuple) else answer}
    if problem.tolerance is not None:
        record["gold_tolerance"] = problem.tolerance
    record.update({key: value for key, value in (("unit", problem.unit),
                                                  ("answer_type", problem.answer_type)) if value})
    return record


def first(records: list, max_problems: Optional[int], setting: str) -> list:
    """The first `max_problems` records (all where None), with a warning where `setting`
    asks for more than there are: a silent shortfall would pass for the number asked."""
    if max_problems is not None and max_problems > len(records):
        logging.warning("%s=%d, but there are only %d problems: using all %d", setting,
                        max_problems, len(records), len(records))
    return records[:max_problems]


@register("math500")
def _math500(split: str, require_answer: bool) -> list[readers.Problem]:
    return readers.read_math_splits(paths.math_splits_dir() / f"{split}.jsonl",
                                    require_answer=require_answer)


@register("math")
def _math(split: str, require_answer: bool) -> list[readers.Problem]:
    return readers.read_math(paths.math_dir(), split, require_answer=require_answer)


for _name in benchmarks.READERS:
    register(_name)(lambda split, require_answer, name=_name: benchmarks.read_benchmark(name, split))

for _style in synthetic.STYLES:
    register(f"synthetic_arith_{_style}")(
        lambda split, require_answer, style=_style: synthetic.synthetic_problems(split, style=style))

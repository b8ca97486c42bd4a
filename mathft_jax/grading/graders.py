"""The graders, registered in one table, and `grade`: one solution against its gold answer.

    grade(text, gold, policy="strict", grader="mathft") -> Verdict(answer, correct)

`mathft` and `prm800k` read the answer with our extraction under `policy`; `math_verify` reads
the whole text with math-verify's own extraction (the policy does not apply to its verdict;
`answer` still shows ours, for reports). One deadline covers the whole call (`deadline.py`).

A gold answer is a string, or a list of parts that a sample must all give (OlympiadBench's
multiple-answer problems); `tolerance` (absolute) makes numbers within it equal, where the
benchmark's published rule grants one (docs/benchmarks.md).
"""
from __future__ import annotations

import atexit
import dataclasses
import importlib.metadata
import importlib.util
import pathlib
from collections.abc import Callable, Sequence
from typing import NamedTuple, Union

from mathft_jax.grading import prm800k, timeout
from mathft_jax.grading.deadline import Deadline
from mathft_jax.grading.equiv import TOLERANCE_SLACK, is_equiv, parts_equiv
from mathft_jax.grading.extract import POLICIES, all_boxed, extract_answer

# Bumped whenever a rule of ours changes a verdict (recorded in metrics next to the grader).
MATHFT_VERSION = "mathft_jax grading 3"

Gold = Union[str, Sequence[str]]  # one answer, or the parts of a multiple-answer one


class Verdict(NamedTuple):
    answer: str | None  # the extracted answer; None where the text states none
    correct: bool


@dataclasses.dataclass(frozen=True)
class Grader:
    name: str
    # (text, answer, gold, deadline[, tolerance]): gold a string or a list of parts; the
    # tolerance is passed only where a record grants one, so a 4-argument judge still serves
    judge: Callable[..., bool]
    version: Callable[[], str]
    reads_text: bool = False  # its own extraction from the whole text
    module: str | None = None  # an optional package it needs, installed by the pip `extra`
    extra: str | None = None

    def available(self) -> bool:
        return self.module is None or importlib.util.find_spec(self.module) is not None


def _joined(gold: Gold) -> str:
    """A multiple-answer gold as one comma list, for graders that read a single string."""
    return gold if isinstance(gold, str) else ", ".join(gold)


def _mathft(text, answer, gold, deadline: Deadline, tolerance=None) -> bool:
    if isinstance(gold, str):
        return is_equiv(answer, gold, timeout_s=max(0.0, deadline.remaining()), tolerance=tolerance)
    # every part: from the answer, or (OlympiadBench's judge) from all the boxes joined
    readings = [answer] + ([", ".join(all_boxed(text))] if text and len(all_boxed(text)) > 1 else [])
    return any(parts_equiv(reading, gold, timeout_s=max(0.0, deadline.remaining()),
                           tolerance=tolerance) for reading in readings)


def _prm800k(text, answer, gold, deadline: Deadline, tolerance=None) -> bool:
    return prm800k.grade_answer(answer, _joined(gold), deadline)


_MATH_VERIFY = timeout.HelperPool(worker=pathlib.Path(__file__).with_name("math_verify_worker.py"))
atexit.register(_MATH_VERIFY.stop)


def _math_verify(text, answer, gold, deadline: Deadline, tolerance=None) -> bool:
    """In a helper process: math-verify's SIGALRM timeouts need a main thread, and a hung
    comparison must be killable. Its own extraction and rules (float_rounding=6); a list gold
    as one comma list, which it reads as a set (every part, any order, nothing more; several
    boxes of the text joined, as OlympiadBench's judge reads them); and where the record
    grants a tolerance, numbers within it are equal too (the benchmark's rule, as ours)."""
    target = text if text else (f"${answer}$" if answer is not None else "")
    remaining = deadline.remaining()
    within = None if tolerance is None else TOLERANCE_SLACK * tolerance
    return remaining > 0 and _MATH_VERIFY.equal(f"${_joined(gold)}$", target,
                                                timeout_s=remaining, tolerance=within) is True


def _math_verify_version() -> str:
    try:
        return f"math-verify {importlib.metadata.version('math-verify')}"
    except importlib.metadata.PackageNotFoundError:
        return "math-verify (not installed)"


GRADERS: dict[str, Grader] = {grader.name: grader for grader in (
    Grader("mathft", _mathft, lambda: MATHFT_VERSION),
    Grader("prm800k", _prm800k, lambda: prm800k.VERSION),
    Grader("math_verify", _math_verify, _math_verify_version, reads_text=True, module="math_verify",
           extra="graders"),
)}


def get_grader(name: str) -> Grader:
    """The registered grader `name`; ValueError (a usage error) naming the choices otherwise."""
    grader = GRADERS.get(name)
    if grader is None:
        raise ValueError(f"unknown grader {name!r}; expected one of {', '.join(GRADERS)}")
    if not grader.available():
        raise ValueError(f"grader {name!r} needs the optional extra: "
                         f"pip install -e '.[{grader.extra}]'")
    return grader


def _valid_gold(gold: object) -> bool:
    if isinstance(gold, str):
        return True
    return isinstance(gold, (list, tuple)) and bool(gold) and all(isinstance(p, str) for p in gold)


def grade(text: str | None, gold: Gold, policy: str = "strict", grader: str = "mathft",
          timeout_s: float | None = None, answer: str | None = None,
          tolerance: float | None = None) -> Verdict:
    """Extract the answer of `text` under `policy` (or take `answer` as given) and judge it
    against `gold` (a string, or a list of parts all of which it must give) with `grader`,
    within one deadline; `tolerance` as the benchmark grants. Never raises on the texts;
    raises ValueError for an unknown policy or grader."""
    chosen = get_grader(grader)
    if policy not in POLICIES:
        raise ValueError(f"unknown extraction policy {policy!r}; expected one of {POLICIES}")
    deadline = Deadline(timeout_s)
    if answer is None:
        answer = extract_answer(text, policy=policy)
    if not _valid_gold(gold) or (answer is None and not chosen.reads_text):
        return Verdict(answer, False)
    try:
        extra = () if tolerance is None else (tolerance,)
        return Verdict(answer, bool(chosen.judge(text, answer, gold, deadline, *extra)))
    except Exception:  # noqa: BLE001 - a grader must never raise on garbage
        return Verdict(answer, False)

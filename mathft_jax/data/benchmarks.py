"""Readers for the evaluation benchmarks in `<data_root>/benchmarks/` (../shared/data/README.md),
each reading its gold answer as its makers grade it (docs/benchmarks.md):

  gsm8k          the number after `####` in `answer`, thousands separators removed
  aime24         `answer` (an integer 0-999, as written: `025`)
  amc23          `answer`, a JSON number: 27.0 is `27`
  minerva_math   the last `\\boxed{}` of `solution`, units included
  olympiadbench  `final_answer[0]`: several parts where `is_multiple_answer` (a tuple of
                 strings, all of which a sample must give), with `unit`, `answer_type` and a
                 numeric tolerance for Numerical answers (`error`, else 1e-8: OlympiadBench's
                 evaluation code)

Each has one split, `test`. Evaluation only: never train on them.
"""
from __future__ import annotations

import math
import pathlib
import re
from typing import Callable, Optional

from mathft_jax.data import paths
from mathft_jax.data import records
from mathft_jax.grading.extract import last_boxed
from mathft_jax.grading.structure import split_top

# OlympiadBench's `MathJudger.precision` where a problem gives no `error`
# (inference/code/math_judger.py): |answer - gold| <= 1.01 * precision.
OLYMPIADBENCH_DEFAULT_TOLERANCE = 1e-8
_GSM8K_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_DOLLAR_SPAN = re.compile(r"\$[^$]*\$")
_PROSE = re.compile(r"[A-Za-z]{2}")


def _where_answer(where: str, reason: str) -> records.DataFormatError:
    return records.DataFormatError(f"{where}: {reason}")


def gsm8k_gold(answer: str, where: str = "gsm8k") -> str:
    """`#### 1,234` -> `1234` (Cobbe et al.'s final answer line)."""
    if "####" not in answer:
        raise _where_answer(where, "'answer' has no '####' final answer line")
    return _GSM8K_THOUSANDS.sub("", answer.rsplit("####", 1)[1].strip())


def amc23_gold(answer: object, where: str = "amc23") -> str:
    """A JSON number as its text: 27.0 -> `27`, 2.5 -> `2.5`."""
    if isinstance(answer, bool) or not isinstance(answer, (int, float)) or not math.isfinite(answer):
        raise _where_answer(where, f"'answer' must be a finite JSON number, not {answer!r}"[:200])
    return str(int(answer)) if float(answer).is_integer() else repr(float(answer))


def minerva_gold(solution: str, where: str = "minerva_math") -> str:
    """The last `\\boxed{}` of the solution, as written (units included)."""
    boxed = last_boxed(solution)
    if boxed is None:
        raise _where_answer(where, "'solution' has no non-empty \\boxed{} answer")
    return boxed


def _strip_dollars(part: str) -> str:
    part = part.strip()
    return part[1:-1].strip() if len(part) > 1 and part[0] == part[-1] == "$" else part


def olympiadbench_parts(final_answer: str, multiple: bool) -> tuple[str, ...]:
    """The final answer's parts: the top-level comma items of its math (`1,3,5`,
    `$(1,1), (3,2)$`, `$69$,$84$`); one part unless `multiple`, or where prose stands between
    its `$...$` spans (`$f(x)=ax+b$, where $b$ is ...`)."""
    if any(_PROSE.search(text) for text in _DOLLAR_SPAN.split(final_answer)):
        return (final_answer.strip(),)  # prose with math in it: one answer, as written
    if not multiple:
        return (_strip_dollars(final_answer),)
    return tuple(part for part in split_top(final_answer.replace("$", ""), ",") if part)


def olympiadbench_tolerance(record: dict, where: str) -> Optional[float]:
    """Absolute tolerance of a Numerical answer: `error`, else OlympiadBench's 1e-8."""
    if record.get("answer_type") != "Numerical":
        return None
    error = record.get("error")
    if error in (None, ""):
        return OLYMPIADBENCH_DEFAULT_TOLERANCE
    try:
        return float(error)
    except (TypeError, ValueError):
        raise _where_answer(where, f"'error' must be one number, not {error!r}"[:200]) from None


def _gsm8k(where: str, record: dict) -> records.Problem:
    answer = records.require(record, "answer", where)
    return records.Problem(problem_id=f"gsm8k/test/{records.require(record, 'idx', where)}",
                           problem=records.require(record, "question", where), solution=answer,
                           answer=gsm8k_gold(answer, where))


def _aime24(where: str, record: dict) -> records.Problem:
    return records.Problem(problem_id=f"aime24/{records.require(record, 'id', where)}",
                           problem=records.require(record, "problem", where),
                           solution=record.get("solution") or "",
                           answer=str(records.require(record, "answer", where)).strip())


def _amc23(where: str, record: dict) -> records.Problem:
    return records.Problem(problem_id=f"amc23/{records.require(record, 'id', where)}",
                           problem=records.require(record, "problem", where), solution="",
                           answer=amc23_gold(records.require(record, "answer", where), where))


def _minerva_math(where: str, record: dict) -> records.Problem:
    solution = records.require(record, "solution", where)
    return records.Problem(problem_id=f"minerva_math/{records.require(record, 'idx', where)}",
                           problem=records.require(record, "problem", where), solution=solution,
                           answer=minerva_gold(solution, where), subject=str(record.get("type", "")))


def _olympiadbench(where: str, record: dict) -> records.Problem:
    final = records.require(record, "final_answer", where)
    if not isinstance(final, list) or not final or not isinstance(final[0], str):
        raise _where_answer(where, "'final_answer' must be a non-empty list of strings")
    parts = olympiadbench_parts(final[0], bool(record.get("is_multiple_answer")))
    if not parts:
        raise _where_answer(where, "'final_answer' is empty")
    solutions = record.get("solution") or []
    return records.Problem(
        problem_id=f"olympiadbench/{records.require(record, 'id', where)}",
        problem=records.require(record, "question", where),
        solution=solutions[0] if isinstance(solutions, list) and solutions else "",
        answer=parts if len(parts) > 1 else parts[0], subject=str(record.get("subfield") or ""),
        unit=_strip_dollars(str(record.get("unit") or "")),
        answer_type=str(record.get("answer_type") or ""),
        tolerance=olympiadbench_tolerance(record, where))


READERS: dict[str, Callable[[str, dict], records.Problem]] = {
    "gsm8k": _gsm8k, "aime24": _aime24, "amc23": _amc23, "minerva_math": _minerva_math,
    "olympiadbench": _olympiadbench}


def benchmark_file(name: str, split: str) -> pathlib.Path:
    if split != "test":
        raise ValueError(f"benchmark {name!r} has only a 'test' split, not {split!r}")
    return paths.benchmarks_dir() / name / "test.jsonl"


def read_benchmark(name: str, split: str = "test") -> list[records.Problem]:
    """The problems of benchmark `name` (a key of READERS); errors name FILE:LINE."""
    read = READERS[name]
    return [read(where, record) for where, record in records.iter_jsonl(benchmark_file(name, split))]

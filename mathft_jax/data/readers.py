"""Readers for MATH, PRM800K's `math_splits` and PRM800K's step-level label files.

Every reader returns `Problem` records (`records.py`, re-exported here with `iter_jsonl`,
`require` and `DataFormatError`). Bad input fails loudly: a malformed JSON line names
`file:line`, a missing field names the field, an empty file says so. Schemas:
../shared/data/README.md and docs/data.md.
"""
from __future__ import annotations

import collections
import json
import logging
import math
import os
import pathlib
import re
from typing import Optional, Sequence, Union

from mathft_jax.core import storage
from mathft_jax.data.records import DataFormatError, PathLike, Problem, iter_jsonl, require
from mathft_jax.grading.equiv import is_equiv
from mathft_jax.grading.extract import extract_answer

def _keep_answered(problems: list[Problem], source: PathLike, require_answer: bool) -> list[Problem]:
    if not require_answer:
        return problems
    kept = [p for p in problems if p.answer is not None]
    if len(kept) != len(problems):
        logging.warning("%s: skipped %d of %d problems without an answer (`answer` empty or "
                        "absent, and no non-empty \\boxed{} in the solution): %s", source,
                        len(problems) - len(kept), len(problems),
                        first_ids([p.problem_id for p in problems if p.answer is None]))
    return kept


def first_ids(ids: list[str], most: int = 10) -> str:
    """The first `most` ids for a message, and how many more there are."""
    return ", ".join(ids[:most]) + (f" and {len(ids) - most} more" if len(ids) > most else "")


# ----------------------------------------------------------------------------- MATH


def _math_answer(record: dict, solution: str, where: str) -> Optional[str]:
    """The record's `answer` (a number is taken as its text), else its solution's last box;
    None where neither gives a non-empty one. PRM800K's split files have `answer: null`
    beside a solution ending in `\\boxed 2`, and `answer: ""` for an empty box."""
    answer = record.get("answer")
    if (isinstance(answer, bool) or not isinstance(answer, (str, int, float, type(None)))
            or isinstance(answer, float) and not math.isfinite(answer)):
        raise DataFormatError(f"{where}: 'answer' must be a string or a finite number, "
                              f"not {answer!r}"[:300])
    if isinstance(answer, (int, float)):
        answer = str(answer)
    if answer is None or not answer.strip():
        answer = extract_answer(solution)
    return answer.strip() if answer and answer.strip() else None


def _math_problem(record: dict, where: str, default_id: str) -> Problem:
    solution = require(record, "solution", where)
    return Problem(
        problem_id=str(record.get("unique_id") or default_id),
        problem=require(record, "problem", where),
        solution=solution,
        answer=_math_answer(record, solution, where),
        level=str(record.get("level", "")),
        subject=str(record.get("type") or record.get("subject") or ""),
    )


def read_jsonl_problems(path: PathLike, require_answer: bool = False) -> list[Problem]:
    """MATH-style JSON lines (`problem`, `solution`, optional `answer`, `level`, `type`/`subject`,
    `unique_id`). Where `answer` is absent it is extracted from the solution's last box."""
    problems = [_math_problem(r, where, default_id=where) for where, r in iter_jsonl(path)]
    return _keep_answered(problems, path, require_answer)


def _problem_file_order(path: pathlib.Path) -> tuple:
    return (path.parent.name, int(path.stem) if path.stem.isdigit() else -1, path.name)


def read_math_folder(split_dir: PathLike, require_answer: bool = False) -> list[Problem]:
    """The original MATH release: `split_dir/<subject>/<n>.json`, one problem per file."""
    split_dir = storage.path(split_dir)
    files = sorted(split_dir.glob("*/*.json"), key=_problem_file_order)
    if not files:
        raise DataFormatError(f"{split_dir}: no <subject>/<n>.json problem files in it")
    problems = []
    for file in files:
        try:
            record = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{file}:{e.lineno}: malformed JSON ({e.msg})") from None
        default_id = f"{split_dir.name}/{file.parent.name}/{file.name}"
        problems.append(_math_problem(record, str(file), default_id))
    return _keep_answered(problems, split_dir, require_answer)


def read_math(path: PathLike, split: Optional[str] = None, require_answer: bool = False) -> list[Problem]:
    """MATH in either layout. `path` is a `.jsonl` file; or a directory holding `<split>.jsonl`
    or the per-problem folders `<split>/<subject>/<n>.json`; or a split folder itself."""
    path = storage.path(path)
    if path.is_file():
        return read_jsonl_problems(path, require_answer)
    if split is not None and (path / f"{split}.jsonl").is_file():
        return read_jsonl_problems(path / f"{split}.jsonl", require_answer)
    if split is not None and (path / split).is_dir():
        return read_math_folder(path / split, require_answer)
    if path.is_dir() and split is None:
        return read_math_folder(path, require_answer)
    raise FileNotFoundError(f"MATH data not found: {path} (split={split!r}); expected a .jsonl "
                            "file, <dir>/<split>.jsonl or <dir>/<split>/<subject>/<n>.json")


def read_math_splits(path: PathLike, require_answer: bool = False) -> list[Problem]:
    """PRM800K's `math_splits/{train,test}.jsonl` (12,000 train / 500 MATH500 problems)."""
    return read_jsonl_problems(path, require_answer)


# ----------------------------------------------------------------------------- PRM800K labels

_ANSWER_SECTION = re.compile(r"#\s*Answer\s*\n(.*)\Z", re.DOTALL)


def _chosen_step_text(step: dict) -> Optional[str]:
    """The chosen completion of one step, or the human-written one where a labeller wrote it."""
    chosen = step.get("chosen_completion")
    if chosen is not None:
        return step["completions"][chosen]["text"]
    human = step.get("human_completion")
    return human["text"] if human else None


def boxed_answer_section(text: str) -> Optional[tuple[str, str]]:
    """Splits a PRM800K solution at its final "# Answer" section: (rewritten text, answer).
    The section is rewritten as a final `\\boxed{answer}` line; None where there is none."""
    marker = text.rfind("# Answer")
    match = _ANSWER_SECTION.match(text, marker) if marker != -1 else None
    if match is None or not match.group(1).strip():
        return None
    answer = match.group(1).strip()
    body = text[:marker].rstrip()
    boxed = "\\boxed{" + answer + "}"
    return (f"{body}\n\n{boxed}" if body else boxed), answer


def prm800k_solution(record: dict, where: str) -> tuple[Optional[str], str]:
    """(solution, "kept") for a usable label record, else (None, reason skipped)."""
    require(record, "question.problem", where)
    gold = require(record, "question.ground_truth_answer", where)
    finish_reason = require(record, "label.finish_reason", where)
    steps = require(record, "label.steps", where)
    if finish_reason != "solution":
        return None, f"finish_reason={finish_reason}"
    texts = [_chosen_step_text(step) for step in steps]
    if not texts or any(t is None for t in texts):
        return None, "step_without_chosen_completion"
    rewritten = boxed_answer_section("\n".join(texts))
    if rewritten is None:
        return None, "no_answer_section"
    solution, answer = rewritten
    if not is_equiv(answer, str(gold)):
        return None, "answer_not_equal_to_ground_truth"
    return solution, "kept"


def read_prm800k_labels(paths: Union[PathLike, Sequence[PathLike]],
                        stats: Optional[collections.Counter] = None) -> list[Problem]:
    """Solutions from PRM800K label files (`phase{1,2}_{train,test}.jsonl`).

    A solution is the chosen completion of each step joined by newlines, kept only where
    `finish_reason == "solution"` and its "# Answer" grades equal to `ground_truth_answer`.
    Skip reasons are counted into `stats` (if given) and logged.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    counts = stats if stats is not None else collections.Counter()
    problems = []
    for path in paths:
        for where, record in iter_jsonl(path):
            solution, reason = prm800k_solution(record, where)
            counts[reason] += 1
            if solution is None:
                continue
            question = record["question"]
            problems.append(Problem(
                problem_id=f"{storage.path(path).name}:{where.rsplit(':', 1)[1]}",
                problem=question["problem"],
                solution=solution,
                answer=str(question["ground_truth_answer"]),
            ))
    logging.info("PRM800K labels %s: %s", [str(p) for p in paths], dict(sorted(counts.items())))
    return problems


def read_candidates(path: PathLike) -> list[dict]:
    """Candidates file (docs/formats.md, read by `mathft_jax.results.candidates`) where every sample
    carries a bool `correct`: the file's own where present, else the grader's verdict."""
    from mathft_jax.results import candidates  # noqa: PLC0415 (pulls the grader only when needed)

    records = candidates.read_candidates(str(path))
    for record in records:
        for sample in record["samples"]:
            if "correct" not in sample:
                sample["correct"] = candidates.grade_sample(
                    sample, record["gold"], tolerance=candidates.record_tolerance(record))
    return records

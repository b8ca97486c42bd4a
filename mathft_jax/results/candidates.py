"""The candidates file: N sampled solutions per problem, as JSON lines (docs/formats.md).

One object per line: {"problem_id": str, "problem": str, "gold": str | [str, ...],
"gold_tolerance"?: float >= 0, "samples": [{"text": str, "answer": str | null, "score"?: float >= 0, "correct"?: bool,
"logprob"?: float, "num_tokens"?: int}], ...}.
Extra keys are kept. Blank lines are ignored; any other unreadable line is an error naming
file:line, or is skipped and counted with `skip_bad_lines`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math

from mathft_jax.core import atomic, storage
from mathft_jax.grading.extract import extract_answer
from mathft_jax.grading.graders import grade as grade_answer
from mathft_jax.grading.timeout import warm_up
from mathft_jax.core.pool import parallel_map
from mathft_jax.core.errors import DataError


# How `samples[].score` was made (`scoring.score_records`): a label evaluator's probability of
# being right, or a likelihood that only ranks (no calibration is read from it).
SCORE_METHODS = ("label", "likelihood")


class CandidatesError(DataError):
    """A malformed candidates line; the message starts with file:line (from the command
    line, one line, exit 1)."""


@dataclasses.dataclass(frozen=True)
class BadLine:
    line: int
    reason: str


def validate_record(record: object) -> None:
    """Raise ValueError with the reason when `record` does not follow the schema."""
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    for field in ("problem_id", "problem"):
        if not isinstance(record.get(field), str):
            raise ValueError(f"{field!r} must be a string")
    gold = record.get("gold")
    if not isinstance(gold, str) and not (isinstance(gold, list) and gold and all(
            isinstance(part, str) for part in gold)):
        raise ValueError("'gold' must be a string or a non-empty list of strings (the parts of "
                         "a multiple-answer problem)")
    tolerance = record.get("gold_tolerance")
    if tolerance is not None and (isinstance(tolerance, bool) or not isinstance(
            tolerance, (int, float)) or not math.isfinite(tolerance) or tolerance < 0):
        raise ValueError("'gold_tolerance' must be a finite number >= 0")
    if record.get("score_method", "label") not in SCORE_METHODS:
        raise ValueError(f"'score_method' must be one of {list(SCORE_METHODS)}")
    samples = record.get("samples")
    if not isinstance(samples, list) or not samples:
        raise ValueError("'samples' must be a non-empty list")
    for index, sample in enumerate(samples):
        where = f"samples[{index}]"
        if not isinstance(sample, dict):
            raise ValueError(f"{where} is not an object")
        if not isinstance(sample.get("text", ""), str):
            raise ValueError(f"{where}.text must be a string")
        if "answer" not in sample and "text" not in sample:
            raise ValueError(f"{where} has neither 'answer' nor 'text'")
        if sample.get("answer") is not None and not isinstance(sample["answer"], str):
            raise ValueError(f"{where}.answer must be a string or null")
        score = sample.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))
                                  or not math.isfinite(score)):
            raise ValueError(f"{where}.score must be a finite number")
        if score is not None and score < 0:  # W.RR sums scores: a negative one flips its sign
            raise ValueError(f"{where}.score is {score}: scores must be >= 0 (the weighted "
                             "metrics sum them)")
        for field, kind in (("logprob", (int, float)), ("num_tokens", int)):
            value = sample.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kind)
                                      or not math.isfinite(value)):
                raise ValueError(f"{where}.{field} must be a finite number")
        if sample.get("num_tokens") is not None and sample["num_tokens"] < 0:
            raise ValueError(f"{where}.num_tokens must be >= 0")
        if "correct" in sample and not isinstance(sample["correct"], bool):
            raise ValueError(f"{where}.correct must be a boolean")


def read_candidates_report(path: str, skip_bad_lines: bool = False) -> tuple[list[dict], list[BadLine]]:
    """(records, skipped bad lines). Without `skip_bad_lines` the first bad line raises."""
    records, bad, seen = [], [], set()
    # bytes: a non-UTF-8 line is an error naming its line; local or gs://
    with storage.path(path).open("rb") as file:
        for number, raw in enumerate(file, start=1):
            if not raw.strip():
                continue
            try:
                line = _decode(raw)
                record = json.loads(line)
                validate_record(record)
                if record["problem_id"] in seen:
                    raise ValueError(f"duplicate problem_id {record['problem_id']!r}")
            except ValueError as error:  # json.JSONDecodeError is a ValueError
                if not skip_bad_lines:
                    raise CandidatesError(f"{path}:{number}: {error}") from error
                bad.append(BadLine(number, str(error)))
                continue
            seen.add(record["problem_id"])
            records.append(record)
    if bad:
        logging.warning("%s: skipped %d bad line(s), first at line %d: %s",
                        path, len(bad), bad[0].line, bad[0].reason)
    return records, bad


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"not UTF-8 text (byte 0x{raw[error.start]:02x} at byte offset "
                         f"{error.start})") from None


def read_candidates(path: str, skip_bad_lines: bool = False) -> list[dict]:
    """The records of a candidates file (bad lines raise, or are skipped with a warning)."""
    return read_candidates_report(path, skip_bad_lines)[0]


def write_candidates(path: str, records: list[dict]) -> None:
    """Validate and write atomically: a temporary file beside `path`, then os.replace."""
    for index, record in enumerate(records):
        try:
            validate_record(record)
        except ValueError as error:
            raise CandidatesError(f"record {index}: {error}") from error
    atomic.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def sample_answer(sample: dict, policy: str | None = None) -> str | None:
    """A sample's answer: its recorded "answer" field (else strict extraction of its
    "text"); with a `policy`, extracted again from the text under it."""
    if policy is None and "answer" in sample:
        return sample["answer"]
    return extract_answer(sample.get("text"), policy=policy or "strict")


def grade_sample(sample: dict, gold: str | list[str], policy: str | None = None,
                 grader: str = "mathft", tolerance: float | None = None) -> bool:
    """The one judgment of a sample against its gold answer, used by the pipeline's grading
    (`grade_candidates`), by `voting.grade_problem`, by the data readers and by RL rewards:
    `grader` (grading.GRADERS) on the sample's answer (`sample_answer(sample, policy)`),
    within the grader's per-call bound. A list `gold` needs every part; `tolerance` is the
    record's `gold_tolerance` (`record_tolerance`)."""
    verdict = grade_answer(sample.get("text"), gold, policy or "strict", grader,
                          answer=sample_answer(sample, policy), tolerance=tolerance)
    return verdict.correct


def record_tolerance(record: dict) -> float | None:
    """The numeric tolerance a record's benchmark grants (`gold_tolerance`), else None."""
    return record.get("gold_tolerance")


def _grade_record(record: dict, grader: str = "mathft") -> list[bool]:
    return [grade_sample(sample, record["gold"], grader=grader, tolerance=record_tolerance(record))
            for sample in record["samples"]]


def grade_candidates(records: list[dict], processes: int | None = None, progress: bool = True,
                     grader: str = "mathft") -> list[dict]:
    """Set `correct` on every sample (in place) with a process pool; returns `records`."""
    grade = functools.partial(_grade_record, grader=grader)
    graded = parallel_map(grade, records, processes, "grading", progress, warm_up)
    for record, grades in zip(records, graded):
        for sample, correct in zip(record["samples"], grades):
            sample["correct"] = correct
    return records

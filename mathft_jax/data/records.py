"""The record every problem reader returns (`Problem`), and reading JSON lines that name their
`file:line` in every error: shared by the MATH/PRM800K readers (`readers.py`) and the
benchmark readers (`benchmarks.py`)."""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Iterator, Optional, Union

from mathft_jax.core import storage
from mathft_jax.core.errors import DataError

PathLike = Union[str, pathlib.Path]


class DataFormatError(DataError):
    """Input data that does not match its documented schema (a ValueError; from the command
    line, a one-line error naming FILE:LINE, exit 1)."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem with one reference solution (the solution ends in `\\boxed{answer}`)."""

    problem_id: str
    problem: str
    solution: str
    # None where neither the record nor its solution gives one; a tuple of parts where a
    # benchmark asks for several answers, all of which a sample must give (OlympiadBench)
    answer: Optional[Union[str, tuple[str, ...]]]
    level: str = ""
    subject: str = ""
    unit: str = ""  # the unit the answer is in, where the benchmark states one
    answer_type: str = ""  # OlympiadBench's Numerical / Expression / Tuple / Interval
    tolerance: Optional[float] = None  # absolute, for numeric answers (docs/benchmarks.md)

    @property
    def answer_text(self) -> str:
        """The answer as one string (parts joined by ", "); "" where there is none."""
        return ", ".join(self.answer) if isinstance(self.answer, tuple) else self.answer or ""


def iter_jsonl(path: PathLike) -> Iterator[tuple[str, dict]]:
    """Yields (`file:line`, record) for each non-blank line; errors name `file:line`."""
    path = storage.path(path)  # local or gs://
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    seen = False
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{where}: malformed JSON line ({e.msg})") from None
            if not isinstance(record, dict):
                raise DataFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
            seen = True
            yield where, record
    if not seen:
        raise DataFormatError(f"{path}: empty file, no JSON records in it")


def require(record: dict, field: str, where: str) -> Any:
    """`record[field]` (dotted paths allowed); a missing field is an error naming it."""
    value: Any = record
    for part in field.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            raise DataFormatError(f"{where}: record is missing required field '{field}'")
        value = value[part]
    return value

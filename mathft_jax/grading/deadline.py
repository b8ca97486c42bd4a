"""One deadline per grading call, shared by every stage and every element of the answer.

`is_equiv` (and `grade`) start a `Deadline`; the comparison checks it between elements, per
node of a numeric evaluation and before and while waiting for sympy. Past the deadline the
comparison stops with `DeadlineExceeded`, which the caller turns into "not shown equal".
Key computation (`answer_key`) takes no deadline: it is bounded by its size guards instead, so
that keys stay deterministic.
"""
from __future__ import annotations

import os
import time

# The documented per-call bound (docs/grading.md), in seconds.
CALL_TIMEOUT_S = float(os.environ.get("MATHFT_GRADE_TIMEOUT_S", "5"))


class DeadlineExceeded(Exception):
    """The call's time is up; the comparison could not finish."""


class Deadline:
    __slots__ = ("end",)

    def __init__(self, seconds: float | None = None):
        self.end = time.monotonic() + (CALL_TIMEOUT_S if seconds is None else seconds)

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def check(self) -> None:
        if time.monotonic() >= self.end:
            raise DeadlineExceeded


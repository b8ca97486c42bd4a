"""One deadline per grading call, shared by every stage and every element of the answer, and
measured in the call's own work, never in waiting.

`is_equiv` (and `grade`) start a `Deadline`; the comparison checks it between elements, per
node of a numeric evaluation and before each sympy request. Past the deadline the comparison
stops with `DeadlineExceeded`, which the caller turns into "not shown equal".

The clock is `work_time()`: the calling thread's CPU time plus the CPU time its sympy requests
took in their helper processes (`charge`). Time spent waiting (for the GIL under threads, for a
free helper, for a helper to start, for a core on a loaded machine) is not work, so a verdict
is the same serially, from threads and from processes, at any load. Key computation
(`answer_key`) takes no deadline: it is bounded by its size guards instead, so that keys stay
deterministic.
"""
from __future__ import annotations

import os
import threading
import time

# The documented per-call bound (docs/grading.md), in seconds of the call's own work.
CALL_TIMEOUT_S = float(os.environ.get("MATHFT_GRADE_TIMEOUT_S", "5"))

_CHARGED = threading.local()  # helper CPU seconds charged to this thread


def charge(seconds: float) -> None:
    """Count `seconds` of helper CPU time, spent on this thread's behalf, as its work."""
    _CHARGED.seconds = getattr(_CHARGED, "seconds", 0.0) + max(0.0, seconds)


def work_time() -> float:
    """This thread's CPU time plus the helper CPU time charged to it (a monotonic clock)."""
    return time.thread_time() + getattr(_CHARGED, "seconds", 0.0)


class DeadlineExceeded(Exception):
    """The call's time is up; the comparison could not finish."""


class Deadline:
    __slots__ = ("end",)

    def __init__(self, seconds: float | None = None):
        self.end = work_time() + (CALL_TIMEOUT_S if seconds is None else seconds)

    def remaining(self) -> float:
        return self.end - work_time()

    def check(self) -> None:
        if work_time() >= self.end:
            raise DeadlineExceeded

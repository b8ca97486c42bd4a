"""Probes for the grader's bounds that need no stopwatch: the sympy requests a call made,
whether `is_equiv`'s deadline ran out, and a fake clock under which the deadline never runs
out unless a test moves it. With them a test can say "a size guard answered this" or "the
deadline ended this" on a loaded machine as on an idle one.

Shared by tests/test_grading_fuzz.py and tests/test_grading_timeouts.py; the timing goals
themselves are bench/grader_soak.py's.
"""
from __future__ import annotations

import contextlib
from unittest import mock

from mathft_jax.grading import deadline as deadline_lib
from mathft_jax.grading import equiv, timeout


@contextlib.contextmanager
def deadline_expiries():
    """Yields a list that gains an entry whenever an `is_equiv` call's deadline has run out
    (`grade` and the prm800k grader make their own deadlines, which this does not see)."""
    expired = []

    class RecordingDeadline(deadline_lib.Deadline):
        def check(self):
            try:
                super().check()
            except deadline_lib.DeadlineExceeded:
                expired.append(self)
                raise

        def remaining(self):
            left = super().remaining()
            if left <= 0:
                expired.append(self)
            return left

    with mock.patch.object(equiv, "Deadline", RecordingDeadline):
        yield expired


@contextlib.contextmanager
def sympy_requests(answer=None):
    """Yields the list of (a, b, timeout_s) sympy requests made; `answer` (a function of the
    request) replaces the helpers' reply, else the helpers answer."""
    requests = []
    real = timeout.HELPERS.equal

    def equal(a_source, b_source, timeout_s=timeout.DEFAULT_TIMEOUT_S):
        requests.append((a_source, b_source, timeout_s))
        if answer is not None:
            return answer(a_source, b_source, timeout_s)
        return real(a_source, b_source, timeout_s)

    with mock.patch.object(timeout.HELPERS, "equal", equal):
        yield requests


class FakeClock:
    """`time` for deadline.py (whose work clock reads `thread_time`): stands still unless a
    test moves it."""

    def __init__(self):
        self.now = 0.0

    def thread_time(self) -> float:
        return self.now


@contextlib.contextmanager
def fake_clock():
    """The whole work clock: helper time an earlier test charged to this thread is set
    aside (an offset c makes (c + 1.0) - c differ from 1.0 in its last bit)."""
    clock = FakeClock()
    charged = getattr(deadline_lib._CHARGED, "seconds", 0.0)  # noqa: SLF001
    deadline_lib._CHARGED.seconds = 0.0  # noqa: SLF001
    try:
        with mock.patch.object(deadline_lib, "time", clock):
            yield clock
    finally:
        deadline_lib._CHARGED.seconds = charged  # noqa: SLF001

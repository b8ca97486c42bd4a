"""Tests wait on events (a file appearing, a process exiting), never assert a duration.

How fast something is belongs in bench/. The limit here only turns a hang into a failure
instead of a stuck suite, so it is generous: a loaded machine (two `make test` runs on two
shared cores) must never reach it. MATHFT_TEST_HANG_LIMIT_S overrides it.
"""
import os
import subprocess
import threading
import time
from typing import Callable, Optional

HANG_LIMIT_S = float(os.environ.get("MATHFT_TEST_HANG_LIMIT_S", 3600))


def wait_for(predicate: Callable[[], bool], what: str,
             proc: Optional[subprocess.Popen] = None, limit_s: float = HANG_LIMIT_S,
             poll_s: float = 0.05, output: Callable[[], str] = lambda: "") -> None:
    """Return once `predicate()` holds. Fails if `proc` exits first (with `output()`), or
    if nothing happened within `limit_s` (a hang)."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        if proc is not None and proc.poll() is not None:
            if predicate():  # it happened just before the exit
                return
            raise AssertionError(f"process exited ({proc.returncode}) before {what}:\n"
                                 f"{output()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"hung: no {what} after {limit_s:.0f} s")
        time.sleep(poll_s)


def finishes(fn: Callable[[], object], limit_s: float = HANG_LIMIT_S):
    """fn(), run in a thread that the caller waits on for up to `limit_s`: a hang (say, a
    size guard gone and a computation without end) fails the test instead of stalling the
    suite. Returns what fn returned; re-raises what it raised."""
    outcome = {}

    def run():
        try:
            outcome["value"] = fn()
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit_s)
    if thread.is_alive():
        raise AssertionError(f"hung: {getattr(fn, '__name__', 'the call')} still running "
                             f"after {limit_s:.0f} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")

"""Hard time bounds for sympy (and math-verify): pools of helper processes, killed and replaced
on timeout.

Signals (SIGALRM) only work in the main thread of the main interpreter; a subprocess works
from any thread and inside pool workers (it is a plain `subprocess.Popen`, which daemonic
multiprocessing workers may start). Each process has its own pool, which lends one helper to
one caller at a time and starts another (up to `MAX_HELPERS`) when all are busy, so threads
never queue behind one helper; a forked child notices the pid change and starts its own.
Every wait (for a free helper, for start-up, for the answer) ends at the caller's deadline.
A helper is any script that prints "ready", then answers each `{"a": ..., "b": ...}` line with
one line, "1", "0" or "e" (`sympy_worker.py`, `math_verify_worker.py`).
"""
from __future__ import annotations

import atexit
import json
import os
import pathlib
import select
import subprocess
import sys
import threading
import time

# Cap on one sympy request, inside the caller's whole-call deadline.
DEFAULT_TIMEOUT_S = float(os.environ.get("MATHFT_SYMPY_TIMEOUT_S", "3"))
MAX_HELPERS = int(os.environ.get("MATHFT_SYMPY_HELPERS", "0")) or max(4, os.cpu_count() or 1)
_WORKER = pathlib.Path(__file__).with_name("sympy_worker.py")


class SympyHelper:
    """One helper process, used by one caller at a time (the pool sees to that).

    `equal` returns True, False, or None (timed out, still starting, or failed)."""

    def __init__(self, worker: pathlib.Path = _WORKER):
        self._worker = worker
        self._process: subprocess.Popen | None = None
        self._ready = False
        self._owner_pid = os.getpid()

    def _read_line(self, deadline: float) -> str | None:
        stdout = self._process.stdout
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([stdout], [], [], remaining)[0]:
            return None
        line = stdout.readline()
        return line.strip() if line else ""  # "": the helper died

    def start(self) -> None:
        """Start the process without waiting for it: its import time overlaps other work."""
        if self._owner_pid != os.getpid():  # forked: the parent's pipes are not ours
            self._process, self._owner_pid = None, os.getpid()
        if self._process is not None and self._process.poll() is None:
            return
        self._ready = False
        self._process = subprocess.Popen(
            [sys.executable, "-u", str(self._worker)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)

    def wait_ready(self, deadline: float) -> bool:
        """Whether the helper is up by `deadline`; one still starting is left to start."""
        self.start()
        if not self._ready:
            line = self._read_line(deadline)
            if line == "":
                self.stop()
            self._ready = line == "ready"
        return self._ready

    def stop(self) -> None:
        if self._process is not None and self._owner_pid == os.getpid():
            self._process.kill()
            self._process.wait()
        self._process, self._ready = None, False

    def equal(self, a_source: str, b_source: str,
              timeout_s: float = DEFAULT_TIMEOUT_S) -> bool | None:
        deadline = time.monotonic() + timeout_s
        try:
            if not self.wait_ready(deadline):
                return None
            self._process.stdin.write(json.dumps({"a": a_source, "b": b_source}) + "\n")
            self._process.stdin.flush()
            answer = self._read_line(deadline)
        except OSError:
            answer = None
        if not answer:  # hung or died: kill it and start the replacement now
            self.stop()
            self.start()
            return None
        return {"1": True, "0": False}.get(answer)


class HelperPool:
    """Helpers of this process, lent one per caller; grows on demand up to `size`."""

    def __init__(self, size: int = MAX_HELPERS, worker: pathlib.Path = _WORKER):
        self._size = size
        self._worker = worker
        self._available = threading.Condition()
        self._idle: list[SympyHelper] = []
        self._all: list[SympyHelper] = []
        self._pid = os.getpid()

    def _forget_if_forked(self) -> None:
        if self._pid != os.getpid():
            self._idle, self._all, self._pid = [], [], os.getpid()

    def _acquire(self, deadline: float) -> SympyHelper | None:
        with self._available:
            self._forget_if_forked()
            while not self._idle and len(self._all) >= self._size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._available.wait(remaining)
            if self._idle:
                return self._idle.pop()
            helper = SympyHelper(self._worker)
            self._all.append(helper)
            return helper

    def _release(self, helper: SympyHelper) -> None:
        with self._available:
            if helper in self._all:  # not from before a fork
                self._idle.append(helper)
                self._available.notify()

    def equal(self, a_source: str, b_source: str,
              timeout_s: float = DEFAULT_TIMEOUT_S) -> bool | None:
        """Like `SympyHelper.equal`; waiting for a free helper counts against `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        helper = self._acquire(deadline)
        if helper is None:
            return None
        try:
            return helper.equal(a_source, b_source, deadline - time.monotonic())
        finally:
            self._release(helper)

    def warm_up(self, count: int = 1, timeout_s: float = 60.0) -> bool:
        """Start `count` helpers and wait until they answer (e.g. in a worker's initializer),
        so that no graded call spends its bound on start-up."""
        deadline = time.monotonic() + timeout_s
        helpers = [h for h in (self._acquire(deadline) for _ in range(min(count, self._size))) if h]
        try:
            for helper in helpers:
                helper.start()
            ready = [helper.wait_ready(deadline) for helper in helpers]
            return all(ready) and len(helpers) == count
        finally:
            for helper in helpers:
                self._release(helper)

    def stop(self) -> None:
        with self._available:
            self._forget_if_forked()
            for helper in self._all:
                helper.stop()


HELPERS = HelperPool()
atexit.register(HELPERS.stop)


def warm_up(count: int = 1, timeout_s: float = 60.0) -> bool:
    """Start this process's helpers ahead of grading (a pool worker's initializer, a test)."""
    return HELPERS.warm_up(count, timeout_s)

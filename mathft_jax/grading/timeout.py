"""Pools of helper processes (sympy, math-verify): each request bounded by its own CPU time,
a helper stuck past it killed and replaced.

Signals (SIGALRM) only work in the main thread of the main interpreter; a subprocess works
from any thread and inside pool workers (it is a plain `subprocess.Popen`, which daemonic
multiprocessing workers may start). Each process has its own pool, which lends one helper to
one caller at a time and starts another (up to `MAX_HELPERS`) when all are busy; a forked
child notices the pid change and starts its own.

A request's budget is the helper's CPU time (`helper_protocol`), and the CPU time it took is
charged to the calling thread's deadline (`deadline.charge`); waiting for a free helper, for a
helper's start-up or for a core is not charged, so a verdict does not depend on load. A
helper that runs past its budget without answering (one long C call ignores the timer) is
killed as soon as its CPU time shows it (`/proc`), or, where there is no `/proc`, after a
wall-clock backstop far above any loaded machine's.
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

from mathft_jax.grading import deadline as work

# Cap on one sympy request, in helper CPU seconds, inside the caller's whole-call deadline.
DEFAULT_TIMEOUT_S = float(os.environ.get("MATHFT_SYMPY_TIMEOUT_S", "3"))
MAX_HELPERS = int(os.environ.get("MATHFT_SYMPY_HELPERS", "0")) or max(4, os.cpu_count() or 1)
_WORKER = pathlib.Path(__file__).with_name("sympy_worker.py")
# A helper still silent this many CPU seconds past its budget is stuck in C: killed.
KILL_GRACE_S = 0.5
# Wall-clock waits that only a broken helper or machine reaches (never a verdict's cause on a
# working one): start-up, a free helper, an answer where /proc cannot show CPU time.
STARTUP_WAIT_S = 300.0
BACKSTOP_WAIT_S = 600.0
STALL_S = 30.0  # a helper whose CPU time stands still this long while it owes an answer
_POLL_S = 0.2
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process, from /proc; None where unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return None


class SympyHelper:
    """One helper process, used by one caller at a time (the pool sees to that).

    `equal` returns True, False, or None (over its budget, killed, or failed)."""

    def __init__(self, worker: pathlib.Path = _WORKER):
        self._worker = worker
        self._process: subprocess.Popen | None = None
        self._ready = False
        self._owner_pid = os.getpid()

    def _readable(self, seconds: float) -> bool:
        return bool(select.select([self._process.stdout], [], [], max(0.0, seconds))[0])

    def _read_line(self) -> str:
        line = self._process.stdout.readline()
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

    def wait_ready(self, wait_s: float = STARTUP_WAIT_S) -> bool:
        """Whether the helper is up within `wait_s` wall seconds (start-up is nobody's work)."""
        self.start()
        if not self._ready:
            line = self._read_line() if self._readable(wait_s) else None
            if line == "":
                self.stop()
            self._ready = line == "ready"
        return self._ready

    def stop(self) -> None:
        if self._process is not None and self._owner_pid == os.getpid():
            self._process.kill()
            self._process.wait()
        self._process, self._ready = None, False

    def _await_answer(self, budget_s: float) -> str | None:
        """The reply line, or None once the helper is stuck: its CPU time (/proc) runs past the
        budget, or does not move for `STALL_S` (deadlocked or stopped), or, where /proc is
        missing, the wall-clock backstop passes."""
        pid = self._process.pid
        started = last_used = process_cpu_seconds(pid)
        now = time.monotonic()
        give_up, stalled_since = now + BACKSTOP_WAIT_S, now
        while not self._readable(_POLL_S):
            used, now = process_cpu_seconds(pid), time.monotonic()
            if started is None or used is None:
                if now > give_up:
                    return None
                continue
            if used - started > budget_s + KILL_GRACE_S:
                return None
            if used != last_used:
                last_used, stalled_since = used, now
            elif now - stalled_since > STALL_S:
                return None
        return self._read_line()

    def equal(self, a_source: str, b_source: str, timeout_s: float = DEFAULT_TIMEOUT_S,
              tolerance: float | None = None) -> bool | None:
        """Judge one pair within `timeout_s` of the helper's CPU time, charged to the caller;
        `tolerance` (absolute), for a helper whose judge takes one (`helper_protocol`)."""
        answer = None
        request = {"a": a_source, "b": b_source, "cpu": timeout_s}
        if tolerance is not None:
            request["tol"] = tolerance
        try:
            if self.wait_ready():
                self._process.stdin.write(json.dumps(request) + "\n")
                self._process.stdin.flush()
                answer = self._await_answer(timeout_s)
        except OSError:
            answer = None
        if not answer:  # stuck or died: kill it and start the replacement now
            work.charge(timeout_s)
            self.stop()
            self.start()
            return None
        verdict, _, used = answer.partition(" ")
        try:
            work.charge(float(used))
        except ValueError:
            work.charge(timeout_s)
        return {"1": True, "0": False}.get(verdict)


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

    def _acquire(self, wait_s: float = BACKSTOP_WAIT_S) -> SympyHelper | None:
        """An idle helper, a new one, or (all busy) the next to come free: each busy one ends
        within its own CPU budget, so the wait is bounded by theirs; `wait_s` is a backstop."""
        give_up = time.monotonic() + wait_s
        with self._available:
            self._forget_if_forked()
            while not self._idle and len(self._all) >= self._size:
                remaining = give_up - time.monotonic()
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

    def equal(self, a_source: str, b_source: str, timeout_s: float = DEFAULT_TIMEOUT_S,
              tolerance: float | None = None) -> bool | None:
        """Like `SympyHelper.equal` (`timeout_s`: the request's CPU budget); waiting for a free
        helper is not part of it."""
        helper = self._acquire()
        if helper is None:
            return None
        try:
            return helper.equal(a_source, b_source, timeout_s, tolerance)
        finally:
            self._release(helper)

    def warm_up(self, count: int = 1, timeout_s: float = STARTUP_WAIT_S) -> bool:
        """Start `count` helpers and wait until they answer (e.g. in a worker's initializer),
        so that graded calls do not wait for start-up."""
        helpers = [h for h in (self._acquire(timeout_s) for _ in range(min(count, self._size))) if h]
        try:
            for helper in helpers:
                helper.start()
            ready = [helper.wait_ready(timeout_s) for helper in helpers]
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


def warm_up(count: int = 1, timeout_s: float = STARTUP_WAIT_S) -> bool:
    """Start this process's helpers ahead of grading (a pool worker's initializer, a test)."""
    return HELPERS.warm_up(count, timeout_s)

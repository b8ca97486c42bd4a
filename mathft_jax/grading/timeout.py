"""Hard time bounds for sympy: a persistent helper process, killed and restarted on timeout.

Signals (SIGALRM) only work in the main thread of the main interpreter; a subprocess works
from any thread and inside pool workers (it is a plain `subprocess.Popen`, which daemonic
multiprocessing workers may start). One helper per process, shared by threads under a lock;
a forked child notices the pid change and starts its own.
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

DEFAULT_TIMEOUT_S = float(os.environ.get("MATHFT_SYMPY_TIMEOUT_S", "3"))
_STARTUP_TIMEOUT_S = 60.0
_WORKER = pathlib.Path(__file__).with_name("sympy_worker.py")


class SympyHelper:
    """One helper process; `equal` returns True, False, or None (timed out / failed)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._owner_pid = os.getpid()

    def _read_line(self, deadline: float) -> str | None:
        stdout = self._process.stdout
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([stdout], [], [], remaining)[0]:
            return None
        line = stdout.readline()
        return line.strip() if line else None

    def _ensure_started(self) -> bool:
        if self._owner_pid != os.getpid():  # forked: the parent's pipes are not ours
            self._process, self._owner_pid = None, os.getpid()
        if self._process is not None and self._process.poll() is None:
            return True
        self._process = subprocess.Popen(
            [sys.executable, "-u", str(_WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, bufsize=1)
        if self._read_line(time.monotonic() + _STARTUP_TIMEOUT_S) != "ready":
            self.stop()
            return False
        return True

    def stop(self) -> None:
        if self._process is not None and self._owner_pid == os.getpid():
            self._process.kill()
            self._process.wait()
        self._process = None

    def equal(self, a_source: str, b_source: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool | None:
        with self._lock:
            try:
                if not self._ensure_started():
                    return None
                self._process.stdin.write(json.dumps({"a": a_source, "b": b_source}) + "\n")
                self._process.stdin.flush()
                answer = self._read_line(time.monotonic() + timeout_s)
            except OSError:
                answer = None
            if answer is None:  # hung or died: kill it, the next call starts a fresh one
                self.stop()
                return None
            return {"1": True, "0": False}.get(answer)


HELPER = SympyHelper()
atexit.register(HELPER.stop)

"""SIGTERM handling: TPU VMs and schedulers send SIGTERM before preempting a job.

The handler only sets a flag; the train loop checks it between steps, saves a checkpoint
at the current step and exits cleanly. In multi-process runs the flag is agreed on by all
processes (see `distributed.any_process`) so that every process saves the same step.
"""
from __future__ import annotations

import signal
import threading

from mathft_jax.user_errors import CliError

_requested = threading.Event()


class Preempted(CliError):
    """A stage stopped on SIGTERM with its work so far kept (a training checkpoint, the
    sampled chunks); rerun the same command to resume. One line, exit 75 (EX_TEMPFAIL: try
    again), so a wrapper can tell it from a finished run (0) and a failed one."""

    exit_code = 75


def _handler(signum, frame):
    del frame
    _requested.set()


def install() -> None:
    """Install the SIGTERM handler (main thread only; elsewhere it is a no-op). Entry
    points call it first thing, before any slow import, so a SIGTERM during start-up is
    kept (not cleared) and honoured when the train loop begins."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handler)


def reset() -> None:
    """Forget an earlier SIGTERM (tests that preempt several runs in one process)."""
    _requested.clear()


def requested() -> bool:
    return _requested.is_set()


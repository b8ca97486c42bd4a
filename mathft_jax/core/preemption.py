"""SIGTERM handling: TPU VMs and schedulers send SIGTERM before preempting a job.

The handler only sets a flag. The train and GRPO loops check it between steps, save a
checkpoint at the current step and exit cleanly; infer checks it between chunks and raises
`Preempted` (exit 75) with the chunks written kept. In multi-process runs the flag is agreed
on by all processes (see `distributed.any_process`), so every process stops at the same
point.
"""
from __future__ import annotations

import signal
import threading

from mathft_jax.core.errors import CliError

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
    kept (not cleared) and honoured when the loop begins (infer: before its first chunk)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handler)


def reset() -> None:
    """Forget an earlier SIGTERM (tests that preempt several runs in one process)."""
    _requested.clear()


def requested() -> bool:
    return _requested.is_set()


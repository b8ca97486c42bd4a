"""The helper processes' side of `timeout.HelperPool`: one request per line, each bounded by its
own CPU time.

A helper script (`sympy_worker.py`, `math_verify_worker.py`) prints "ready", then calls
`serve(judge)`. Each request is a JSON line `{"a": ..., "b": ..., "cpu": seconds}`, and may add
`"tol"`, an absolute tolerance passed to the judge as `tolerance`; the reply is one line
"<verdict> <cpu seconds used>", verdict "1" (equal), "0" (not), "e" (failed) or "t" (over its
CPU budget). The budget is CPU time (`ITIMER_PROF`), not wall time, so a request
gets the same verdict on an idle and on a loaded machine; the parent charges the CPU time to
the calling thread's deadline (`deadline.charge`). A step stuck in one long C call ignores
the timer until it returns; the parent kills such a helper (it watches its CPU time).
Imports only the standard library: a helper script imports it from its own directory.
"""
from __future__ import annotations

import json
import signal
import sys
import time
from typing import Callable


class OverBudget(Exception):
    """The request's CPU budget ran out."""


def _over_budget(signum, frame):
    raise OverBudget


def _answer(judge: Callable[[str, str], bool], request: dict) -> str:
    budget = float(request.get("cpu") or 0)
    if budget > 0:
        signal.setitimer(signal.ITIMER_PROF, budget)
    extra = {"tolerance": request["tol"]} if request.get("tol") is not None else {}
    try:
        return "1" if judge(request["a"], request["b"], **extra) else "0"
    except OverBudget:
        return "t"
    except Exception:  # noqa: BLE001 - any failure is "cannot decide"
        return "e"
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)


def serve(judge: Callable[[str, str], bool]) -> None:
    """Answer requests from stdin until it closes."""
    signal.signal(signal.SIGPROF, _over_budget)
    for line in sys.stdin:
        start = time.process_time()
        try:
            verdict = _answer(judge, json.loads(line))
        except (ValueError, KeyError, TypeError, OverBudget):
            verdict = "e"
        print(f"{verdict} {time.process_time() - start:.6f}", flush=True)

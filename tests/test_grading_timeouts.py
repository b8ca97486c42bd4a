"""Time bounds: pathological answers are answered by the size guards (not the deadline, not
sympy) from any thread and in workers; a sympy step is cut off at its own CPU budget and
charged to its caller; a helper stuck past it is killed; a caller finding every helper busy
waits for one, and the wait is not its work. Which mechanism answered is recorded (tests/grader_probes.py), so
nothing here races a stopwatch; the timings are bench/grader_soak.py's. The unbounded code
took 28-116 s on these inputs."""
import multiprocessing
import pathlib
import threading

import pytest

import grader_probes
from mathft_jax.grading import answer_key, deadline, extract_answer, is_equiv, timeout, warm_up
from mathft_jax.grading.timeout import HelperPool, SympyHelper
from waiting import HANG_LIMIT_S, finishes, wait_for


def pathological_answers():
    nested = "1"
    for _ in range(1000):
        nested = "\\frac{1}{" + nested + "}"
    garbage = bytes(range(256)).decode("latin-1") * 40
    return {
        "power tower": "2^{2^{2^{2^{2^{2}}}}}",
        "nested fractions": nested,
        "100 KB": "1+" * 50_000,
        "unbalanced": "\\frac{1}{2" * 40 + "}}}{{{",
        "binary": garbage,
        "huge factorial": "100000!",
        "huge symbolic power": "(x+1)^{100000}",
        "deep sqrt": "\\sqrt{" * 500 + "2" + "}" * 500,
    }


def assert_all_answered_by_guards():
    """Each pathological answer against plain ones (False) and against a rewrite of itself,
    which, were its guard gone, would pass the numeric check and go to sympy: the guards
    alone answer. The clock stands still, so neither the deadline nor a slow machine ends a
    call. Runs in the calling thread (the main-thread case is the point of one test), so
    the other callers bound a hang: `finishes`, the worker pool's wait."""
    with grader_probes.fake_clock(), grader_probes.sympy_requests() as requests:
        for name, answer in pathological_answers().items():
            for other in ("4", "x+1", "1"):
                assert is_equiv(answer, other) is False, name
            is_equiv(answer, answer + "+0")
            answer_key(answer)
            extract_answer("\\boxed{" + answer)
    assert not requests, requests[:2]


def test_main_thread():
    assert_all_answered_by_guards()


def test_other_thread():
    finishes(assert_all_answered_by_guards)


def _worker_check(_):
    assert_all_answered_by_guards()
    warm_up()  # start-up is not a call's work: warmed up, the call does not wait for it
    return is_equiv("(x+1)^2", "x^2+2x+1")  # reaches the sympy helper inside the worker


def test_multiprocessing_worker():
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.map_async(_worker_check, [0]).get(HANG_LIMIT_S) == [True]


SLOW = "Pow(Symbol('x')+Symbol('y')+Symbol('z')+1, 400)"  # expand() takes many CPU seconds
GRADING_DIR = pathlib.Path(timeout.__file__).parent


def stuck_worker(tmp_path, body: str) -> pathlib.Path:
    """A helper script whose judge runs `body` (for requests not starting with "ok")."""
    script = tmp_path / "stuck_worker.py"
    script.write_text(
        f"import sys, time\nsys.path.insert(0, {str(GRADING_DIR)!r})\n"
        "from helper_protocol import serve\n"
        f"def judge(a, b):\n    if not a.startswith('ok'):\n        {body}\n    return True\n"
        "print('ready', flush=True)\nserve(judge)\n")
    return script


@pytest.mark.parametrize("in_thread", [False, True])
def test_step_over_its_cpu_budget_is_cut_off_and_the_helper_answers_on(in_thread):
    """The budget is the helper's own CPU time (ITIMER_PROF inside it): the step is stopped
    there, that much CPU time is charged to the caller, and the same helper answers next."""
    helper = SympyHelper()
    result = {}

    def run():
        helper.wait_ready()  # start-up is not part of any request
        result["warm"] = helper.equal("Symbol('x')", "Symbol('x')")
        result["process"] = helper._process
        before = deadline.work_time()
        result["slow"] = helper.equal(SLOW, "Symbol('x')", timeout_s=0.5)
        result["charged"] = deadline.work_time() - before
        result["same process"] = helper._process is result["process"]
        result["after"] = helper.equal("Symbol('x')*2", "Symbol('x')+Symbol('x')")

    try:
        if in_thread:
            thread = threading.Thread(target=run)
            thread.start()
            thread.join(timeout=HANG_LIMIT_S)
        else:
            run()
    finally:
        helper.stop()
    assert result["warm"] is True
    assert result["slow"] is None and result["same process"]  # cut off: "cannot decide"
    assert result["charged"] >= 0.4  # its CPU time (the timer fires within a tick) is charged
    assert result["after"] is True


@pytest.mark.parametrize("body, why", [
    ("sum(range(10 ** 13))", "one long C call: the CPU timer cannot interrupt it"),
    ("time.sleep(10 ** 6)", "no CPU progress at all (deadlocked, stopped)"),
])
def test_stuck_helper_is_killed_and_replaced(tmp_path, monkeypatch, body, why):
    monkeypatch.setattr(timeout, "STALL_S", 1.0)
    helper = SympyHelper(stuck_worker(tmp_path, body))
    try:
        assert helper.wait_ready() and helper.equal("ok", "ok") is True
        process = helper._process
        assert finishes(lambda: helper.equal("stuck", "x", timeout_s=0.3)) is None, why
        assert process.poll() is not None and helper._process not in (None, process)
        assert helper.equal("ok", "ok") is True  # the replacement answers
    finally:
        helper.stop()


def test_pool_serves_threads_at_once_and_a_caller_waits_for_a_free_helper():
    """Slow requests from 3 threads are in flight together (no global lock); a caller finding
    every helper busy waits for one to come free (not part of its work) and is served."""
    pool = HelperPool(size=3)
    results, late = [], {}
    threads = [threading.Thread(target=lambda: results.append(pool.equal(SLOW, "Symbol('x')", 2.0)))
               for _ in range(3)]

    def late_caller():
        before = deadline.work_time()
        late["verdict"] = pool.equal("Symbol('x')*2", "Symbol('x')+Symbol('x')", timeout_s=0.5)
        late["charged"] = deadline.work_time() - before
        late["pending when served"] = len(results)

    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: len(pool._all) == 3 and not pool._idle, "three helpers busy at once")
        waiter = threading.Thread(target=late_caller)
        waiter.start()
        waiter.join(timeout=HANG_LIMIT_S)
        for thread in threads:
            thread.join(timeout=HANG_LIMIT_S)
    finally:
        pool.stop()
    assert results == [None, None, None]  # each cut off at its own 2 s of CPU time
    assert late["verdict"] is True and late["pending when served"] >= 1  # waited, then served
    assert late["charged"] < 0.5  # the wait is not its work: only its own quick step is


def test_a_wait_for_a_busy_helper_does_not_cost_a_verdict(monkeypatch):
    """The issue's case, made certain: the one helper is busy for 2 s of CPU time when a call
    with a 1 s bound needs it. The call waits, then is served: `(x+1)^2` is still shown equal
    to `x^2+2x+1` (a wall-clock deadline ran out while waiting, and said False)."""
    pool = HelperPool(size=1)
    monkeypatch.setattr(timeout, "HELPERS", pool)
    busy = threading.Thread(target=pool.equal, args=(SLOW, "Symbol('x')", 2.0))
    try:
        assert pool.warm_up(1)
        busy.start()
        wait_for(lambda: not pool._idle, "the one helper busy")
        before = deadline.work_time()
        assert is_equiv("(x+1)^2", "x^2+2x+1", timeout_s=1.0) is True
        assert deadline.work_time() - before < 1.0
        busy.join(timeout=HANG_LIMIT_S)
    finally:
        pool.stop()

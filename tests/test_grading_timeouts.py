"""Time bounds: pathological answers are answered by the size guards (not the deadline, not
sympy) from any thread and in workers; a hung sympy step is killed; a caller finding every
helper busy gives up. Which mechanism answered is recorded (tests/grader_probes.py), so
nothing here races a stopwatch; the timings are bench/grader_soak.py's. The unbounded code
took 28-116 s on these inputs."""
import multiprocessing
import threading
import time

import pytest

import grader_probes
from mathft_jax.grading import answer_key, extract_answer, is_equiv, warm_up
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
    warm_up()  # the helper's start-up would otherwise count against the call's bound
    return is_equiv("(x+1)^2", "x^2+2x+1")  # reaches the sympy helper inside the worker


def test_multiprocessing_worker():
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.map_async(_worker_check, [0]).get(HANG_LIMIT_S) == [True]


SLOW = "Pow(Symbol('x')+Symbol('y')+Symbol('z')+1, 400)"  # expand() takes many seconds


@pytest.mark.parametrize("in_thread", [False, True])
def test_hung_sympy_step_is_killed_and_the_helper_restarts(in_thread):
    helper = SympyHelper()
    result = {}

    def run():
        helper.wait_ready(time.monotonic() + HANG_LIMIT_S)  # start-up is not part of the request
        result["warm"] = helper.equal("Symbol('x')", "Symbol('x')")
        result["process"] = helper._process
        result["slow"] = helper.equal(SLOW, "Symbol('x')", timeout_s=0.5)
        result["killed"] = result["process"].poll() is not None
        result["replaced"] = helper._process not in (None, result["process"])
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
    # None and a dead process: cut off at the timeout, not waited for (its answer is "0")
    assert result["slow"] is None and result["killed"] and result["replaced"]
    assert result["after"] is True


def test_pool_serves_threads_at_once_and_bounds_the_wait():
    """Slow requests from 3 threads are in flight together (no global lock); a caller finding
    every helper busy gives up at its own deadline."""
    pool = HelperPool(size=3)
    results = []
    threads = [threading.Thread(target=lambda: results.append(pool.equal(SLOW, "Symbol('x')", 300)))
               for _ in range(3)]
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: len(pool._all) == 3 and not pool._idle, "three helpers busy at once")
        assert pool.equal("Symbol('x')", "Symbol('x')", timeout_s=0.5) is None
        # it gave up while all three were still busy: no helper had come free to wait for
        assert len(pool._all) == 3 and not pool._idle and not results
    finally:
        pool.stop()  # the slow requests end as "cannot decide"
        for thread in threads:
            thread.join(timeout=HANG_LIMIT_S)
    assert results == [None, None, None]
    assert pool.equal("Symbol('x')*2", "Symbol('x')+Symbol('x')", timeout_s=120) is True
    pool.stop()

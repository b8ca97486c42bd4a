"""Time bounds: pathological answers return False quickly from any thread and in workers."""
import multiprocessing
import threading
import time

import pytest

from mathft_jax.grading import answer_key, extract_answer, is_equiv, warm_up
from mathft_jax.grading.timeout import HelperPool, SympyHelper

# Slack over the deadline under test: the guards answer in milliseconds, the pool in its
# deadline; generous, since CI machines may run two test suites at once. The unbounded code
# took 28-116 s on these inputs.
BOUND_S = 10.0


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


def assert_all_false_and_fast():
    for name, answer in pathological_answers().items():
        for other in ("4", "x+1", "1"):
            start = time.monotonic()
            assert is_equiv(answer, other) is False, name
            assert time.monotonic() - start < BOUND_S, name
        start = time.monotonic()
        answer_key(answer)
        extract_answer("\\boxed{" + answer)
        assert time.monotonic() - start < BOUND_S, name


def test_main_thread():
    assert_all_false_and_fast()


def test_other_thread():
    errors = []

    def run():
        try:
            assert_all_false_and_fast()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive() and not errors, errors


def _worker_check(_):
    assert_all_false_and_fast()
    warm_up()  # the helper's start-up would otherwise count against the call's bound
    return is_equiv("(x+1)^2", "x^2+2x+1")  # reaches the sympy helper inside the worker


def test_multiprocessing_worker():
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.map(_worker_check, [0]) == [True]


SLOW = "Pow(Symbol('x')+Symbol('y')+Symbol('z')+1, 400)"  # expand() takes many seconds


@pytest.mark.parametrize("in_thread", [False, True])
def test_hung_sympy_step_is_killed_and_the_helper_restarts(in_thread):
    helper = SympyHelper()
    result = {}

    def run():
        helper.wait_ready(time.monotonic() + 120)  # start-up is not timed
        result["warm"] = helper.equal("Symbol('x')", "Symbol('x')")
        start = time.monotonic()
        result["slow"] = helper.equal(SLOW, "Symbol('x')", timeout_s=0.5)
        result["elapsed"] = time.monotonic() - start
        result["after"] = helper.equal("Symbol('x')*2", "Symbol('x')+Symbol('x')")

    try:
        if in_thread:
            thread = threading.Thread(target=run)
            thread.start()
            thread.join(timeout=120)
        else:
            run()
    finally:
        helper.stop()
    assert result["warm"] is True
    assert result["slow"] is None
    assert result["elapsed"] < 0.5 + BOUND_S
    assert result["after"] is True


def _wait_for(condition, limit_s=120.0):
    """Poll `condition` until it holds; generous, for a loaded machine."""
    end = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < end, "condition never held"
        time.sleep(0.02)


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
        _wait_for(lambda: len(pool._all) == 3 and not pool._idle)  # three helpers busy at once
        start = time.monotonic()
        assert pool.equal("Symbol('x')", "Symbol('x')", timeout_s=0.5) is None
        assert time.monotonic() - start < 0.5 + BOUND_S
    finally:
        pool.stop()  # the slow requests end as "cannot decide"
        for thread in threads:
            thread.join(timeout=120)
    assert results == [None, None, None]
    assert pool.equal("Symbol('x')*2", "Symbol('x')+Symbol('x')", timeout_s=120) is True
    pool.stop()

"""Time bounds: pathological answers return False quickly from any thread and in workers."""
import multiprocessing
import threading
import time

import pytest

from mathft_jax.grading import answer_key, extract_answer, is_equiv
from mathft_jax.grading.timeout import SympyHelper

BOUND_S = 2.0  # generous: the guards answer in milliseconds; CI machines are slow


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
        result["warm"] = helper.equal("Symbol('x')", "Symbol('x')")  # start-up is not timed
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

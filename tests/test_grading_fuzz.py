"""Fuzz: seeded hostile inputs (tests/hostile_answers.py) against the grader's promises.

The calls: extraction (strict and lenient), `normalize`, `answer_key`, `is_equiv`, and `grade`
with the lenient policy and with the `prm800k` grader.

Every call's own work (`deadline.work_time`: its thread's CPU time and its sympy steps' CPU
time) stays within the documented per-call bound plus a margin, it never raises, and equal
`answer_key`s imply `is_equiv`. The margin only absorbs one guarded step; the calls this used
to catch took 28-300 s. Verdicts that need sympy are the same serially, from 8 threads and
from spawned processes. Timing goals proper live in bench/grader_soak.py.
"""
import concurrent.futures
import multiprocessing
import pathlib
import threading
from unittest import mock

import pytest

import grader_probes
import hostile_answers
from mathft_jax.grading import (answer_key, deadline, equiv, extract, extract_answer, grade,
                                is_equiv, normalize, timeout, values, warm_up)
from waiting import HANG_LIMIT_S, finishes

SEED = 20261201
COUNT = 1200
MARGIN_S = 10.0
LIMIT_S = deadline.CALL_TIMEOUT_S + MARGIN_S


def check_pair(a: str, b: str) -> list[str]:
    """Problems found with the calls on one pair (an exception fails the test outright)."""
    problems = []
    calls = (("extract_answer", lambda: extract_answer(a)),
             ("extract_answer boxed", lambda: extract_answer(f"Steps.\n\\boxed{{{a}}}\n", True)),
             ("normalize", lambda: normalize(a)),
             ("answer_key a", lambda: answer_key(a)),
             ("answer_key b", lambda: answer_key(b)),
             ("is_equiv", lambda: is_equiv(a, b)),
             ("is_equiv reflexive", lambda: is_equiv(a, a)),
             ("extract_answer lenient", lambda: extract_answer(a, policy="lenient")),
             ("grade lenient", lambda: grade(a, b, policy="lenient")),
             ("grade prm800k", lambda: grade(f"\\boxed{{{a}}}", b, grader="prm800k")))
    results = {}
    for name, call in calls:
        start = deadline.work_time()
        results[name] = call()
        elapsed = deadline.work_time() - start
        if elapsed > LIMIT_S:
            problems.append(f"{name} worked {elapsed:.1f} s on {a[:60]!r} / {b[:60]!r}")
    if not isinstance(results["normalize"], str) or results["is_equiv reflexive"] is not True:
        problems.append(f"normalize or reflexivity on {a[:60]!r}")
    same_key = results["answer_key a"] == results["answer_key b"]
    if same_key and not (results["is_equiv"] and is_equiv(b, a)):
        problems.append(f"equal keys, not is_equiv: {a[:60]!r} / {b[:60]!r}")
    return problems


@pytest.mark.slow
def test_hostile_inputs_are_bounded_never_raise_and_keep_the_contract():
    pairs = hostile_answers.pairs(SEED, COUNT)
    assert len({a for a, _ in pairs}) >= 1000  # distinct hostile inputs
    warm_up()  # helper start-up is not the input's cost
    problems = [problem for a, b in pairs for problem in check_pair(a, b)]
    assert not problems, problems[:10]


def test_from_several_threads_at_once():
    pairs = hostile_answers.pairs(SEED + 1, 240, to_deadline=0)  # the soak bench has them
    problems, errors = [], []

    def run(part):
        try:
            problems.extend(p for a, b in part for p in check_pair(a, b))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(pairs[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=HANG_LIMIT_S)
    assert not any(t.is_alive() for t in threads) and not errors, errors
    assert not problems, problems[:10]


LOAD_BOUND_S = 1.0  # 8x the most work one of these pairs needs (0.12 s): a wait is what would cost


def _verdict(pair: tuple[str, str]) -> bool:
    return is_equiv(*pair, timeout_s=LOAD_BOUND_S)


@pytest.mark.slow
def test_verdicts_that_need_sympy_do_not_depend_on_load():
    """The deadline counts a call's own work, not its waits (for the GIL, a free helper, a
    core): 8 threads sharing 2 cores and 4 helpers, and 3 spawned processes, give the serial
    verdicts, under a bound of 1 s that the waits would pass. (Under a wall-clock deadline
    `(x+1)^2` against `x^2+2x+1` came back False from 8 threads.)"""
    pairs = hostile_answers.sympy_pairs(SEED)
    warm_up()
    serial, asked = [], []
    with grader_probes.sympy_requests() as requests:
        for pair in pairs:
            before = len(requests)
            serial.append(_verdict(pair))
            asked.append(len(requests) > before)
    assert all(asked) and len(set(pairs)) == len(pairs) == 36  # distinct, each needing sympy
    assert all(serial)  # equal pairs, shown equal: under threads they came back False
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(_verdict, pairs * 2))
    with multiprocessing.get_context("spawn").Pool(3, initializer=warm_up) as pool:
        processes = pool.map_async(_verdict, pairs, chunksize=4).get(HANG_LIMIT_S)
    assert threaded == serial * 2
    assert processes == serial


def test_no_injected_code_runs():
    marker = pathlib.Path("/tmp") / hostile_answers.MARKER
    marker.unlink(missing_ok=True)
    rng = __import__("random").Random(SEED)
    for _ in range(200):
        injected = hostile_answers.injections(rng)
        is_equiv(injected, "x+1")
        is_equiv(f"({injected})+x", "x+" + injected)
    assert not marker.exists()


def test_one_deadline_for_the_whole_call():
    """75 elements that each need a sympy step share the call's one deadline (each used to
    get its own, ~75 x 3 s): each step is granted what is left of it, and the call ends when
    it runs out. The clock is fake and the steps simulated, so this holds on any machine;
    the real helper's cut-off is tests/test_grading_timeouts.py's."""
    powers = [30 + i % 10 for i in range(75)]  # under values.MAX_EXPANDED_TERMS
    left = "(" + ", ".join(f"(2x+2y+2z+2)^{{{k}}}" for k in powers) + ")"
    right = "(" + ", ".join(f"2^{{{k}}}(x+y+z+1)^{{{k}}}" for k in powers) + ")"
    with grader_probes.fake_clock() as clock, \
            mock.patch.object(timeout, "DEFAULT_TIMEOUT_S", 3.0):  # a step's own cap: above 1 s
        def slow_yes(a, b, timeout_s):  # a step that takes 0.25 s and shows its pair equal
            clock.now += 0.25
            return True

        with grader_probes.sympy_requests(slow_yes) as requests, \
                grader_probes.deadline_expiries() as expired:
            assert is_equiv(left, right, timeout_s=1.0) is False  # out of time: not shown equal
        assert [t for _, _, t in requests] == [1.0, 0.75, 0.5, 0.25] and expired
        with grader_probes.sympy_requests(lambda *_: True) as requests:  # instant steps
            assert is_equiv(left, right, timeout_s=1.0) is True
        assert len(requests) == 75  # every element needs one


NESTED_POWERS = ("\\sin((2^{10000})^{1000})", "\\tan((10^{1000})^{1000})",
                 "\\exp((2^{10000})^{100})", "\\binom{(2^{10000})^{100}}{(2^{10000})^{50}}",
                 "((10^{100})!)!")


def test_nested_powers_stop_at_the_intermediate():
    """A size guard (TooBig at an intermediate) ends each of these, not the deadline: the
    clock stands still, so without the guards the calls would run to the hang limit."""
    for answer in NESTED_POWERS:
        with pytest.raises(values.TooBig):
            values.numeric_value(equiv._scalar_info(answer)[0], {})

    def compare_all():
        for answer in NESTED_POWERS:
            assert is_equiv(answer, "1") is False and is_equiv(answer, answer + " ") is True

    with grader_probes.fake_clock():
        finishes(compare_all)


def test_big_integers_compare_exactly_past_the_str_limit():
    assert is_equiv("10^{5000}", "10^{5000} ")
    assert answer_key("10^{5000}") == answer_key("(10^{10})^{500}")
    assert is_equiv("10^{5000}", "(10^{10})^{500}")
    assert not is_equiv("10^{5000}", "10^{5000}+1")
    assert is_equiv("\\{10^{5000}, 1\\}", "\\{1, (10^{10})^{500}\\}")
    warm_up()
    assert is_equiv("10^{5000}x", "(10^{10})^{500}x+0x^2")  # through sympy, integers in hex


def test_extraction_is_linear_on_unclosed_groups():
    """100 KB of unclosed groups: braces are matched in one pass per call (rescanning from
    every box took minutes on this input); the speed itself is bench/grader_soak.py's."""
    def extract_all():
        for command in ("\\boxed{", "\\fbox{"):
            text = command * 14285
            assert extract_answer(text) is None
            assert extract_answer(text + "\\boxed{7}") == "7"
            assert extract_answer("\\boxed{3}" + text) == "3"

    with mock.patch.object(extract, "_closing_braces", wraps=extract._closing_braces) as scans:
        finishes(extract_all)
    assert scans.call_count == 6  # one pass for each of the 6 calls

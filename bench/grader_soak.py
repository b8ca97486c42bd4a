"""Grader soak: the fuzz test's hostile set, serially, from 8 threads and from 8 processes.

    python bench/grader_soak.py [--pairs=1200] [--workers=8] [--out=bench/out/grader_soak.json]

Each pair (tests/hostile_answers.py, the seed of tests/test_grading_fuzz.py) makes five timed
calls: `extract_answer` on the input and on a solution boxing it, `answer_key` on both answers
and `is_equiv`. Reports, per mode, the maximum and p99 call time (wall) and work
(`deadline.work_time`: the call's CPU time and its sympy steps'), the calls whose work passed
the documented bound (`MATHFT_GRADE_TIMEOUT_S`, default 5 s) by more than 1 s, the throughput,
and how many `is_equiv` verdicts differ from the serial run's (the bound counts work, not
waits, so none should). Caches are cleared before each mode; processes are spawned and their
sympy helpers warmed up before the clock starts. Figures: docs/grading.md ("Soak").
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import platform
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # hostile_answers: one generator, test and bench

import hostile_answers  # noqa: E402
from warm_pool import warm_pool  # noqa: E402
from mathft_jax.grading import (answer_key, deadline, equiv, extract_answer, is_equiv,  # noqa: E402
                                warm_up)

SEED = 20261201  # tests/test_grading_fuzz.py


def timed_calls(pair: tuple[str, str]) -> tuple[list[float], list[float], bool]:
    """(wall seconds, work seconds) of each grading call on one pair, and its verdict."""
    a, b = pair
    walls, works, result = [], [], None
    for call in (lambda: extract_answer(a), lambda: extract_answer(f"Steps.\n\\boxed{{{a}}}\n"),
                 lambda: answer_key(a), lambda: answer_key(b), lambda: is_equiv(a, b)):
        start, start_work = time.perf_counter(), deadline.work_time()
        result = call()
        walls.append(time.perf_counter() - start)
        works.append(deadline.work_time() - start_work)
    return walls, works, result


def clear_caches() -> None:
    equiv._analyse.cache_clear()
    equiv._scalar_info.cache_clear()


def run_mode(name: str, pairs, workers: int, kind: str, serial_verdicts=None) -> dict:
    clear_caches()
    if kind == "serial":
        start = time.perf_counter()
        per_pair = [timed_calls(pair) for pair in pairs]
    elif kind == "threads":
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            warm_up(workers)  # one helper per thread, started before the clock
            start = time.perf_counter()
            per_pair = list(pool.map(timed_calls, pairs))
    else:
        with warm_pool(workers, warm_up) as pool:  # imports and helpers up before the clock
            start = time.perf_counter()
            per_pair = pool.map(timed_calls, pairs, chunksize=4)
    wall = time.perf_counter() - start
    times = sorted(t for walls, _, _ in per_pair for t in walls)
    works = sorted(t for _, row, _ in per_pair for t in row)
    verdicts = [verdict for _, _, verdict in per_pair]
    differing = [pair for pair, v, s in zip(pairs, verdicts, serial_verdicts or verdicts) if v != s]
    return {"mode": name, "calls": len(times), "wall_s": wall, "calls_per_s": len(times) / wall,
            "pairs_per_s": len(pairs) / wall, "max_call_s": times[-1],
            "p99_call_s": times[int(0.99 * (len(times) - 1))], "max_work_s": works[-1],
            "work_over_bound_plus_1s": sum(t > deadline.CALL_TIMEOUT_S + 1 for t in works),
            "verdicts_differing_from_serial": len(differing),
            "differing_examples": [(a[:80], b[:80]) for a, b in differing[:5]],
            "verdicts": verdicts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1200)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "grader_soak.json"))
    args = parser.parse_args()
    pairs = hostile_answers.pairs(SEED, args.pairs)
    warm_up()
    rows = [run_mode("serial", pairs, 1, "serial")]
    serial = rows[0]["verdicts"]
    rows += [run_mode(f"{args.workers} threads", pairs, args.workers, "threads", serial),
             run_mode(f"{args.workers} processes", pairs, args.workers, "processes", serial)]
    print(f"bound {deadline.CALL_TIMEOUT_S:g} s of work, {len(pairs)} pairs, "
          f"{os.cpu_count()} CPUs\n")
    print("| mode | calls | wall s | calls/s | vs serial | max call s | p99 call s | max work s "
          "| work over bound + 1 s | verdicts unlike serial |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        row["speedup_vs_serial"] = row["calls_per_s"] / rows[0]["calls_per_s"]
        print(f"| {row['mode']} | {row['calls']} | {row['wall_s']:.1f} | "
              f"{row['calls_per_s']:.0f} | {row['speedup_vs_serial']:.2f}x | "
              f"{row['max_call_s']:.2f} | {row['p99_call_s']:.3f} | {row['max_work_s']:.2f} | "
              f"{row['work_over_bound_plus_1s']} | {row['verdicts_differing_from_serial']} |")
    for row in rows:
        del row["verdicts"]
    report = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "date": time.strftime("%Y-%m-%d", time.gmtime()),
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpu_count": os.cpu_count(), "processor": platform.processor()},
              "bound_s": deadline.CALL_TIMEOUT_S, "modes": rows}
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

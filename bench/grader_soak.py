"""Grader soak: the fuzz test's hostile set, serially, from 8 threads and from 8 processes.

    python bench/grader_soak.py [--pairs=1200] [--workers=8] [--out=bench/out/grader_soak.json]

Each pair (tests/hostile_answers.py, the seed of tests/test_grading_fuzz.py) makes five timed
calls: `extract_answer` on the input and on a solution boxing it, `answer_key` on both answers
and `is_equiv`. Reports, per mode, the maximum and p99 call time, the calls over the documented
bound (`MATHFT_GRADE_TIMEOUT_S`, default 5 s) and the throughput. Caches are cleared before each
mode; processes are spawned and their sympy helpers warmed up before the clock starts.

Measured 2026-12-01 on the 2-core Xeon container (shared with other jobs), Python 3.11,
sympy 1.14, mpmath 1.3, bound 5 s: see docs/grading.md ("Soak") for the table.
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


def timed_calls(pair: tuple[str, str]) -> list[float]:
    """Seconds taken by each grading call on one pair."""
    a, b = pair
    times = []
    for call in (lambda: extract_answer(a), lambda: extract_answer(f"Steps.\n\\boxed{{{a}}}\n"),
                 lambda: answer_key(a), lambda: answer_key(b), lambda: is_equiv(a, b)):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def clear_caches() -> None:
    equiv._analyse.cache_clear()
    equiv._scalar_info.cache_clear()


def run_mode(name: str, pairs, workers: int, kind: str) -> dict:
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
    times = sorted(t for row in per_pair for t in row)
    return {"mode": name, "calls": len(times), "wall_s": wall, "calls_per_s": len(times) / wall,
            "pairs_per_s": len(pairs) / wall, "max_call_s": times[-1],
            "p99_call_s": times[int(0.99 * (len(times) - 1))],
            "calls_over_bound_plus_1s": sum(t > deadline.CALL_TIMEOUT_S + 1 for t in times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1200)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "grader_soak.json"))
    args = parser.parse_args()
    pairs = hostile_answers.pairs(SEED, args.pairs)
    warm_up()
    rows = [run_mode("serial", pairs, 1, "serial"),
            run_mode(f"{args.workers} threads", pairs, args.workers, "threads"),
            run_mode(f"{args.workers} processes", pairs, args.workers, "processes")]
    print(f"bound {deadline.CALL_TIMEOUT_S:g} s, {len(pairs)} pairs, {os.cpu_count()} CPUs\n")
    print("| mode | calls | wall s | calls/s | vs serial | max call s | p99 call s "
          "| over bound + 1 s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        row["speedup_vs_serial"] = row["calls_per_s"] / rows[0]["calls_per_s"]
        print(f"| {row['mode']} | {row['calls']} | {row['wall_s']:.1f} | "
              f"{row['calls_per_s']:.0f} | "
              f"{row['speedup_vs_serial']:.2f}x | "
              f"{row['max_call_s']:.2f} | {row['p99_call_s']:.3f} | "
              f"{row['calls_over_bound_plus_1s']} |")
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

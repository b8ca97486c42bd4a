"""Pass@1 of one candidates file minus another's, paired over the problems both hold.

    python bench/paired_pass_at_1.py A.jsonl B.jsonl [--grader=mathft] [--policy=strict]

Each problem keeps both pass rates; the 95% interval is a seeded percentile bootstrap over
problems (`voting.bootstrap_ci`), so it covers the test set (which problems, and their
sampled solutions), not training's randomness. `bench/replicate.py` uses it for GRPO
against the control per seed; on its own it compares, say, two checkpoints' samples of the
same problems (`python -m mathft_jax.infer` with the same seed draws the same rng streams
for the first problems at any `infer.max_problems`).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


@functools.lru_cache(maxsize=None)
def pass_rates(path: str, policy: str | None = None, grader: str = "mathft") -> dict:
    """{problem_id: pass rate} of a candidates file, graded by `grader` (answers as
    recorded, or extracted again under `policy`)."""
    from mathft_jax.results import candidates, voting
    records = candidates.read_candidates(path)
    graded = (voting.grade_problem(r, policy, grader) for r in records)
    return {r["problem_id"]: float(np.mean(g.correct)) for r, g in zip(records, graded)}


def paired_difference(a: dict, b: dict) -> tuple:
    """(mean of a - b, low, high, problems) in points over the problem ids both hold."""
    from mathft_jax.results import voting
    shared = sorted(a.keys() & b.keys())
    if not shared:
        raise SystemExit("the two files share no problem_id")
    diffs = [100 * (a[p] - b[p]) for p in shared]
    low, high = voting.bootstrap_ci(diffs)
    return float(np.mean(diffs)), low, high, len(shared)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--grader", default="mathft")
    p.add_argument("--policy", default=None)
    args = p.parse_args()
    for path in (args.a, args.b):
        if not os.path.isfile(path):
            raise SystemExit(f"{path}: no such file")
    a, b = (pass_rates(path, args.policy, args.grader) for path in (args.a, args.b))
    diff, low, high, n = paired_difference(a, b)
    print(f"Pass@1 {100 * np.mean([a[p] for p in a if p in b]):.1f} - "
          f"{100 * np.mean([b[p] for p in b if p in a]):.1f} = {diff:+.1f} "
          f"[{low:+.1f}, {high:+.1f}] points over {n} problems (paired bootstrap, 95%)")


if __name__ == "__main__":
    main()

"""Grader bench: ours against math-verify on the labelled pairs, and 500 x 64 clustering.

    python bench/grader.py [--out=bench/out/grader.json] [--processes=2]

1. Accuracy and pairs/s of `is_equiv` and of math-verify's `verify(parse(a), parse(b))` on
   tests/data/equiv_pairs.tsv (caches cleared before each timed pass; both warmed up first).
2. Time to grade and cluster 500 problems x 64 candidates built at run time from the MATH500
   gold answers (read from MATHFT_DATA_DIR or ../shared/data): rewrites of the gold answer,
   plausible wrong answers and missing answers; serially and over a process pool.
Goals (docs/grading.md): >= 10x math-verify's pairs/s at no less accuracy; 500 x 64 in <= 30 s
on 2 cores. Prints a table and writes JSON with the machine and the command.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import random
import re
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mathft_jax import evaluate, voting  # noqa: E402
from mathft_jax.data.paths import math_splits_dir  # noqa: E402
from mathft_jax.grading import equiv, is_equiv  # noqa: E402

PAIRS = REPO / "tests" / "data" / "equiv_pairs.tsv"


def load_pairs() -> list[tuple[str, str, bool]]:
    rows = [line.split("\t") for line in PAIRS.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]
    return [(a, b, label == "1") for _, label, a, b in rows]


def clear_caches() -> None:
    equiv._analyse.cache_clear()
    equiv._scalar_info.cache_clear()


def run_grader(name: str, grade, pairs, repeats: int = 3) -> dict:
    grade(pairs[0][0], pairs[0][1])  # warm-up: imports, helper process
    best, verdicts = float("inf"), []
    for _ in range(repeats):
        clear_caches()
        start = time.perf_counter()
        verdicts = [grade(a, b) for a, b, _ in pairs]
        best = min(best, time.perf_counter() - start)
    correct = sum(v == label for v, (_, _, label) in zip(verdicts, pairs))
    wrong = [(a, b, label) for v, (a, b, label) in zip(verdicts, pairs) if v != label]
    return {"grader": name, "pairs": len(pairs), "accuracy": correct / len(pairs),
            "pairs_per_s": len(pairs) / best, "seconds": best, "wrong_examples": wrong[:15]}


def math_verify_grader():
    from math_verify import parse, verify

    def grade(a: str, b: str) -> bool:
        try:
            return bool(verify(parse(f"${a}$"), parse(f"${b}$")))
        except Exception:  # noqa: BLE001 - count a crash as "not equivalent"
            return False
    return grade


# -- 500 x 64 candidates from MATH500 gold answers
def _rewrites(gold: str) -> list[str]:
    forms = [gold, f"${gold}$", gold.replace(" ", ""), gold.replace("\\frac", "\\dfrac"),
             re.sub(r",\s*", ", ", gold), f"\\boxed{{{gold}}}"]
    simple = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", gold)
    if simple:
        forms.append(f"{simple.group(1)}{simple.group(2)}/{simple.group(3)}")
    if re.fullmatch(r"-?\d+", gold):
        forms += [f"{gold}.0", f"x = {gold}", f"{gold}\\text{{ units}}"]
    if gold.startswith("("):
        forms.append(f"\\left{gold[0]}{gold[1:-1]}\\right{gold[-1]}")
    return forms


def _wrong(gold: str, rng: random.Random, golds: list[str]) -> str:
    choice = rng.randrange(4)
    digits = [m.start() for m in re.finditer(r"\d", gold)]
    if choice == 0 and digits:
        pos = rng.choice(digits)
        return gold[:pos] + str((int(gold[pos]) + rng.randrange(1, 10)) % 10) + gold[pos + 1:]
    if choice == 1:
        return f"-{gold}" if not gold.startswith("-") else gold[1:]
    if choice == 2:
        return f"{gold}+{rng.randrange(1, 5)}"
    return rng.choice(golds)


def build_candidates(golds: list[str], per_problem: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for index, gold in enumerate(golds):
        wrong_pool = [_wrong(gold, rng, golds) for _ in range(rng.randrange(2, 12))]
        samples = []
        for _ in range(per_problem):
            roll = rng.random()
            answer = (rng.choice(_rewrites(gold)) if roll < 0.5 else
                      rng.choice(wrong_pool) if roll < 0.95 else None)
            samples.append({"text": "", "answer": answer, "score": rng.random()})
        records.append({"problem_id": str(index), "problem": "", "gold": gold, "samples": samples})
    return records


def load_math500_golds() -> list[str]:
    path = math_splits_dir() / "test.jsonl"  # MATHFT_DATA_DIR, else ../shared/data
    return [json.loads(line)["answer"] for line in path.read_text(encoding="utf-8").splitlines()]


def bench_clustering(processes: int, per_problem: int = 64) -> dict:
    records = build_candidates(load_math500_golds(), per_problem)
    clear_caches()
    start = time.perf_counter()
    for record in records:
        voting.cluster([s["answer"] for s in record["samples"]])
    serial = time.perf_counter() - start
    start = time.perf_counter()
    result = evaluate.evaluate_records(records, k=8, processes=processes, progress=False)
    pooled = time.perf_counter() - start
    return {"problems": len(records), "candidates_per_problem": per_problem,
            "cluster_only_1_process_s": serial,
            f"grade_cluster_metrics_{processes}_processes_s": pooled,
            "maj1_at_n": result["metrics"]["maj1_at_n"]["value"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "grader.json"))
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    pairs = load_pairs()
    ours = run_grader("mathft_jax is_equiv", is_equiv, pairs)
    theirs = run_grader("math-verify", math_verify_grader(), pairs, repeats=1)
    clustering = bench_clustering(args.processes)
    print("| grader | accuracy | pairs/s |\n| --- | ---: | ---: |")
    for row in (ours, theirs):
        print(f"| {row['grader']} | {100 * row['accuracy']:.2f}% | {row['pairs_per_s']:.0f} |")
    print(f"\nspeed-up: {ours['pairs_per_s'] / theirs['pairs_per_s']:.1f}x")
    print(json.dumps(clustering, indent=2))
    report = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpu_count": os.cpu_count(), "processor": platform.processor()},
              "pairs": [ours, theirs], "speedup": ours["pairs_per_s"] / theirs["pairs_per_s"],
              "clustering": clustering}
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

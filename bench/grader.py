"""Grader bench: our graders against math-verify on the labelled pairs and on the forms models
and benchmarks write, the six benchmarks' gold answers, and 500 x 64 clustering.

    python bench/grader.py [--out=bench/out/grader.json] [--processes=2] [--workers=8]
                           [--sections=pairs,forms,golds,clustering]

1. Accuracy and pairs/s on tests/data/equiv_pairs.tsv, from 1 process and from `--workers`
   spawned processes, of: mathft strict (`is_equiv`; `grade(..., policy="strict")` on the
   lenient rows, whose column a is a whole solution), mathft lenient, prm800k, and math-verify
   (`verify(parse($gold$), parse(x))`, x = `$a$` or the whole solution; in-process, as its
   users call it). Accuracy is reported on the equivalence rows and on the lenient rows apart.
   Caches are cleared before each timed pass; everything is warmed up first.
2. Time to grade and cluster 500 problems x 64 candidates built at run time from the MATH500
   gold answers (read from MATHFT_DATA_DIR or ../shared/data): rewrites of the gold answer,
   plausible wrong answers and missing answers; serially and over a process pool.
3. Forms (tests/data/form_pairs.tsv): accuracy per family (decimal commas, percent words,
   ASCII relations, negated inequalities, chains, rearranged equations, matrix environments,
   rounded decimals, the last sentence of free text) of mathft strict, mathft lenient and
   math-verify (`$answer$`, or the whole text).
4. Gold answers of the six benchmarks (math500, gsm8k, aime24, amc23, minerva_math,
   olympiadbench), each as written and re-rendered (tests/gold_forms.py), boxed in a sentence
   and graded against the gold through `candidates.grade_sample` (lists and tolerances as the
   records give them): how many each grader finds correct, and the time to grade them all.
Goals (docs/grading.md): >= 10x math-verify's pairs/s at no less accuracy (also on the lenient
rows and the forms); 500 x 64 in <= 30 s on 2 cores; the six benchmarks' gold answers in
seconds. Prints tables and writes JSON with the machine and the command. math-verify comes
with the `bench` (or `graders`) extra.
"""
from __future__ import annotations

import argparse
import importlib.util
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
sys.path.insert(0, str(REPO / "tests"))  # form_pairs, gold_forms: one copy, tests and bench

import form_pairs  # noqa: E402
from gold_forms import gold_forms  # noqa: E402
from warm_pool import warm_pool  # noqa: E402

from mathft_jax import evaluate  # noqa: E402
from mathft_jax.data import sources  # noqa: E402
from mathft_jax.results import candidates, voting  # noqa: E402
from mathft_jax.data.paths import math_splits_dir  # noqa: E402
from mathft_jax.grading import equiv, grade, is_equiv, warm_up  # noqa: E402

PAIRS = REPO / "tests" / "data" / "equiv_pairs.tsv"


def load_pairs() -> list[tuple[str, str, str, bool]]:
    """(category, a, b, label); in `lenient-*` rows a is a whole solution (⏎: a line break)."""
    rows = [line.split("\t") for line in PAIRS.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]
    return [(category, a.replace("⏎", "\n"), b, label == "1") for category, label, a, b in rows]


def clear_caches() -> None:
    equiv._analyse.cache_clear()
    equiv._scalar_info.cache_clear()


def _ours(policy: str, grader: str):
    def judge(category: str, a: str, b: str) -> bool:
        if category.startswith("lenient"):
            return grade(a, b, policy=policy, grader=grader).correct
        if grader == "mathft":
            return is_equiv(a, b)
        return grade(None, b, grader=grader, answer=a).correct
    return judge


def _math_verify(category: str, a: str, b: str) -> bool:
    from math_verify import parse, verify
    try:
        target = a if category.startswith("lenient") else f"${a}$"
        return bool(verify(parse(f"${b}$"), parse(target)))
    except Exception:  # noqa: BLE001 - count a crash as "not equivalent"
        return False


GRADERS = {"mathft strict": _ours("strict", "mathft"), "mathft lenient": _ours("lenient", "mathft"),
           "prm800k": _ours("strict", "prm800k")}
if importlib.util.find_spec("math_verify") is not None:  # the `bench` or `graders` extra
    GRADERS["math-verify"] = _math_verify


def _judge_chunk(args) -> list[bool]:
    name, chunk = args
    clear_caches()
    return [GRADERS[name](category, a, b) for category, a, b, _ in chunk]


def _worker_init(sample) -> None:
    """Imports, the sympy helper and first-call costs, before any timed task."""
    warm_up()
    for name in GRADERS:
        _judge_chunk((name, sample))


def run_grader(name: str, pairs, workers: int, repeats: int = 3) -> dict:
    """Best of `repeats` serial passes; then, over `workers` warmed-up processes, the best of
    `repeats` rounds of `workers` whole passes at once (one per task, caches cleared per task),
    or, where one pass is slow (repeats == 1), one pass split into `workers` slices."""
    judge = GRADERS[name]
    _worker_init(pairs[::25])  # the same warm-up as the workers get
    best, verdicts = float("inf"), []
    for _ in range(repeats):
        clear_caches()
        start = time.perf_counter()
        verdicts = [judge(category, a, b) for category, a, b, _ in pairs]
        best = min(best, time.perf_counter() - start)
    passes = workers if repeats > 1 else 1
    tasks = ([(name, pairs)] * workers if repeats > 1 else
             [(name, pairs[i::workers]) for i in range(workers)])
    parallel = float("inf")
    with warm_pool(workers, _worker_init, (pairs[::25],)) as pool:
        for _ in range(repeats):  # best round, as for the serial passes (first calls cost more)
            start = time.perf_counter()
            pool.map(_judge_chunk, tasks, chunksize=1)
            parallel = min(parallel, (time.perf_counter() - start) / passes)
    lenient = [(v, p) for v, p in zip(verdicts, pairs) if p[0].startswith("lenient")]
    plain = [(v, p) for v, p in zip(verdicts, pairs) if not p[0].startswith("lenient")]
    wrong = [(a, b, label) for v, (_, a, b, label) in zip(verdicts, pairs) if v != label]
    return {"grader": name, "pairs": len(pairs),
            "accuracy_equivalence": sum(v == p[3] for v, p in plain) / len(plain),
            "accuracy_lenient": sum(v == p[3] for v, p in lenient) / len(lenient),
            "accuracy": sum(v == p[3] for v, p in zip(verdicts, pairs)) / len(pairs),
            "pairs_per_s_1_process": len(pairs) / best,
            f"pairs_per_s_{workers}_processes": len(pairs) / parallel,
            "wrong_examples": wrong[:15]}


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


# -- forms by family, and the benchmarks' gold answers
def _math_verify_text(gold: str, target: str) -> bool:
    """math-verify as its users call it: `verify(parse($gold$), parse(target))`."""
    from math_verify import parse, verify
    try:
        return bool(verify(parse(f"${gold}$"), parse(target)))
    except Exception:  # noqa: BLE001 - count a crash as "not equivalent"
        return False


FORM_JUDGES = {
    "mathft strict": lambda p: (grade(p.answer, p.gold).correct if p.kind == "text"
                                else is_equiv(p.answer, p.gold)),
    "mathft lenient": lambda p: (grade(p.answer, p.gold, policy="lenient").correct
                                 if p.kind == "text" else is_equiv(p.answer, p.gold)),
    "math-verify": lambda p: _math_verify_text(p.gold, p.answer if p.kind == "text"
                                               else f"${p.answer}$"),
}


def bench_forms() -> dict:
    """Accuracy per family and overall, and pairs/s, of each grader on the labelled forms."""
    pairs = form_pairs.load()
    families = sorted({p.family for p in pairs})
    result = {}
    for name, judge in FORM_JUDGES.items():
        if name == "math-verify" and "math-verify" not in GRADERS:
            continue
        clear_caches()
        start = time.perf_counter()
        right = [judge(p) == p.correct for p in pairs]
        elapsed = time.perf_counter() - start
        result[name] = {"accuracy": sum(right) / len(pairs), "pairs_per_s": len(pairs) / elapsed,
                        "by_family": {f: sum(r for r, p in zip(right, pairs) if p.family == f) /
                                      sum(p.family == f for p in pairs) for f in families},
                        "wrong": [(p.family, p.answer, p.gold, p.correct)
                                  for r, p in zip(right, pairs) if not r]}
    return result


BENCHMARKS = ("math500", "gsm8k", "aime24", "amc23", "minerva_math", "olympiadbench")


def _gold_samples() -> dict[str, list[tuple[dict, dict]]]:
    """benchmark -> (record, sample) for every gold form, boxed at the end of a sentence."""
    return {name: [(record, {"text": f"So the answer is $\\boxed{{{form}}}$."})
                   for record in sources.problem_records(name, "test")
                   for form in gold_forms(record["gold"], name)] for name in BENCHMARKS}


def bench_golds(math_verify_too: bool) -> dict:
    """Per benchmark: forms graded correct by ours (grade_sample, as the pipeline grades) and
    by math-verify, and the seconds each took (one process, caches cleared)."""
    result = {}
    for name, samples in _gold_samples().items():
        row = {"golds": len({r["problem_id"] for r, _ in samples}), "forms": len(samples)}
        judges = {"mathft": lambda r, s: candidates.grade_sample(
            s, r["gold"], tolerance=candidates.record_tolerance(r))}
        if math_verify_too:
            judges["math-verify"] = lambda r, s: _math_verify_text(
                r["gold"] if isinstance(r["gold"], str) else ", ".join(r["gold"]), s["text"])
        for grader, judge in judges.items():
            clear_caches()
            start = time.perf_counter()
            verdicts = [judge(record, sample) for record, sample in samples]
            row[grader] = {"correct": sum(verdicts), "seconds": time.perf_counter() - start,
                           "self_correct": sum(v for v, (r, s) in zip(verdicts, samples)
                                               if s["text"].endswith(f"{{{r['gold']}}}$."))}
        result[name] = row
    result["all"] = {key: sum(row[key] for row in result.values()) for key in ("golds", "forms")}
    for grader in ("mathft", "math-verify"):
        if grader in result["math500"]:
            result["all"][grader] = {"correct": sum(r[grader]["correct"] for n, r in result.items()
                                                    if n != "all"),
                                     "seconds": sum(r[grader]["seconds"] for n, r in result.items()
                                                    if n != "all")}
    return result


def print_forms(forms: dict) -> None:
    graders = list(forms)
    print("| family | " + " | ".join(graders) + " |\n| --- |" + " ---: |" * len(graders))
    for family in next(iter(forms.values()))["by_family"]:
        print(f"| {family} | " + " | ".join(f"{100 * forms[g]['by_family'][family]:.0f}%"
                                           for g in graders) + " |")
    print("| all | " + " | ".join(f"{100 * forms[g]['accuracy']:.1f}%" for g in graders) + " |")
    print("| pairs/s | " + " | ".join(f"{forms[g]['pairs_per_s']:.0f}" for g in graders) + " |")


def print_golds(golds: dict) -> None:
    graders = [g for g in ("mathft", "math-verify") if g in golds["math500"]]
    print("| benchmark | golds | forms | " + " | ".join(f"{g} correct | {g} s" for g in graders)
          + " |\n| --- | ---: | ---: |" + " ---: | ---: |" * len(graders))
    for name, row in golds.items():
        cells = [f"{row[g]['correct']} ({100 * row[g]['correct'] / row['forms']:.1f}%) | "
                 f"{row[g]['seconds']:.2f}" for g in graders]
        print(f"| {name} | {row['golds']} | {row['forms']} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "grader.json"))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--sections", default="pairs,forms,golds,clustering")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    warm_up()
    report = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "date": time.strftime("%Y-%m-%d", time.gmtime()),
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpu_count": os.cpu_count(), "processor": platform.processor()}}
    if "forms" in sections:
        report["forms"] = bench_forms()
        print_forms(report["forms"])
    if "golds" in sections:
        report["golds"] = bench_golds("math-verify" in GRADERS)
        print_golds(report["golds"])
    if "pairs" in sections or "clustering" in sections:
        report.update(bench_pairs_and_clustering(args, sections))
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


def bench_pairs_and_clustering(args, sections: set) -> dict:
    pairs = load_pairs()
    rows = [run_grader(name, pairs, args.workers, repeats=1 if name == "math-verify" else 5)
            for name in GRADERS] if "pairs" in sections else []
    clustering = bench_clustering(args.processes) if "clustering" in sections else None
    theirs = next((row for row in rows if row["grader"] == "math-verify"), None)
    if theirs is None:
        print("math-verify is not installed (pip install -e '.[bench]'): ours only")
    per_s = f"pairs_per_s_{args.workers}_processes"
    print(f"| grader | equivalence rows | lenient rows | pairs/s, 1 process | "
          f"pairs/s, {args.workers} processes |\n| --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['grader']} | {100 * row['accuracy_equivalence']:.2f}% | "
              f"{100 * row['accuracy_lenient']:.2f}% | {row['pairs_per_s_1_process']:.0f} | "
              f"{row[per_s]:.0f} |")
    speedups = {row["grader"]: row["pairs_per_s_1_process"] / theirs["pairs_per_s_1_process"]
                for row in rows if row is not theirs} if theirs else {}
    print(f"\nspeed-up over math-verify (1 process): "
          + ", ".join(f"{name} {value:.1f}x" for name, value in speedups.items()))
    print(json.dumps(clustering, indent=2))
    return {"pairs": rows, "speedup": speedups, "clustering": clustering}


if __name__ == "__main__":
    main()

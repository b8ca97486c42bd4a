"""Evaluate a candidates file: grade, cluster, and report the paper's metrics with 95% CIs,
the evaluator's diagnostics and the baselines it must beat (mathft_jax/results/diagnostics.py).

    python -m mathft_jax.evaluate --candidates=FILE [--k=8] [--out=JSON] [--skip_bad_lines]
                                  [--plot=PNG]

Grading and clustering run in a process pool over all cores; the printed markdown table and
the JSON are deterministic (seeded bootstrap, ordered pool map).

Errors are one line on stderr (mathft_jax/core/cli_errors.py; `--debug` adds the traceback) and
write nothing: exit 2 for a usage error (a missing --candidates, a path that is missing or a
directory, --k or --processes below 1), exit 1 for bad data (an empty file, a line that is
not UTF-8, not JSON or breaks the schema, a negative score: FILE:LINE in the message).
"""
from __future__ import annotations

if __name__ == "__main__":  # run the package module once (see mathft_jax/core/entry.py)
    from mathft_jax.core.entry import run_module
    run_module("mathft_jax.evaluate")


import functools
import json
import os
from collections.abc import Sequence

from absl import flags, logging

from mathft_jax import grading
from mathft_jax.core import atomic, storage
from mathft_jax.results import diagnostics, voting
from mathft_jax.grading import agreement
from mathft_jax.results.candidates import CandidatesError, read_candidates_report
from mathft_jax.core.cli_errors import DataError, UsageError
from mathft_jax.core.pool import parallel_map

BOOTSTRAP_RESAMPLES = 1000


def grade_records(records: list[dict], processes: int | None = None, progress: bool = True,
                  policy: str | None = None, grader: str = "mathft") -> list[voting.GradedProblem]:
    """Grade and cluster every problem once, in a process pool over all cores."""
    grade = functools.partial(voting.grade_problem, policy=policy, grader=grader)
    return parallel_map(grade, records, processes, "grading", progress, grading.warm_up)


def grading_info(records: list[dict], policy: str | None, grader: str) -> dict:
    """What graded the metrics: the grader and its version, and the extraction policy (the
    candidates file's own, recorded by infer, unless a policy re-extracted the answers)."""
    recorded = sorted({r.get("extraction_policy", "strict") for r in records})
    return {"grader": grader, "version": grading.GRADERS[grader].version(),
            "policy": policy or "/".join(recorded), "re_extracted": policy is not None}


def recorded_policy(records: list[dict]) -> str:
    """The extraction policy the records' answers were read with (infer records it), where
    they share one; else strict."""
    found = {r.get("extraction_policy", "strict") for r in records}
    return found.pop() if len(found) == 1 else "strict"


def summarize_problems(problems: list[voting.GradedProblem], k: int = 8,
                       n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """{"k", "n_problems", "n_samples", "metrics": {name: {value, ci_low, ci_high, n_problems}}}.
    Warns where K is at least every problem's samples: MajK@N and RR.Top-K then keep every
    cluster (there are at most N), so they say nothing that their K means."""
    sizes = [len(problem.correct) for problem in problems]
    if sizes and k >= max(sizes):
        logging.warning("K=%d is not below the %d samples of any problem: MajK@N and RR.Top-K "
                        "keep every cluster (RR.Top-K is RR.All)", k, max(sizes))
    return {
        "k": k,
        "n_problems": len(problems),
        "n_samples": {"total": sum(sizes), "min": min(sizes, default=0), "max": max(sizes, default=0)},
        "bootstrap": {"resamples": n_resamples, "seed": seed, "level": 0.95},
        "metrics": voting.evaluate_problems(problems, k, n_resamples, seed),
        "diagnostics": diagnostics.summarize(problems, k, n_resamples, seed),
    }


def evaluate_records(records: list[dict], k: int = 8, processes: int | None = None,
                     n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                     progress: bool = True, policy: str | None = None,
                     grader: str = "mathft") -> dict:
    """`summarize_problems` of `grade_records`, and what graded them."""
    problems = grade_records(records, processes, progress, policy, grader)
    return {**summarize_problems(problems, k, n_resamples, seed),
            "grading": grading_info(records, policy, grader)}


def markdown_table(result: dict) -> str:
    """One row per metric: value and 95% interval in percent, and the problems counted."""
    rows = ["| metric | value (%) | 95% CI (%) | problems |", "| --- | ---: | ---: | ---: |"]
    for name, entry in result["metrics"].items():
        label = voting.metric_label(name, result["k"])
        if entry["value"] is None:
            rows.append(f"| {label} | n/a | n/a (no scores) | 0 |")
        else:
            rows.append(f"| {label} | {100 * entry['value']:.2f} | "
                        f"[{100 * entry['ci_low']:.2f}, {100 * entry['ci_high']:.2f}] | {entry['n_problems']} |")
    return "\n".join(rows)


def evaluate_file(path: str, k: int = 8, skip_bad_lines: bool = False, processes: int | None = None,
                  progress: bool = True, policy: str | None = None, grader: str = "mathft",
                  compare_graders: tuple = ()) -> dict:
    """`evaluate_records` over a candidates file, with its skipped lines reported. With
    `compare_graders`, also each metric under each of them and how often they agree
    (`result["comparison"]`; its disagreements under `result["disagreements"]`)."""
    records, bad = read_candidates_report(path, skip_bad_lines)
    if not records:  # a table of n/a would look like a result
        why = f"all {len(bad)} non-blank lines were bad" if bad else "empty file"
        raise CandidatesError(f"{path}: no candidates records ({why})")
    result = {"candidates": path}
    result |= evaluate_records(records, k, processes, progress=progress, policy=policy,
                               grader=grader)
    result["skipped_lines"] = {"count": len(bad), "lines": [[b.line, b.reason] for b in bad]}
    if compare_graders:
        result["comparison"], result["disagreements"] = compare_graders_on(
            records, compare_graders, k, processes, progress, policy)
    return result


def compare_graders_on(records: list[dict], graders: Sequence[str], k: int = 8,
                       processes: int | None = None, progress: bool = True,
                       policy: str | None = None) -> tuple[dict, list[dict]]:
    """(summary, disagreements): how often `graders` agree on every sample, and each metric
    under each of them (`summary["metrics"][grader]`). Answers are read as the metrics read
    them: under `policy`, else the policy the records were sampled with."""
    summary, disagreements = agreement.agreement_report(records, list(graders),
                                                        policy or recorded_policy(records))
    summary["metrics"] = {name: evaluate_records(records, k, processes, progress=progress,
                                                 policy=policy, grader=name)["metrics"]
                          for name in graders}
    return summary, disagreements


_CANDIDATES = flags.DEFINE_string("candidates", None, "Candidates JSON-lines file (required).")
_K = flags.DEFINE_integer("k", 8, "K for the top-K cluster metrics (the paper: 8 of N=64).",
                          lower_bound=1)
_OUT = flags.DEFINE_string("out", None, "Where to write the JSON (default: FILE.metrics.json).")
_SKIP = flags.DEFINE_bool("skip_bad_lines", False, "Skip and count malformed lines instead of failing.")
_PROCESSES = flags.DEFINE_integer("processes", None, "Worker processes (default: all cores).",
                                  lower_bound=1)
_PLOT = flags.DEFINE_string("plot", None, "Also draw the evaluator's reliability diagram and "
                            "score histograms (scored candidates) to this PNG.")
_GRADER = flags.DEFINE_string("grader", "mathft", "Who judges an answer against the gold one: "
                              "mathft, prm800k or math_verify (extra [graders]); docs/grading.md.")
_POLICY = flags.DEFINE_string("policy", None, "Extract every answer again from its text under "
                              "this policy (strict | lenient); default: the recorded answers.")
_COMPARE = flags.DEFINE_list("compare_graders", [], "Graders to compare (e.g. mathft,math_verify): "
                             "each metric under each, their agreement, and the disagreements "
                             "in FILE.disagreements.jsonl.")


def check_grading(grader: str, policy: str | None, compare: Sequence[str]) -> None:
    """Usage errors for --grader, --policy and --compare_graders, before any work."""
    for name in [grader, *compare]:
        try:
            grading.get_grader(name)
        except ValueError as error:
            raise UsageError(f"--grader/--compare_graders: {error}") from None
    if policy is not None and policy not in grading.POLICIES:
        raise UsageError(f"--policy={policy}: expected one of {', '.join(grading.POLICIES)}")
    if compare and len(compare) < 2:
        raise UsageError("--compare_graders needs at least two graders")


def comparison_table(comparison: dict, k: int) -> str:
    """Agreement of the compared graders, then each metric under each of them (percent)."""
    names = comparison["graders"]
    rows = [f"graders agree on {comparison['agree']} of {comparison['samples']} samples",
            "", "| metric | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for metric in voting.METRICS:
        values = [comparison["metrics"][n][metric]["value"] for n in names]
        rows.append(f"| {voting.metric_label(metric, k)} | " + " | ".join(
            "n/a" if v is None else f"{100 * v:.2f}" for v in values) + " |")
    return "\n".join(rows)


def check_paths(candidates: str | None, out: str, plot: str | None = None) -> None:
    """Usage errors, before any work: the input must be a file, the output not a directory."""
    if not candidates:
        raise UsageError("--candidates=FILE is required")
    if not storage.exists(candidates):  # local or gs://
        raise UsageError(f"--candidates={candidates}: no such file")
    if storage.path(candidates).is_dir():
        raise UsageError(f"--candidates={candidates}: is a directory, not a candidates file")
    if storage.path(out).is_dir():
        raise UsageError(f"--out={out}: is a directory")
    if plot and storage.path(plot).is_dir():
        raise UsageError(f"--plot={plot}: is a directory")


def main(argv) -> None:
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
    path = _CANDIDATES.value
    out = _OUT.value or os.path.splitext(path or "")[0] + ".metrics.json"
    check_paths(path, out, _PLOT.value)
    check_grading(_GRADER.value, _POLICY.value, _COMPARE.value)
    try:
        result = evaluate_file(path, _K.value, _SKIP.value, _PROCESSES.value, policy=_POLICY.value,
                               grader=_GRADER.value, compare_graders=tuple(_COMPARE.value))
    except CandidatesError as error:
        raise DataError(str(error)) from error
    except OSError as error:  # unreadable (permissions, I/O): the file's fault, not a flag's
        if error.filename != path:
            raise
        raise DataError(f"{path}: {error.strerror or error}") from error
    print(markdown_table(result))
    print("\n" + diagnostics.markdown(result["diagnostics"], result["k"]))
    if "comparison" in result:
        disagreements = os.path.splitext(out)[0] + ".disagreements.jsonl"
        atomic.write_text(disagreements, "".join(json.dumps(d, ensure_ascii=False) + "\n"
                                                 for d in result.pop("disagreements")))
        print("\n" + comparison_table(result["comparison"], result["k"]))
        print(f"\nwrote {disagreements}")
    skipped = result["skipped_lines"]["count"]
    if skipped:
        print(f"\nskipped {skipped} bad line(s): see skipped_lines in the JSON")
    atomic.write_json(out, result, indent=2, sort_keys=True)
    print(f"\nwrote {out}")
    evaluator = result["diagnostics"]["evaluator"]
    if _PLOT.value and evaluator is not None:
        from mathft_jax.results import report  # matplotlib: only when a plot is asked for
        report.plot_evaluator(_PLOT.value, evaluator, f"Evaluator scores in {path}")
        print(f"wrote {_PLOT.value}")
    elif _PLOT.value:
        print(f"no scores in {path}: no evaluator plot")

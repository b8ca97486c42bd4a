"""Answer clusters and the paper's selection metrics, with bootstrap confidence intervals.

Notation for one problem: samples i = 1..N with answers a_i, evaluator scores s_i and grades
c_i = g(a_i, gold) in {0, 1}. Clusters C_1..C_M (sizes |C_j|, ranked as `cluster` does) group
equivalent answers; samples without an answer belong to no cluster. A cluster is correct,
c(C_j), when its representative is. Every metric is a per-problem value in [0, 1], averaged
over problems.

Ranking and tie-breaks (deterministic): clusters by size, descending, then by their earliest
sample index; "argmax" over samples or clusters takes the first in that order (lowest sample
index, best-ranked cluster).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from mathft_jax.results.candidates import grade_sample, record_tolerance, sample_answer
from mathft_jax.grading import answer_key, is_equiv

METRICS = ("pass_at_1", "pass_at_n", "maj1_at_n", "majk_at_n", "rr_all", "rr_topk", "wrr", "wrr_majk")
SCORED_METRICS = frozenset(("rr_all", "rr_topk", "wrr", "wrr_majk"))


def metric_label(name: str, k: int) -> str:
    """The paper's name of a metric, with K filled in."""
    return {"pass_at_1": "Pass@1", "pass_at_n": "Pass@N", "maj1_at_n": "Maj1@N",
            "majk_at_n": f"Maj{k}@N", "rr_all": "RR.All", "rr_topk": f"RR.Top-{k}",
            "wrr": "W.RR", "wrr_majk": f"W.RR.Maj{k}"}[name]


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Equivalent answers: `members` are sample indices (ascending); `representative` is one."""

    answer: str
    representative: int
    members: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.members)


def cluster(answers: Sequence[str | None]) -> list[Cluster]:
    """Clusters of equivalent answers, largest first (ties: earliest member). None is skipped.

    Answers are grouped by `answer_key` in linear time; groups are then merged, largest first,
    into the first existing cluster whose representative `is_equiv` theirs, so `is_equiv` runs
    only between representatives.
    """
    groups: dict[object, list[int]] = {}
    for index, answer in enumerate(answers):
        key = answer_key(answer)
        if key is not None:
            groups.setdefault(key, []).append(index)
    merged: list[tuple[int, list[int]]] = []  # (representative, members)
    for members in sorted(groups.values(), key=lambda m: (-len(m), m[0])):
        representative = members[0]
        home = next((m for rep, m in merged if is_equiv(answers[rep], answers[representative])), None)
        if home is None:
            merged.append((representative, list(members)))
        else:
            home.extend(members)
    clusters = [Cluster(answers[rep], rep, tuple(sorted(m))) for rep, m in merged]
    return sorted(clusters, key=lambda c: (-c.size, c.members[0]))


@dataclasses.dataclass(frozen=True)
class GradedProblem:
    """One problem's samples, graded and clustered once; metrics read any subset of samples.

    `labels[i]` is sample i's cluster index in `cluster()` order (-1: no answer);
    `cluster_correct[j]` is c(C_j); `scores` is None unless every sample has one.
    `mean_logprobs[i]` is sample i's mean token log-probability under its generator
    (`logprob / num_tokens`; -inf for no tokens), None unless every sample has both fields.
    `score_method` is how the scores were made (the record's `score_method`): 'label' scores
    are probabilities of being right, 'likelihood' scores only rank.
    """

    correct: tuple[bool, ...]
    labels: tuple[int, ...]
    cluster_correct: tuple[bool, ...]
    scores: tuple[float, ...] | None
    mean_logprobs: tuple[float, ...] | None = None
    score_method: str = "label"


def grade_problem(record: dict, policy: str | None = None, grader: str = "mathft") -> GradedProblem:
    """Grade every sample of a candidates record against its gold answer (`grader`; answers
    as recorded, or extracted again under `policy`) and cluster them."""
    answers = [sample_answer(s, policy) for s in record["samples"]]
    correct = tuple(grade_sample(s, record["gold"], policy, grader, record_tolerance(record))
                    for s in record["samples"])
    clusters = cluster(answers)
    labels = [-1] * len(answers)
    for index, found in enumerate(clusters):
        for member in found.members:
            labels[member] = index
    scores = [s.get("score") for s in record["samples"]]
    scores = None if any(s is None for s in scores) else tuple(float(s) for s in scores)
    return GradedProblem(correct, tuple(labels), tuple(correct[c.representative] for c in clusters),
                         scores, _mean_logprobs(record["samples"]),
                         record.get("score_method", "label"))


def _mean_logprobs(samples: Sequence[dict]) -> tuple[float, ...] | None:
    if any(s.get("logprob") is None or s.get("num_tokens") is None for s in samples):
        return None
    return tuple(s["logprob"] / s["num_tokens"] if s["num_tokens"] else float("-inf")
                 for s in samples)


def ranked_clusters(problem: GradedProblem, subset: Sequence[int]) -> list[tuple[int, list[int]]]:
    """(cluster index, member samples) restricted to `subset`, ranked by size then first index."""
    members: dict[int, list[int]] = {}
    for sample in subset:
        if problem.labels[sample] >= 0:
            members.setdefault(problem.labels[sample], []).append(sample)
    return sorted(members.items(), key=lambda item: (-len(item[1]), min(item[1])))


def _best_sample(problem: GradedProblem, samples: Sequence[int]) -> int | None:
    return max(samples, key=lambda i: (problem.scores[i], -i), default=None)


def _best_cluster(problem: GradedProblem, ranked) -> int | None:
    """The cluster with the largest score sum (first ranked on ties)."""
    best = max(ranked, key=lambda item: sum(problem.scores[i] for i in item[1]), default=None)
    return None if best is None else best[0]


def problem_metrics(problem: GradedProblem, k: int, subset: Sequence[int] | None = None) -> dict:
    """Every metric for one problem over `subset` of its samples (default: all N).

    pass_at_1 = (1/N) sum_i c_i
    pass_at_n = max_i c_i                                   (oracle)
    maj1_at_n = c(C_1)                                      (majority vote)
    majk_at_n = max_{j <= K} c(C_j)                         (oracle over the top-K clusters)
    rr_all    = c_{argmax_i s_i}                            (re-rank all N by the evaluator)
    rr_topk   = c_{argmax_{i in C_1 u .. u C_K} s_i}        (re-rank inside the top-K clusters)
    wrr       = c(C_{argmax_j sum_{i in C_j} s_i})          (clusters weighted by score sums)
    wrr_majk  = c(C_{argmax_{j <= K} sum_{i in C_j} s_i})   (the same over the top-K clusters)
    The scored metrics are None when the problem has no scores. Max over nothing is 0.
    """
    subset = list(range(len(problem.correct))) if subset is None else list(subset)
    ranked = ranked_clusters(problem, subset)
    top = ranked[:k]
    values = {
        "pass_at_1": float(np.mean([problem.correct[i] for i in subset])) if subset else 0.0,
        "pass_at_n": float(any(problem.correct[i] for i in subset)),
        "maj1_at_n": float(bool(ranked) and problem.cluster_correct[ranked[0][0]]),
        "majk_at_n": float(any(problem.cluster_correct[j] for j, _ in top)),
    }
    if problem.scores is None:
        return values | {name: None for name in SCORED_METRICS}
    best_all = _best_sample(problem, subset)
    best_top = _best_sample(problem, [i for _, members in top for i in members])
    best_cluster, best_top_cluster = _best_cluster(problem, ranked), _best_cluster(problem, top)
    return values | {
        "rr_all": float(best_all is not None and problem.correct[best_all]),
        "rr_topk": float(best_top is not None and problem.correct[best_top]),
        "wrr": float(best_cluster is not None and problem.cluster_correct[best_cluster]),
        "wrr_majk": float(best_top_cluster is not None and problem.cluster_correct[best_top_cluster]),
    }


def bootstrap_ci(values: Sequence[float], n_resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, resampling problems (seeded, deterministic)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_resamples, data.size))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return (float(low), float(high))


def summarize(per_problem: Sequence[dict], n_resamples: int = 1000, seed: int = 0) -> dict:
    """{metric: {"value", "ci_low", "ci_high", "n_problems"}} over problems with a value."""
    summary = {}
    for name in METRICS:
        values = [m[name] for m in per_problem if m[name] is not None]
        low, high = bootstrap_ci(values, n_resamples, seed)
        summary[name] = {"value": float(np.mean(values)) if values else None,
                         "ci_low": low if values else None, "ci_high": high if values else None,
                         "n_problems": len(values)}
    return summary


def metrics_at_n(problems: Sequence[GradedProblem], n: int, k: int, seed: int = 0,
                 repeats: int = 1, n_resamples: int = 1000) -> dict:
    """Metrics when only n of each problem's samples had been drawn (accuracy-vs-N curves).

    For every problem and repeat r, n samples are drawn without replacement with
    `default_rng([seed, r, problem index])`; the clusters are the full clustering restricted to
    them. Per-problem values are averaged over repeats, then summarised as in `summarize`.
    """
    per_problem = []
    for index, problem in enumerate(problems):
        draws = []
        for repeat in range(repeats):
            rng = np.random.default_rng([seed, repeat, index])
            size = min(n, len(problem.correct))
            draws.append(problem_metrics(problem, k, rng.choice(len(problem.correct), size, replace=False)))
        per_problem.append({name: None if draws[0][name] is None else float(np.mean([d[name] for d in draws]))
                            for name in METRICS})
    return summarize(per_problem, n_resamples, seed)


def evaluate_problems(problems: Sequence[GradedProblem], k: int, n_resamples: int = 1000,
                      seed: int = 0) -> dict:
    """`summarize` of every metric over all problems and all their samples."""
    return summarize([problem_metrics(problem, k) for problem in problems], n_resamples, seed)

"""Clusters, tie-breaks and the paper's metrics on hand-computed examples."""
import math

import numpy as np
import pytest

from mathft_jax.results import voting
from mathft_jax.results.voting import GradedProblem, cluster, problem_metrics


def test_cluster_groups_equivalent_spellings_and_sorts_by_size():
    answers = ["1/2", "3", "\\frac12", None, "0.5", "3", "x"]
    clusters = cluster(answers)
    assert [c.members for c in clusters] == [(0, 2, 4), (1, 5), (6,)]
    assert clusters[0].answer == "1/2" and clusters[0].representative == 0


def test_ties_break_by_earliest_sample_and_none_never_wins():
    clusters = cluster([None, None, None, "7", "5", "5", "7"])
    assert [c.answer for c in clusters] == ["7", "5"]  # 7 first seen at index 3, 5 at 4
    assert cluster([None, None]) == []


def test_cluster_merges_key_groups_by_is_equiv():
    # "6-5i" and "-5i+6" have different keys but are equivalent: one cluster.
    clusters = cluster(["6-5i", "-5i+6", "6+5i"])
    assert [c.members for c in clusters] == [(0, 1), (2,)]


def make_problem(answers, gold, scores=None):
    record = {"problem_id": "p", "problem": "", "gold": gold,
              "samples": [{"text": "", "answer": a} | ({} if scores is None else {"score": s})
                          for a, s in zip(answers, scores or [0] * len(answers))]}
    return voting.grade_problem(record)


def test_metrics_hand_computed():
    # clusters: "2" x3 (wrong), "3" x2 (right), "4" x1 (wrong); one sample without answer.
    answers = ["2", "3", "2", "4", "3", "2", None]
    scores = [0.1, 0.3, 0.2, 0.9, 0.35, 0.15, 0.95]
    problem = make_problem(answers, "3", scores)
    assert problem.correct == (False, True, False, False, True, False, False)
    m = problem_metrics(problem, k=2)
    assert m["pass_at_1"] == pytest.approx(2 / 7)
    assert m["pass_at_n"] == 1.0
    assert m["maj1_at_n"] == 0.0           # "2" is the majority
    assert m["majk_at_n"] == 1.0           # "3" is in the top 2
    assert m["rr_all"] == 0.0              # best score 0.95 has no answer
    assert m["rr_topk"] == 1.0             # best in {2, 3} clusters: 0.35 -> "3"
    assert m["wrr"] == 0.0                 # sums: "2" 0.45, "3" 0.65, "4" 0.9 -> "4"
    assert m["wrr_majk"] == 1.0            # within the top 2: "3" 0.65 beats "2" 0.45
    m1 = problem_metrics(problem, k=1)
    assert m1["majk_at_n"] == 0.0 and m1["rr_topk"] == 0.0 and m1["wrr_majk"] == 0.0


def test_weighted_rerank_prefers_the_heaviest_cluster():
    problem = make_problem(["2", "3", "2", "4", "3", "2"], "4", [0.1, 0.3, 0.2, 0.9, 0.35, 0.15])
    m = problem_metrics(problem, k=3)
    # score sums: "2" 0.45, "3" 0.65, "4" 0.9 -> W.RR picks "4" (correct)
    assert m["wrr"] == 1.0 and m["wrr_majk"] == 1.0 and m["rr_all"] == 1.0
    assert problem_metrics(problem, k=2)["wrr_majk"] == 0.0  # "4" is not in the top 2


def test_scored_metrics_are_none_without_scores():
    m = problem_metrics(make_problem(["1", "1"], "1"), k=8)
    assert m["maj1_at_n"] == 1.0
    assert all(m[name] is None for name in voting.SCORED_METRICS)


def test_subset_restricts_clusters():
    problem = make_problem(["2", "2", "3", "3", "3"], "2")
    assert problem_metrics(problem, 1)["maj1_at_n"] == 0.0
    assert problem_metrics(problem, 1, subset=[0, 1, 2])["maj1_at_n"] == 1.0


def test_bootstrap_is_deterministic_and_brackets_the_mean():
    values = np.random.default_rng(1).random(200) > 0.4
    low, high = voting.bootstrap_ci(values, seed=3)
    assert (low, high) == voting.bootstrap_ci(values, seed=3)
    assert low < values.mean() < high
    assert voting.bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)


def test_summarize_and_metrics_at_n():
    problems = [make_problem(["1", "2", "1", "3"], "1", [0.5, 0.9, 0.1, 0.2]),
                make_problem(["5", "5", "4", "4"], "4", [0.2, 0.1, 0.8, 0.7])]
    full = voting.evaluate_problems(problems, k=2)
    assert full["pass_at_1"]["value"] == pytest.approx(0.5)
    assert full["maj1_at_n"]["value"] == pytest.approx(0.5)   # problem 2: tie 5/4 -> 5 first
    assert full["rr_all"]["value"] == pytest.approx(0.5)
    assert full["wrr"]["value"] == pytest.approx(0.5)        # "2"=0.9 beats "1"=0.6; "4" wins
    at_full_n = voting.metrics_at_n(problems, n=4, k=2, seed=0)
    assert {k: v["value"] for k, v in at_full_n.items()} == {k: v["value"] for k, v in full.items()}
    at_one = voting.metrics_at_n(problems, n=1, k=2, seed=0, repeats=5)
    assert at_one == voting.metrics_at_n(problems, n=1, k=2, seed=0, repeats=5)
    assert at_one["pass_at_1"]["value"] == at_one["pass_at_n"]["value"]  # one sample each
    assert all(math.isfinite(v["ci_low"]) for v in at_one.values())


def test_graded_problem_is_plain_data():
    problem = make_problem(["1"], "1")
    assert isinstance(problem, GradedProblem) and problem.labels == (0,)

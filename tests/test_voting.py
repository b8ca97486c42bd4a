"""Clusters, tie-breaks and the paper's metrics on hand-computed examples."""
import math

import numpy as np
import pytest

from mathft_jax.results import voting
from mathft_jax.results.voting import GradedProblem, cluster, problem_metrics
from bootstrap_reference import BINOMIAL_CASES, RESAMPLES, binomial_interval, outcomes


def test_cluster_groups_equivalent_spellings():
    clusters = cluster(["1/2", "3", "\\frac12", None, "0.5", "3", "x"])
    assert sorted(c.members for c in clusters) == [(0, 2, 4), (1, 5), (6,)]
    assert clusters[0].answer == "1/2" and clusters[0].representative == 0


def test_clusters_sort_by_size():
    clusters = cluster(["x", "3", "1/2", "\\frac12", "0.5", "3"])
    assert [c.members for c in clusters] == [(2, 3, 4), (1, 5), (0,)]


def test_equal_sizes_rank_by_earliest_sample():
    assert [c.answer for c in cluster([None, "7", "5", "5", "7"])] == ["7", "5"]  # 7 at 1, 5 at 2
    assert [c.answer for c in cluster([None, "5", "7", "5", "7"])] == ["5", "7"]


def test_samples_without_an_answer_form_no_cluster():
    assert cluster([None, None]) == []
    assert [c.members for c in cluster([None, None, None, "7"])] == [(3,)]


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


# The documented tie rules (voting.py): clusters rank by size, then by their earliest sample;
# an argmax over samples takes the lowest index, over clusters the best-ranked one. Each rule
# is checked both ways round, so that reversing it changes a value.
TIES = {  # name: (metric, K, answers, scores, subset or None, the rule's pick, the reversed rule's)
    "RR.All: equal best scores, the first sample wins":
        ("rr_all", 2, ["1", "2"], [0.5, 0.5], None, "1", "2"),
    "RR.Top-K: the same inside the top K":
        ("rr_topk", 2, ["1", "2", "3"], [0.5, 0.5, 0.9], None, "1", "2"),
    "W.RR: equal sums, the larger cluster wins":
        ("wrr", 2, ["1", "2", "1"], [0.25, 0.5, 0.25], None, "1", "2"),
    "W.RR: equal sums and sizes, the earlier cluster wins":
        ("wrr", 2, ["1", "2"], [0.5, 0.5], None, "1", "2"),
    "W.RR.MajK: the same inside the top K":
        ("wrr_majk", 2, ["1", "2", "3"], [0.5, 0.5, 0.9], None, "1", "2"),
    "Maj1@N: equal sizes, the earliest sample's cluster":
        ("maj1_at_n", 1, ["1", "2", "1", "2"], None, None, "1", "2"),
    "Maj1@N: earliest among the samples drawn":  # over all five, "2" is the largest cluster
        ("maj1_at_n", 1, ["2", "1", "2", "2", "1"], None, [1, 3], "1", "2"),
    "MajK@N: equal sizes, the K earliest clusters":
        ("majk_at_n", 2, ["1", "2", "3"], None, None, "1", "3"),
}


@pytest.mark.parametrize("rule", sorted(TIES))
def test_ties_go_to_the_first_as_documented(rule):
    metric, k, answers, scores, subset, pick, reversed_pick = TIES[rule]
    assert problem_metrics(make_problem(answers, pick, scores), k, subset)[metric] == 1.0
    assert problem_metrics(make_problem(answers, reversed_pick, scores), k, subset)[metric] == 0.0


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


def test_bootstrap_is_deterministic():
    values = np.random.default_rng(1).random(200) > 0.4
    assert voting.bootstrap_ci(values, seed=3) == voting.bootstrap_ci(values, seed=3)


def test_bootstrap_brackets_the_mean():
    values = np.random.default_rng(1).random(200) > 0.4
    low, high = voting.bootstrap_ci(values, seed=3)
    assert low < values.mean() < high
    assert voting.bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)


# ------------------------------------------- the bootstrap, against tests/bootstrap_reference.py


@pytest.mark.parametrize("n, k", BINOMIAL_CASES)
def test_bootstrap_interval_is_95_percent_by_default(n, k):
    assert voting.bootstrap_ci(outcomes(n, k), n_resamples=RESAMPLES) == pytest.approx(
        binomial_interval(n, k, 0.95))


@pytest.mark.parametrize("n, k", BINOMIAL_CASES)
@pytest.mark.parametrize("level", [0.6, 0.8, 0.85])
def test_bootstrap_interval_has_the_level_asked_for(n, k, level):
    assert voting.bootstrap_ci(outcomes(n, k), n_resamples=RESAMPLES, level=level) == pytest.approx(
        binomial_interval(n, k, level))


@pytest.mark.parametrize("n, k", BINOMIAL_CASES)
def test_summaries_carry_the_95_percent_interval(n, k):
    entry = voting.summarize([dict.fromkeys(voting.METRICS, v) for v in outcomes(n, k)],
                             n_resamples=RESAMPLES)["pass_at_1"]
    assert (entry["ci_low"], entry["ci_high"]) == pytest.approx(binomial_interval(n, k, 0.95))
    assert entry["value"] == pytest.approx(k / n) and entry["n_problems"] == n


def test_each_resample_draws_as_many_problems_as_there_are():
    # Two problems, 0 and 1: a resample of two has mean 0, 1/2 or 1 with chances 1/4, 1/2,
    # 1/4, so its middle 40% is 1/2 alone. A resample of one problem is never 1/2, and
    # resampling from the first problem only is always 0.
    assert voting.bootstrap_ci([0.0, 1.0], n_resamples=RESAMPLES, level=0.4) == (0.5, 0.5)
    assert voting.bootstrap_ci([1.0, 0.0], n_resamples=RESAMPLES, level=0.4) == (0.5, 0.5)


PROBLEMS = [make_problem(["1", "2", "1", "3"], "1", [0.5, 0.9, 0.1, 0.2]),
            make_problem(["5", "5", "4", "4"], "4", [0.2, 0.1, 0.8, 0.7])]


def test_evaluate_problems_averages_the_metrics_over_problems():
    full = voting.evaluate_problems(PROBLEMS, k=2)
    assert full["pass_at_1"]["value"] == pytest.approx(0.5)
    assert full["maj1_at_n"]["value"] == pytest.approx(0.5)   # problem 2: tie 5/4 -> 5 first
    assert full["rr_all"]["value"] == pytest.approx(0.5)
    assert full["wrr"]["value"] == pytest.approx(0.5)        # "2"=0.9 beats "1"=0.6; "4" wins


def test_metrics_at_every_sample_are_the_full_metrics():
    full = voting.evaluate_problems(PROBLEMS, k=2)
    at_full_n = voting.metrics_at_n(PROBLEMS, n=4, k=2, seed=0)
    assert {k: v["value"] for k, v in at_full_n.items()} == {k: v["value"] for k, v in full.items()}


def test_metrics_at_one_sample_are_seeded_and_see_one_sample():
    at_one = voting.metrics_at_n(PROBLEMS, n=1, k=2, seed=0, repeats=5)
    assert at_one == voting.metrics_at_n(PROBLEMS, n=1, k=2, seed=0, repeats=5)
    assert at_one["pass_at_1"]["value"] == at_one["pass_at_n"]["value"]  # one sample each
    assert all(math.isfinite(v["ci_low"]) for v in at_one.values())


def test_graded_problem_is_plain_data():
    problem = make_problem(["1"], "1")
    assert isinstance(problem, GradedProblem) and problem.labels == (0,)

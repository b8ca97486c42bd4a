"""Evaluator diagnostics and baselines against hand-computed values."""
import itertools
import logging

import numpy as np
import pytest

from mathft_jax import evaluate
from mathft_jax.results import diagnostics, voting
from bootstrap_reference import BINOMIAL_CASES, RESAMPLES, binomial_interval


def test_auc_counts_ties_as_half():
    # positives 0.9, 0.3 against negatives 0.8, 0.3, 0.1: wins 3 + 0 + 0.5 + 1 = 4.5 of 6
    assert diagnostics.auc([0.9, 0.8, 0.3, 0.3, 0.1], [True, False, True, False, False]) == 0.75
    assert diagnostics.auc([1, 2, 3], [False, False, True]) == 1.0
    assert diagnostics.auc([1, 2, 3], [True, False, False]) == 0.0
    assert diagnostics.auc([0.5] * 4, [True, False, True, False]) == 0.5
    assert diagnostics.auc([0.1, 0.2], [True, True]) is None


def test_auc_matches_counting_every_pair():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 40) / 4  # many ties
    labels = rng.random(40) < 0.4
    pos, neg = scores[labels], scores[~labels]
    brute = ((pos[:, None] > neg).sum() + 0.5 * (pos[:, None] == neg).sum()) / (pos.size * neg.size)
    assert diagnostics.auc(scores, labels) == pytest.approx(brute)


def test_pair_accuracy_pools_pairs_within_problems_only():
    scores = [[0.9, 0.2, 0.5], [0.1, 0.4, 0.4, 0.7], [0.3, 0.8]]
    correct = [[True, False, False], [True, True, False, False], [True, True]]
    # problem 1: 2 of 2 pairs; problem 2: 0.4 = 0.4 is the only half win of 4; problem 3: none
    assert diagnostics.pair_accuracy(scores, correct) == {"value": 2.5 / 6, "pairs": 6, "problems": 2}
    # pooled over problems, 0.9 (problem 1, correct) would also beat 0.7 (problem 2): not counted
    assert diagnostics.pair_accuracy([[0.3, 0.8]], [[True, True]])["value"] is None


CALIBRATED = ([0.05, 0.15, 0.15, 0.95, 1.0], [False, True, False, True, True])


def test_calibration_ece():
    out = diagnostics.calibration(*CALIBRATED)
    # bins 0, 1, 9: (1/5)|0 - 0.05| + (2/5)|0.5 - 0.15| + (2/5)|1 - 0.975| = 0.01 + 0.14 + 0.01
    assert out["ece"] == pytest.approx(0.16)


def test_calibration_reliability_bins():
    out = diagnostics.calibration(*CALIBRATED)
    filled = [(b["low"], b["count"], b["mean_score"], b["accuracy"]) for b in out["bins"] if b["count"]]
    assert filled == [(0.0, 1, 0.05, 0.0), (0.1, 2, pytest.approx(0.15), 0.5),
                      (0.9, 2, pytest.approx(0.975), 1.0)]
    assert len(out["bins"]) == 10 and out["bins"][5]["mean_score"] is None


def test_no_calibration_of_scores_that_are_not_probabilities():
    assert diagnostics.calibration([0.5, 1.5], [True, False]) is None


def test_histogram_splits_by_correctness():
    h = diagnostics.histogram([0.05, 0.15, 0.15, 0.95], [False, True, False, True], bins=2)
    assert h == {"edges": [0.0, 0.5, 1.0], "correct": [1, 1], "incorrect": [2, 0]}


# sample:          0     1     2      3      4      5     6
CORRECT = (True, True, False, False, False, True, False)
LABELS = (1, 1, 0, 0, 0, 2, -1)  # cluster 0: {2, 3, 4} wrong; 1: {0, 1}; 2: {5}; 6: no answer
PROBLEM = voting.GradedProblem(CORRECT, LABELS, (False, True, True), None)


@pytest.mark.parametrize("k, expected", [(1, 0.0), (2, 2 / 5), (3, 3 / 6)])
def test_random_topk_is_the_exact_expectation(k, expected):
    assert diagnostics.random_topk(PROBLEM, k) == pytest.approx(expected)
    # the same as RR.Top-K averaged over every ordering of distinct random scores
    values = []
    for order in itertools.permutations(range(len(CORRECT))):
        scored = voting.GradedProblem(CORRECT, LABELS, PROBLEM.cluster_correct, tuple(map(float, order)))
        values.append(voting.problem_metrics(scored, k)["rr_topk"])
    assert np.mean(values) == pytest.approx(expected)


def _record(answers_logprobs, gold="1", scores=None):
    samples = [{"text": "", "answer": a, "logprob": lp, "num_tokens": n}
               for a, lp, n in answers_logprobs]
    for sample, score in zip(samples, scores or []):
        sample["score"] = score
    return {"problem_id": "p", "problem": "Q", "gold": gold, "samples": samples}


def test_log_likelihood_baselines_rank_by_the_mean_token_log_probability():
    # "1" (right): sum -6 over 2 tokens, mean -3. "2" (wrong): sum -4 over 1 token, mean -4.
    # Two "2"s make the wrong answer the majority; the top-1 cluster is "2".
    problem = voting.grade_problem(_record([("1", -6.0, 2), ("2", -4.0, 1), ("2", -5.0, 1)]))
    assert problem.mean_logprobs == (-3.0, -4.0, -5.0)
    base = diagnostics.problem_baselines(problem, k=1)
    assert base == {"rr_ll_all": 1.0, "rr_ll_topk": 0.0, "random_topk": 0.0}
    assert diagnostics.problem_baselines(problem, k=2)["rr_ll_topk"] == 1.0
    no_ll = voting.grade_problem({**_record([("1", 0.0, 1)]), "samples": [{"text": "", "answer": "1"}]})
    assert no_ll.mean_logprobs is None
    assert diagnostics.problem_baselines(no_ll, 1)["rr_ll_all"] is None
    zero = voting.grade_problem(_record([("1", 0.0, 0)]))
    assert zero.mean_logprobs == (float("-inf"),)  # no tokens: never preferred


def _two_problems():
    """evaluate_records of two problems (gold 1) on which RR.Top-1 = Maj1@N: right on the
    first, wrong on the second."""
    records = [
        _record([("1", -1.0, 1), ("1", -2.0, 1), ("2", -0.5, 1)], scores=[0.9, 0.1, 0.2]),
        _record([("3", -1.0, 1), ("3", -2.0, 1), ("1", -0.5, 1)], scores=[0.1, 0.2, 0.9]),
    ]
    records[1]["problem_id"] = "q"
    return evaluate.evaluate_records(records, k=1, processes=1, progress=False, n_resamples=200)


def test_summary_deltas_are_paired_over_problems():
    result = _two_problems()
    assert [result["metrics"][m]["value"] for m in ("maj1_at_n", "rr_topk", "rr_all")] == [0.5, 0.5, 1.0]
    # each metric is 1 on one problem and 0 on the other; their per-problem difference is 0
    delta = result["diagnostics"]["deltas"]["rr_topk - maj1_at_n"]
    assert delta == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n_problems": 2}


def test_summary_baselines():
    diag = _two_problems()["diagnostics"]
    # the best mean log-prob (-0.5) is wrong in problem 1 and right in problem 2
    assert diag["baselines"]["rr_ll_all"]["value"] == 0.5
    assert diag["baselines"]["rr_ll_topk"]["value"] == 0.5  # inside the majority: as Maj1
    assert diag["baselines"]["random_topk"]["value"] == 0.5
    assert diag["deltas"]["rr_topk - rr_ll_topk"]["value"] == 0.0


def test_summary_ranks_by_the_evaluator_and_the_log_likelihood():
    diag = _two_problems()["diagnostics"]
    evaluator = diag["evaluator"]
    assert evaluator["samples"] == 6 and evaluator["correct"] == 3
    # right (0.9, 0.1, 0.9) against wrong (0.2, 0.2, 0.1): 3 + (0 + 0 + 0.5) + 3 of 9 pairs
    assert evaluator["auc"] == pytest.approx(6.5 / 9)
    # within problems: 0.9 > 0.2 but 0.1 < 0.2; then 0.9 beats 0.1 and 0.2
    assert evaluator["pair_accuracy"] == {"value": 0.75, "pairs": 4, "problems": 2}
    assert diag["loglik"]["pair_accuracy"] == {"value": 0.5, "pairs": 4, "problems": 2}


def test_summary_markdown():
    text = diagnostics.markdown(_two_problems()["diagnostics"], k=1)
    assert "| evaluator S | 0.722 | 0.750 | 4 |" in text
    assert "| RR.Top-1 − Maj1@N | +0.00 | [+0.00, +0.00] | 2 |" in text
    assert "| RR.LL.All | 50.00 |" in text


# Per-problem (RR.Top-2, Maj1@N): (1, 0) where the majority is wrong and the evaluator
# picks the right minority; (1, 1) all right; (0, 0) all wrong.
RIGHT_MINORITY = voting.GradedProblem((False, False, True), (0, 0, 1), (False, True), (0.1, 0.1, 0.9))
ALL_RIGHT = voting.GradedProblem((True,), (0,), (True,), (0.5,))
ALL_WRONG = voting.GradedProblem((False,), (0,), (False,), (0.5,))


@pytest.mark.parametrize("n, k", BINOMIAL_CASES)
def test_delta_interval_is_the_95_percent_paired_bootstrap(n, k):
    problems = [RIGHT_MINORITY] * k + [ALL_RIGHT, ALL_WRONG] * ((n - k) // 2) + [ALL_RIGHT] * ((n - k) % 2)
    delta = diagnostics.summarize(problems, k=2, n_resamples=RESAMPLES)["deltas"]["rr_topk - maj1_at_n"]
    assert (delta["ci_low"], delta["ci_high"]) == pytest.approx(binomial_interval(n, k, 0.95))
    assert delta["value"] == pytest.approx(k / n) and delta["n_problems"] == n


@pytest.mark.parametrize("n, k", BINOMIAL_CASES)
def test_baseline_interval_is_the_95_percent_bootstrap(n, k):
    problems = [ALL_RIGHT] * k + [ALL_WRONG] * (n - k)
    entry = diagnostics.summarize(problems, k=2, n_resamples=RESAMPLES)["baselines"]["random_topk"]
    assert (entry["ci_low"], entry["ci_high"]) == pytest.approx(binomial_interval(n, k, 0.95))


def test_likelihood_scores_rank_but_are_not_calibrated(tmp_path):
    """A likelihood evaluator's S ranks and is in (0, 1], but is not a probability of being
    right: its records say so (`score_method`) and no calibration is read from them."""
    def summary(method):
        record = _record([("1", -1.0, 1), ("2", -0.5, 1), ("1", -2.0, 2)], scores=[0.9, 0.2, 0.4])
        if method:
            record["score_method"] = method
        graded = evaluate.grade_records([record], processes=1, progress=False)
        return diagnostics.summarize(graded, k=1, n_resamples=10)["evaluator"]

    likelihood, label = summary("likelihood"), summary(None)
    assert likelihood["calibration"] is None and label["calibration"]["ece"] > 0
    assert likelihood["auc"] == label["auc"] == 1.0  # ranked alike
    row = "| evaluator S | 1.000 | 1.000 | 2 | n/a |"
    text = diagnostics.markdown({"evaluator": likelihood, "loglik": None, "baselines": {},
                                 "deltas": {}}, 1)
    assert row in text and "no calibration" in text and "| S bin |" not in text
    from mathft_jax.results import report
    report.plot_evaluator(str(tmp_path / "e.png"), likelihood, "likelihood")  # no diagonal
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"


def test_no_scores_no_evaluator_diagnostics():
    result = evaluate.evaluate_records([_record([("1", -1.0, 1)])], k=1, processes=1, progress=False)
    assert result["diagnostics"]["evaluator"] is None
    assert result["diagnostics"]["deltas"]["rr_topk - maj1_at_n"]["value"] is None
    assert "| evaluator S | n/a |" in diagnostics.markdown(result["diagnostics"], 1)


def _report_with_diagnostics(tmp_path) -> str:
    from mathft_jax.results import report
    records = [_record([("1", -1.0, 1), ("2", -0.5, 1), ("1", -2.0, 2)], scores=[0.9, 0.2, 0.4])]
    graded = evaluate.grade_records(records, processes=1, progress=False)
    results = {"ssft": evaluate.summarize_problems(graded, k=1, n_resamples=10)}
    return open(report.write_report(str(tmp_path), results, {"ssft": graded}, k=1)).read()


def test_report_shows_the_diagnostics(tmp_path):
    text = _report_with_diagnostics(tmp_path)
    assert "## Evaluator diagnostics and baselines (SSFT generator's candidates)" in text
    assert "| evaluator S | 1.000 | 1.000 | 2 |" in text and "RR.LL.Top-1" in text
    assert "| [0.9, 1.0] | 1 |" in text and "| [0.2, 0.3) | 1 |" in text  # 1.0 is in the last bin


def test_report_plots_the_diagnostics(tmp_path):
    text = _report_with_diagnostics(tmp_path)
    assert "![evaluator diagnostics, SSFT](evaluator_ssft.png)" in text
    assert (tmp_path / "evaluator_ssft.png").read_bytes()[:4] == b"\x89PNG"


def test_k_not_below_every_problems_samples_warns(caplog):
    graded = evaluate.grade_records([_record([("1", -1.0, 1), ("2", -0.5, 1)])], processes=1,
                                    progress=False)
    with caplog.at_level(logging.WARNING):
        evaluate.summarize_problems(graded, k=1, n_resamples=10)
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        evaluate.summarize_problems(graded, k=2, n_resamples=10)  # 2 samples: 2 clusters at most
    assert "K=2 is not below the 2 samples of any problem" in caplog.text


def test_report_plots_the_training_curves_it_is_given(tmp_path, monkeypatch):
    from mathft_jax.results import report
    records = [_record([("1", -1.0, 1), ("2", -0.5, 1)])]
    graded = evaluate.grade_records(records, processes=1, progress=False)
    results = {"ssft": evaluate.summarize_problems(graded, k=1, n_resamples=10)}
    training = {"ssft": [{"step": 1, "train/loss": 2.0}, {"step": 2, "train/loss": float("nan")},
                         {"step": 2, "eval/loss": 1.5}],
                "grpo": [{"step": i, "grpo/reward": 0.5, "grpo/accuracy": 0.4} for i in range(1, 31)],
                "scr": [{"step": 1, "train/mfu": 0.1}]}  # none of its curves: no panel
    path = report.write_report(str(tmp_path / "with"), results, {"ssft": graded}, 1, training)
    assert "![training curves](training.png)" in open(path).read()
    assert (tmp_path / "with" / "training.png").read_bytes()[:4] == b"\x89PNG"
    drawn = {}
    monkeypatch.setattr(report, "save_figure", lambda fig, path: drawn.update(
        {ax.get_title(): [line.get_xydata().tolist() for line in ax.get_lines()] for ax in fig.axes}))
    # a resumed stage logged steps 2 and 3 again: one point a step, the later value, in order
    assert report.plot_training("unused.png", {"mtsf": [
        {"step": 1, "train/loss": 3.0}, {"step": 2, "train/loss": 2.0}, {"step": 3, "train/loss": 1.0},
        {"step": 2, "train/loss": 2.5}, {"step": 3, "train/loss": 1.5}, {"step": 4, "train/loss": 0.5}]})
    assert drawn == {"mtsf": [[[1, 3.0], [2, 2.5], [3, 1.5], [4, 0.5]]]}
    nothing = {"scr": [{"step": 1, "train/loss": float("inf")}]}
    path = report.write_report(str(tmp_path / "without"), results, {"ssft": graded}, 1, nothing)
    assert "training.png" not in open(path).read()
    assert not (tmp_path / "without" / "training.png").exists()

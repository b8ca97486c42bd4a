"""Is the evaluator any good? Diagnostics of its scores, and the baselines it must beat.

Selection metrics (voting.py) say how often re-ranking picks a right answer; these say why.
For scores s_i (the evaluator's S, or the generator's mean token log-probability) and grades
c_i of every sample:

  auc            P(s_i > s_j) + P(s_i = s_j) / 2 over all samples i correct, j incorrect
                 (pooled over problems: can S tell right from wrong at all?)
  pair_accuracy  the same over (correct, incorrect) pairs of one problem only, pooled over
                 every such pair: what re-ranking inside a problem relies on
  calibration    equal-width bins of S in [0, 1]: each bin's mean S against its accuracy;
                 ECE = sum_b (n_b / n) |accuracy_b - mean S_b|
  histogram      counts of S per bin, correct and incorrect samples apart

Baselines, per problem (as the metrics in voting.py, then averaged):

  rr_ll_all      c_{argmax_i l_i}, l_i the generator's mean token log-probability
  rr_ll_topk     the same inside the top-K clusters
  random_topk    E[c_{i}] for i uniform over the samples of the top-K clusters, computed
                 exactly: sum_{j<=K} sum_{i in C_j} c_i / sum_{j<=K} |C_j|; what RR.Top-K
                 scores with an evaluator that knows nothing

Deltas (RR.Top-K - Maj1@N and the like) are means of per-problem differences; their 95%
interval is a paired bootstrap: problems are resampled, each keeping both of its values.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from mathft_jax.results import voting

BINS = 10
BASELINES = ("rr_ll_all", "rr_ll_topk", "random_topk")
DELTAS = (("rr_topk", "maj1_at_n"), ("rr_topk", "random_topk"), ("rr_topk", "rr_ll_topk"),
          ("rr_ll_topk", "maj1_at_n"))


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve of `scores` for `labels` (ties count 1/2); None without
    both a positive and a negative. By ranks (Mann-Whitney U): O(n log n)."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # 1-based average ranks of tied groups
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _pair_wins(scores: np.ndarray, correct: np.ndarray) -> tuple[float, int]:
    """(wins, pairs) over this problem's (correct, incorrect) pairs; a tie is half a win."""
    pos, neg = scores[correct], scores[~correct]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins), pos.size * neg.size


def pair_accuracy(scores: Sequence[Sequence[float]], correct: Sequence[Sequence[bool]]) -> dict:
    """Within-problem pair accuracy, pooled over every (correct, incorrect) pair:
    {"value" (None without pairs), "pairs", "problems" (those with at least one pair)}."""
    wins = pairs = problems = 0
    for s, c in zip(scores, correct):
        w, n = _pair_wins(np.asarray(s, np.float64), np.asarray(c, bool))
        wins, pairs, problems = wins + w, pairs + n, problems + (n > 0)
    return {"value": wins / pairs if pairs else None, "pairs": pairs, "problems": problems}


def _bin_index(scores: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum((scores * bins).astype(np.int64), bins - 1)  # 1.0 in the last bin


def calibration(scores: Sequence[float], correct: Sequence[bool], bins: int = BINS) -> dict | None:
    """{"ece", "bins": [{"low", "high", "count", "mean_score", "accuracy"}]}, equal-width bins
    on [0, 1] (empty bins: mean_score and accuracy None); None unless every score is in [0, 1]."""
    s, c = np.asarray(scores, np.float64), np.asarray(correct, bool)
    if s.size == 0 or s.min() < 0 or s.max() > 1:
        return None
    index = _bin_index(s, bins)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = index == b
        n = int(inside.sum())
        mean_score = float(s[inside].mean()) if n else None
        accuracy = float(c[inside].mean()) if n else None
        if n:
            ece += n / s.size * abs(accuracy - mean_score)
        rows.append({"low": b / bins, "high": (b + 1) / bins, "count": n,
                     "mean_score": mean_score, "accuracy": accuracy})
    return {"ece": float(ece), "bins": rows}


def histogram(scores: Sequence[float], correct: Sequence[bool], bins: int = BINS) -> dict:
    """{"edges", "correct", "incorrect"}: counts per equal-width bin over the scores' range."""
    s, c = np.asarray(scores, np.float64), np.asarray(correct, bool)
    low, high = (0.0, 1.0) if s.size == 0 or (s.min() >= 0 and s.max() <= 1) else (s.min(), s.max())
    edges = np.linspace(low, high, bins + 1)
    return {"edges": edges.tolist(),
            "correct": np.histogram(s[c], edges)[0].tolist(),
            "incorrect": np.histogram(s[~c], edges)[0].tolist()}


def random_topk(problem: voting.GradedProblem, k: int) -> float:
    """Exact expected correctness of a uniformly random sample of the top-K clusters (0 when
    no sample has an answer, as RR.Top-K)."""
    top = voting.ranked_clusters(problem, range(len(problem.correct)))[:k]
    members = [i for _, m in top for i in m]
    return float(np.mean([problem.correct[i] for i in members])) if members else 0.0


def problem_baselines(problem: voting.GradedProblem, k: int) -> dict:
    """{"rr_ll_all", "rr_ll_topk" (None without log-probabilities), "random_topk"}."""
    ll = {"rr_ll_all": None, "rr_ll_topk": None}
    if problem.mean_logprobs is not None:
        ranked_by_ll = dataclasses.replace(problem, scores=problem.mean_logprobs)
        by_ll = voting.problem_metrics(ranked_by_ll, k)
        ll = {"rr_ll_all": by_ll["rr_all"], "rr_ll_topk": by_ll["rr_topk"]}
    return ll | {"random_topk": random_topk(problem, k)}


def ranking(values: Sequence[Sequence[float]], correct: Sequence[Sequence[bool]]) -> dict:
    """How well per-sample `values` (one list per problem) separate right from wrong."""
    flat = [v for vs in values for v in vs]
    flat_correct = [c for cs in correct for c in cs]
    return {"auc": auc(flat, flat_correct), "pair_accuracy": pair_accuracy(values, correct),
            "samples": len(flat), "correct": int(sum(flat_correct))}


def summarize(problems: Sequence[voting.GradedProblem], k: int, n_resamples: int = 1000,
              seed: int = 0) -> dict:
    """{"evaluator": ranking + calibration + histogram of S (None without scores; calibration
    None unless every score is a label evaluator's probability in [0, 1]),
    "loglik": ranking of the mean log-probability (None without it),
    "baselines": {name: {value, ci_low, ci_high, n_problems}},
    "deltas": {"a - b": {value, ci_low, ci_high, n_problems}}} (paired bootstrap)."""
    scored = [p for p in problems if p.scores is not None]
    with_ll = [p for p in problems if p.mean_logprobs is not None]
    evaluator = None
    if scored:
        flat_s = [s for p in scored for s in p.scores]
        flat_c = [c for p in scored for c in p.correct]
        probabilities = all(p.score_method == "label" for p in scored)
        evaluator = (ranking([p.scores for p in scored], [p.correct for p in scored])
                     | {"calibration": calibration(flat_s, flat_c) if probabilities else None,
                        "histogram": histogram(flat_s, flat_c)})
    loglik = (ranking([p.mean_logprobs for p in with_ll], [p.correct for p in with_ll])
              if with_ll else None)
    per_problem = [voting.problem_metrics(p, k) | problem_baselines(p, k) for p in problems]
    baselines = {name: _summary([m[name] for m in per_problem], n_resamples, seed)
                 for name in BASELINES}
    deltas = {f"{a} - {b}": _summary([m[a] - m[b] if m[a] is not None and m[b] is not None
                                      else None for m in per_problem], n_resamples, seed)
              for a, b in DELTAS}
    return {"evaluator": evaluator, "loglik": loglik, "baselines": baselines, "deltas": deltas}


def _summary(values: Sequence[float | None], n_resamples: int, seed: int) -> dict:
    kept = [v for v in values if v is not None]
    low, high = voting.bootstrap_ci(kept, n_resamples, seed)
    value = float(np.mean(kept)) if kept else None
    return {"value": value, "ci_low": low if kept else None, "ci_high": high if kept else None,
            "n_problems": len(kept)}


# ----------------------------------------------------------------------------- text


def label(name: str, k: int) -> str:
    """Display names of baselines and metrics, deltas as "A − B"."""
    if " - " in name:
        return " − ".join(label(part, k) for part in name.split(" - "))
    extra = {"rr_ll_all": "RR.LL.All", "rr_ll_topk": f"RR.LL.Top-{k}",
             "random_topk": f"Random.Top-{k}"}
    return extra.get(name) or voting.metric_label(name, k)


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(diagnostics: dict, k: int) -> str:
    """The diagnostics as markdown tables (values; baselines and deltas in percent)."""
    lines = ["| ranking by | AUC | within-problem pair accuracy | pairs | ECE |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, key in (("evaluator S", "evaluator"), ("generator mean log-prob", "loglik")):
        entry = diagnostics[key]
        if entry is None:
            lines.append(f"| {name} | n/a | n/a | 0 | n/a |")
            continue
        ece = (entry.get("calibration") or {}).get("ece")
        pairs = entry["pair_accuracy"]
        lines.append(f"| {name} | {_num(entry['auc'])} | {_num(pairs['value'])} | "
                     f"{pairs['pairs']} | {_num(ece)} |")
    lines += ["", "| baseline / difference | value (%) | 95% CI (%) | problems |",
              "| --- | ---: | ---: | ---: |"]
    for group, form in (("baselines", ".2f"), ("deltas", "+.2f")):
        for name, e in diagnostics[group].items():
            if e["value"] is None:
                lines.append(f"| {label(name, k)} | n/a | n/a | 0 |")
                continue
            value, low, high = (f"{100 * e[key]:{form}}" for key in ("value", "ci_low", "ci_high"))
            lines.append(f"| {label(name, k)} | {value} | [{low}, {high}] | {e['n_problems']} |")
    lines.append("\nDifferences are paired over problems (bootstrap 95% interval). "
                 f"Random.Top-{k} is the exact expectation of re-ranking the top-{k} clusters "
                 "by random scores.")
    calib = (diagnostics["evaluator"] or {}).get("calibration")
    if diagnostics["evaluator"] and not calib:
        lines.append("S ranks candidates but is not a probability of being right (a "
                     "likelihood score, or scores outside [0, 1]): no calibration.")
    if calib:
        lines += ["", "| S bin | samples | mean S | accuracy |", "| --- | ---: | ---: | ---: |"]
        last = calib["bins"][-1]["high"]  # the last bin holds S = 1.0 too (_bin_index)
        lines += [f"| [{b['low']:.1f}, {b['high']:.1f}{']' if b['high'] == last else ')'} | "
                  f"{b['count']} | {_num(b['mean_score'])} | {_num(b['accuracy'])} |"
                  for b in calib["bins"] if b["count"]]
    return "\n".join(lines)

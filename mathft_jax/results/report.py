"""The paper-style report of a pipeline run: a results table and two plots.

  report.md             the table (every metric, 95% bootstrap CI, per generator)
  accuracy_vs_n.png     Maj1, RR.Top-K and W.RR.MajK against N (N subsampled 1..max)
  ssft_vs_mtsf.png      every metric, SSFT generator against MTSF generator
  evaluator_<gen>.png   the evaluator's reliability diagram and its score histograms by
                        correctness, on that generator's candidates (diagnostics.py; the
                        report also tabulates AUC, pair accuracy, ECE, the baselines and
                        RR.Top-K - Maj1@N with a paired bootstrap interval)
  training.png          each training stage's curves from its metrics.jsonl (a pipeline
                        run's report only)
"""
from __future__ import annotations

import math
import os
from typing import Mapping, Optional, Sequence

from mathft_jax.core import atomic
from mathft_jax.results import diagnostics, voting

CURVE_METRICS = ("maj1_at_n", "rr_topk", "wrr_majk")
NAMES = {"ssft": "SSFT", "mtsf": "MTSF", "dpo": "DPO", "grpo": "GRPO"}
# What training.png draws of a stage's metrics.jsonl: its loss, and the held-out loss where
# it was measured; for GRPO, whose loss says little of progress, its reward and accuracy.
TRAINING_CURVES = {"grpo": ("grpo/reward", "grpo/accuracy")}
LOSS_CURVES = ("train/loss", "eval/loss")


def results_table(results: Mapping[str, dict]) -> str:
    """Markdown: one row per metric, one column per generator, value [95% CI] in percent."""
    gens = list(results)
    k = results[gens[0]]["k"]
    head = "| metric | " + " | ".join(NAMES.get(g, g) for g in gens) + " |"
    rows = [head, "| --- |" + " ---: |" * len(gens)]
    for name in voting.METRICS:
        cells = []
        for g in gens:
            e = results[g]["metrics"][name]
            cells.append("n/a" if e["value"] is None else
                         f"{100 * e['value']:.1f} [{100 * e['ci_low']:.1f}, {100 * e['ci_high']:.1f}]")
        rows.append(f"| {voting.metric_label(name, k)} | " + " | ".join(cells) + " |")
    n = results[gens[0]]
    rows.append(f"\n{n['n_problems']} problems, N = {n['n_samples']['max']} samples each, K = {k}; "
                "values in %, 95% bootstrap intervals over problems.")
    return "\n".join(rows)


def accuracy_vs_n(problems: Sequence[voting.GradedProblem], k: int, repeats: int = 4,
                  metrics: Sequence[str] = CURVE_METRICS) -> dict:
    """{metric: [(n, value)]} for n = 1, 2, 4, ... up to the samples per problem: each metric
    over n of each problem's samples (`voting.metrics_at_n`, `repeats` draws averaged)."""
    top = max((len(p.correct) for p in problems), default=0)
    ns = sorted({min(2 ** i, top) for i in range(0, max(top, 1).bit_length() + 1)} - {0})
    curves = {m: [] for m in metrics}
    for n in ns:
        m = voting.metrics_at_n(problems, n, k, seed=0, repeats=repeats, n_resamples=1)
        for name in metrics:
            if m[name]["value"] is not None:
                curves[name].append((n, m[name]["value"]))
    return curves


def write_report(out_dir: str, results: Mapping[str, dict],
                 graded: Mapping[str, Sequence[voting.GradedProblem]], k: int,
                 training: Optional[Mapping[str, Sequence[dict]]] = None) -> str:
    """report.md and its plots in out_dir. `training`: {stage: its metrics.jsonl rows},
    drawn in training.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    final = list(results)[-1]
    curves = accuracy_vs_n(graded[final], k)
    plot_curves(os.path.join(out_dir, "accuracy_vs_n.png"), curves,
                {name: voting.metric_label(name, k) for name in curves},
                f"Accuracy against N ({NAMES.get(final, final)} generator)")

    fig, ax = plt.subplots(figsize=(8, 4))
    names = [m for m in voting.METRICS if all(results[g]["metrics"][m]["value"] is not None
                                               for g in results)]
    width = 0.8 / len(results)
    for i, g in enumerate(results):
        vals = [results[g]["metrics"][m]["value"] for m in names]
        lo = [v - results[g]["metrics"][m]["ci_low"] for v, m in zip(vals, names)]
        hi = [results[g]["metrics"][m]["ci_high"] - v for v, m in zip(vals, names)]
        ax.bar([j + i * width for j in range(len(names))], vals, width, yerr=[lo, hi],
               capsize=3, label=NAMES.get(g, g))
    ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels([voting.metric_label(m, k) for m in names], rotation=30, ha="right")
    ax.set_ylabel("accuracy")
    ax.set_title(" against ".join(NAMES.get(g, g) for g in results) if len(results) > 1
                 else "Metrics")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, os.path.join(out_dir, "ssft_vs_mtsf.png"))

    text = ["# mathft_jax pipeline report", "", results_table(results), "",
            "![accuracy against N](accuracy_vs_n.png)", "", "![SSFT against MTSF](ssft_vs_mtsf.png)", ""]
    if training and plot_training(os.path.join(out_dir, "training.png"), training):
        text += ["![training curves](training.png)", ""]
    for g, result in results.items():
        if "diagnostics" not in result:  # results.json of an older run
            continue
        name = NAMES.get(g, g)
        text += [f"## Evaluator diagnostics and baselines ({name} generator's candidates)", "",
                 diagnostics.markdown(result["diagnostics"], k), ""]
        if result["diagnostics"]["evaluator"] is not None:
            png = f"evaluator_{g}.png"
            plot_evaluator(os.path.join(out_dir, png), result["diagnostics"]["evaluator"],
                           f"Evaluator on the {name} generator's candidates")
            text += [f"![evaluator diagnostics, {name}]({png})", ""]
    path = os.path.join(out_dir, "report.md")
    atomic.write_text(path, "\n".join(text))
    return path


def plot_curves(path: str, curves: Mapping[str, Sequence[tuple]], labels: Mapping[str, str],
                title: str, xlabel: str = "N (samples per problem)") -> None:
    """Accuracy curves {name: [(n, value)]} against n (log 2), one line each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in curves.items():
        if points:
            ax.plot(*zip(*points), marker="o", label=labels[name])
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_training(path: str, training: Mapping[str, Sequence[dict]]) -> bool:
    """One panel per training stage: `TRAINING_CURVES` (default `LOSS_CURVES`) against its
    step. The rows of one step merge, the later values winning (a resumed stage logs the
    steps after its checkpoint again). False, and no file, where no stage logged any."""
    curves = {}
    for stage, rows in training.items():
        by_step = {}
        for row in rows:
            if isinstance(row.get("step"), int):
                by_step.setdefault(row["step"], {}).update(row)
        lines = {key: [(step, by_step[step][key]) for step in sorted(by_step)
                       if isinstance(by_step[step].get(key), (int, float))
                       and math.isfinite(by_step[step][key])]
                 for key in TRAINING_CURVES.get(stage, LOSS_CURVES)}
        lines = {key: points for key, points in lines.items() if points}
        if lines:
            curves[stage] = lines
    if not curves:
        return False
    import matplotlib
    import numpy as np
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.5), squeeze=False)
    for ax, (stage, lines) in zip(axes[0], curves.items()):
        for i, (key, points) in enumerate(lines.items()):
            steps, values = zip(*points)
            if len(points) <= 20:
                ax.plot(steps, values, marker="o", ms=3, color=f"C{i}", label=key)
                continue
            # Noisy per-step values (GRPO's 5 prompts an iteration): faint, under the
            # trailing mean of a tenth of the run.
            w = len(points) // 10
            sums = np.cumsum((0.0,) + values)
            ax.plot(steps, values, color=f"C{i}", alpha=0.3, lw=1)
            ax.plot(steps[w - 1:], (sums[w:] - sums[:-w]) / w, color=f"C{i}",
                    label=f"{key} (mean of {w})")
        ax.set_title(stage)
        ax.set_xlabel("iteration" if stage == "grpo" else "step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    return True


def save_figure(fig, path: str) -> None:
    """A PNG, whole or absent, locally or on gs:// (matplotlib writes local files only)."""
    import io

    import matplotlib.pyplot as plt
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic.write_bytes(path, buffer.getvalue())


def plot_evaluator(path: str, evaluator: dict, title: str) -> None:
    """Reliability diagram (accuracy and mean S per bin against the diagonal) beside the
    histograms of S for correct and incorrect samples. Scores that are not probabilities
    (a likelihood evaluator's) get the accuracy per bin of S alone, with no diagonal;
    scores outside [0, 1] get neither."""
    import matplotlib
    import numpy as np
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rel, hist) = plt.subplots(1, 2, figsize=(10, 4))
    calib = evaluator.get("calibration")
    if calib:
        bins = [b for b in calib["bins"] if b["count"]]
        width = bins[0]["high"] - bins[0]["low"] if bins else 0.1
        rel.bar([b["low"] for b in bins], [b["accuracy"] for b in bins], width, align="edge",
                alpha=0.6, edgecolor="k", label="accuracy")
        rel.plot([b["mean_score"] for b in bins], [b["accuracy"] for b in bins], "o",
                 color="C3", label="(mean S, accuracy)")
        rel.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
        rel.set_title(f"Reliability (ECE {calib['ece']:.3f})")
        rel.legend(loc="upper left")
    elif evaluator["histogram"]["edges"][0] >= 0 and evaluator["histogram"]["edges"][-1] <= 1:
        h = evaluator["histogram"]
        right, wrong = np.asarray(h["correct"], float), np.asarray(h["incorrect"], float)
        seen = right + wrong > 0
        rel.bar(np.asarray(h["edges"][:-1])[seen], (right / np.maximum(right + wrong, 1))[seen],
                np.diff(h["edges"])[seen], align="edge", alpha=0.6, edgecolor="k")
        rel.set_title("Accuracy by S (S ranks; not a probability)")
    else:
        rel.text(0.5, 0.5, "scores outside [0, 1]: no calibration", ha="center")
    rel.set_xlabel("S (evaluator score)")
    rel.set_ylabel("fraction correct")
    rel.set_xlim(0, 1)
    rel.set_ylim(0, 1)
    h = evaluator["histogram"]
    edges = h["edges"]
    hist.stairs(h["correct"], edges, lw=2, label="correct")
    hist.stairs(h["incorrect"], edges, lw=2, label="incorrect")
    pairs = evaluator["pair_accuracy"]["value"]
    auc = evaluator["auc"]
    hist.set_title(f"S by correctness (AUC {'n/a' if auc is None else f'{auc:.3f}'}, "
                   f"pair acc. {'n/a' if pairs is None else f'{pairs:.3f}'})")
    hist.set_xlabel("S (evaluator score)")
    hist.set_ylabel("samples")
    hist.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)

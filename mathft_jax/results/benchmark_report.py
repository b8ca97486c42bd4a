"""The report of one model on a benchmark suite (`python -m mathft_jax.evaluate_model`): one
table, a row per benchmark, and a plot per benchmark of accuracy against the samples drawn.

  report.md               the table (Pass@1, Maj1@N, Pass@N with 95% bootstrap intervals,
                          problems, grader, prompt), the graders compared where asked
  accuracy_<name>.png     Pass@k and Maj1@k for k = 1, 2, 4, ... N (`report.accuracy_vs_n`)

A benchmark of few problems cannot tell models apart by a few points (AIME24's 30, AMC23's
40): its row says how wide a 95% interval can be there, whatever this model scored.
"""
from __future__ import annotations

import math
import os
from typing import Mapping

from mathft_jax.core import atomic
from mathft_jax.results import report

TABLE_METRICS = ("pass_at_1", "maj1_at_n", "pass_at_n")
CURVES = ("pass_at_n", "maj1_at_n")  # over k of the N samples: Pass@k, Maj1@k
CURVE_LABELS = {"pass_at_n": "Pass@k", "maj1_at_n": "Maj1@k"}
# A row is flagged where a 95% interval at 50% accuracy (the widest) would exceed
# +-WIDE_HALF_WIDTH: below ~96 problems; MATH500's is +-4.4 points, AIME24's +-17.9.
WIDE_HALF_WIDTH = 0.10
Z_95 = 1.959964


def widest_half_width(n_problems: int) -> float:
    """Half the width of a 95% normal interval of a mean of 0/1 values at p = 0.5."""
    return Z_95 * math.sqrt(0.25 / n_problems) if n_problems else math.inf


def _cell(entry: dict) -> str:
    if entry["value"] is None:
        return "n/a"
    return (f"{100 * entry['value']:.1f} [{100 * entry['ci_low']:.1f}, "
            f"{100 * entry['ci_high']:.1f}]")


def _note(n_problems: int) -> str:
    half = widest_half_width(n_problems)
    return f"few problems: a 95% CI spans up to ±{100 * half:.0f} pts" \
        if half > WIDE_HALF_WIDTH else ""


def benchmark_table(results: Mapping[str, dict]) -> str:
    """Markdown: one row per benchmark (a result of `evaluate.summarize_problems` with its
    `grading` and `prompt`), values in percent with 95% bootstrap intervals over problems."""
    head = ["benchmark", "Pass@1", "Maj1@N", "Pass@N", "problems", "N", "grader", "prompt",
            "note"]
    rows = ["| " + " | ".join(head) + " |",
            "| --- |" + " ---: |" * 5 + " --- | --- | --- |"]
    for name, result in results.items():
        cells = [_cell(result["metrics"][metric]) for metric in TABLE_METRICS]
        rows.append("| " + " | ".join([
            name, *cells, str(result["n_problems"]), str(result["n_samples"]["max"]),
            result["grading"]["grader"], result["prompt"], _note(result["n_problems"])]) + " |")
    rows.append("\nValues in %, [95% bootstrap interval over problems]; N samples per problem.")
    return "\n".join(rows)


def comparison_table(results: Mapping[str, dict]) -> str:
    """Markdown: per benchmark, how often the compared graders agree on a sample, and Pass@1
    and Maj1@N under each (percent); empty where no benchmark compared graders."""
    compared = {name: r["comparison"] for name, r in results.items() if "comparison" in r}
    if not compared:
        return ""
    graders = next(iter(compared.values()))["graders"]
    head = ["benchmark", "samples", "agree"] + [f"{metric} {grader}" for grader in graders
                                                for metric in ("Pass@1", "Maj1@N")]
    rows = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for name, comparison in compared.items():
        values = [comparison["metrics"][grader][metric]["value"] for grader in graders
                  for metric in ("pass_at_1", "maj1_at_n")]
        agree = comparison["agreement"]
        rows.append("| " + " | ".join(
            [name, str(comparison["samples"]),
             "n/a" if agree is None else f"{100 * agree:.1f}%"]
            + ["n/a" if v is None else f"{100 * v:.1f}" for v in values]) + " |")
    return "\n".join(rows)


def write_benchmark_report(out_dir: str, results: Mapping[str, dict], title: str) -> str:
    """report.md and one accuracy_<name>.png per benchmark (from each result's `curves`)."""
    text = [f"# {title}", "", benchmark_table(results), ""]
    compared = comparison_table(results)
    if compared:
        text += ["## Graders compared", "", compared, ""]
    for name, result in results.items():
        png = f"accuracy_{name}.png"
        report.plot_curves(os.path.join(out_dir, png), result["curves"], CURVE_LABELS, name,
                           xlabel="k (samples per problem)")
        text += [f"## {name}", "", f"![{name}: accuracy against k]({png})", ""]
    path = os.path.join(out_dir, "report.md")
    atomic.write_text(path, "\n".join(text))
    return path


def curves_of(problems, k: int) -> dict:
    """{"pass_at_n": [(k, value)], "maj1_at_n": [...]}: `report.accuracy_vs_n` of CURVES."""
    return report.accuracy_vs_n(problems, k, metrics=CURVES)


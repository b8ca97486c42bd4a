"""Graders side by side on a candidates file's records: verdicts, agreement and disagreements.

`grade_record` is the per-record unit (picklable, for `parallel.parallel_map`);
`agreement_report` counts how often the graders agree and lists every sample where they do not
(answer, gold, each verdict), for a JSONL that explains why numbers differ from a paper's.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

from mathft_jax.grading.graders import get_grader, grade


def grade_record(record: dict, grader: str,
                 policy: str = "strict") -> list[tuple[str | None, bool]]:
    """(answer, correct) per sample. A sample's text is re-extracted under `policy`; a sample
    without text is judged on its stored answer."""
    verdicts = []
    for sample in record["samples"]:
        text = sample.get("text") or None
        verdict = grade(text, record["gold"], policy=policy, grader=grader,
                        answer=None if text else sample.get("answer"),
                        tolerance=record.get("gold_tolerance"))
        verdicts.append((verdict.answer, verdict.correct))
    return verdicts


def agreement_report(records: Sequence[dict], graders: Sequence[str], policy: str = "strict",
                     verdicts: dict[str, list] | None = None) -> tuple[dict, list[dict]]:
    """(summary, disagreements). `verdicts` (grader -> `grade_record` results per record) may be
    computed elsewhere, e.g. over a process pool; missing graders are graded here."""
    if len(graders) < 2:
        raise ValueError("comparing graders needs at least two names")
    for name in graders:
        get_grader(name)  # unknown or unavailable names fail before any work
    verdicts = dict(verdicts or {})
    for name in graders:
        if name not in verdicts:
            verdicts[name] = [grade_record(record, name, policy) for record in records]
    samples = agree = 0
    correct = {name: 0 for name in graders}
    pairwise = {f"{a}|{b}": 0 for a, b in itertools.combinations(graders, 2)}
    disagreements = []
    for index, record in enumerate(records):
        for position in range(len(record["samples"])):
            answers = {name: verdicts[name][index][position][0] for name in graders}
            judged = {name: verdicts[name][index][position][1] for name in graders}
            samples += 1
            for name in graders:
                correct[name] += judged[name]
            for a, b in itertools.combinations(graders, 2):
                pairwise[f"{a}|{b}"] += judged[a] == judged[b]
            if len(set(judged.values())) == 1:
                agree += 1
            else:
                disagreements.append({"problem_id": record["problem_id"], "sample": position,
                                      "answer": answers[graders[0]], "gold": record["gold"],
                                      "verdicts": judged})
    summary = {"graders": list(graders), "policy": policy, "samples": samples, "agree": agree,
               "agreement": agree / samples if samples else None,
               "correct": correct, "pairwise_agree": pairwise}
    return summary, disagreements

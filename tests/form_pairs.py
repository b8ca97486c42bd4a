"""The labelled forms of tests/data/form_pairs.tsv, by family: shared by
tests/test_grading_rules.py (our grader gets every row right) and bench/grader.py (accuracy
per family against math-verify)."""
from __future__ import annotations

import pathlib
from typing import NamedTuple

FILE = pathlib.Path(__file__).parent / "data" / "form_pairs.tsv"


class FormPair(NamedTuple):
    family: str
    correct: bool
    kind: str  # "answer": `answer` is an answer; "text": a whole unboxed solution
    answer: str
    gold: str


def load() -> list[FormPair]:
    rows = [line.split("\t") for line in FILE.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]
    return [FormPair(family, label == "1", kind, answer.replace("⏎", "\n"), gold)
            for family, label, kind, answer, gold in rows]

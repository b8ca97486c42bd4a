"""The labelled pair set (tests/data/equiv_pairs.tsv): the grader gets every pair right.

`lenient-*` rows hold a whole solution in column a (⏎ for a line break), graded with the
lenient extraction policy; the strict policy finds no answer in any of them.
"""
import collections
import pathlib

import pytest

from mathft_jax.grading import answer_key, extract_answer, grade, is_equiv

PAIRS_FILE = pathlib.Path(__file__).parent / "data" / "equiv_pairs.tsv"
CATEGORIES = {"integer", "fraction", "decimal", "radical", "pi", "exponent", "scientific", "thousands",
              "degrees", "units", "percent", "tuple", "list", "interval", "union", "matrix", "equation",
              "inequality", "complex", "base", "choice", "text", "expression", "mixed", "knownbug",
              "lenient-sentence", "lenient-language", "lenient-closing", "lenient-number",
              "lenient-text"}


def load_pairs():
    pairs = []
    for number, line in enumerate(PAIRS_FILE.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip() and not line.startswith("#"):
            category, label, a, b = line.split("\t")
            a = a.replace("⏎", "\n")
            pairs.append(pytest.param(category, label == "1", a, b, id=f"{number}-{category}"))
    return pairs


PAIRS = load_pairs()


def test_pair_set_size_balance_and_coverage():
    labels = collections.Counter(p.values[1] for p in PAIRS)
    assert len(PAIRS) >= 400
    assert labels[False] / len(PAIRS) >= 0.35
    by_category = collections.defaultdict(set)
    for p in PAIRS:
        by_category[p.values[0]].add(p.values[1])
    assert set(by_category) == CATEGORIES
    assert all(both == {True, False} for both in by_category.values()), by_category


@pytest.mark.parametrize("category, equivalent, a, b", PAIRS)
def test_pair(category, equivalent, a, b):
    if category.startswith("lenient"):
        assert grade(a, b, policy="lenient").correct is equivalent
        assert extract_answer(a) is None  # strict, the default, does not guess
        return
    assert is_equiv(a, b) is equivalent
    assert is_equiv(b, a) is equivalent
    if not equivalent:
        assert answer_key(a) != answer_key(b)


# The known bugs of public graders, each on its own.
def test_lists_keep_every_element():
    assert not is_equiv("1,-2", "1,-3")
    assert not is_equiv("1, -2", "-2")
    assert is_equiv("1,-2", "-2, 1")


def test_percent_is_not_divided_by_100():
    assert not is_equiv("50", "0.5")
    assert not is_equiv("50\\%", "0.5")
    assert is_equiv("50\\%", "50")


def test_text_answer_is_not_mangled():
    assert is_equiv("\\text{Sandy}", "Sandy")
    assert not is_equiv("\\text{Sandy}", "\\text{Devon}")
    assert not is_equiv("\\text{Sandy}", "")


def test_near_equal_decimals_are_different():
    assert not is_equiv("3.14159", "3.1416")
    assert not is_equiv("3.14", "\\pi")
    assert is_equiv("3.1416", "3.14160")

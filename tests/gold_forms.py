"""Spellings of a benchmark's gold answer that the benchmark accepts: shared by
tests/test_data_benchmarks.py (every one grades correct) and bench/grader.py (our grader and
math-verify on them, and the time to grade them)."""
from __future__ import annotations

import re
from fractions import Fraction


def rerendered(gold: str, name: str) -> list[str]:
    """`27.0` for 27, a fraction for a decimal, thousands separators, `25` for `025`, the file's
    own JSON spelling for AMC23, a group in braces with spaces."""
    forms = [f"{{ {gold} }}"]
    if re.fullmatch(r"-?\d+", gold):
        forms += [f"{int(gold)}.0", str(int(gold))]
        if abs(int(gold)) >= 1000:
            forms.append(f"{int(gold):,}")
    elif re.fullmatch(r"-?\d*\.\d+", gold):
        value = Fraction(gold)
        sign = "-" if value < 0 else ""
        forms.append(f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}")
    if name == "amc23":
        forms.append(repr(float(gold)))
    return forms


def gold_forms(gold: str | list[str], name: str) -> list[str]:
    """The gold as written and re-rendered; a multiple-answer gold's parts in another order,
    and as a set."""
    if isinstance(gold, list):
        return [", ".join(reversed(gold)), "\\{" + ",".join(gold) + "\\}"]
    return [gold] + rerendered(gold, name)

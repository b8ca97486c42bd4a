"""One-variable linear relations solved exactly, so that `-x > -1` reads as `x < 1`.

math-verify compares an inequality with its negated form (`$-x > -1$` = `$x < 1$`, its
`test_relations_math`) by solving both with sympy; ours is exact rational arithmetic on the
bounded parser's AST (`expr.py`), with no sympy: a side that is not linear in one variable
with rational coefficients is left alone. Pure functions of the AST: the caller parses and
supplies the exact value of a constant subtree (`values.exact_value`, raising ValueError).
"""
from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

Constant = Callable[[tuple], Fraction]  # the exact value of a variable-free AST; ValueError if none


def _linear(node, variable: str, constant: Constant) -> tuple[Fraction, Fraction] | None:
    """(coefficient, constant) of `node` as a linear function of `variable`, or None."""
    kind = node[0]
    if kind == "var":
        return (Fraction(1), Fraction(0)) if node[1] == variable else None
    if kind == "neg":
        inner = _linear(node[1], variable, constant)
        return None if inner is None else (-inner[0], -inner[1])
    if kind == "add":
        terms = [_linear(term, variable, constant) for term in node[1]]
        if any(term is None for term in terms):
            return None
        return sum((t[0] for t in terms), Fraction(0)), sum((t[1] for t in terms), Fraction(0))
    if kind in ("mul", "div"):
        factors = [_linear(f, variable, constant) for f in (node[1] if kind == "mul" else node[1:])]
        if any(f is None for f in factors):
            return None
        if kind == "div":  # a linear numerator over a constant, non-zero denominator
            (a, b), (c, d) = factors
            return (a / d, b / d) if c == 0 and d != 0 else None
        coefficient, offset = Fraction(0), Fraction(1)
        for a, b in factors:  # at most one factor may hold the variable
            if a and coefficient:
                return None
            coefficient, offset = coefficient * b + a * offset, offset * b
        return coefficient, offset
    try:  # a variable, a function of one, an irrational: no rational constant
        return Fraction(0), constant(node)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def _fraction_source(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def solve(left, right, variable: str, constant: Constant) -> tuple[str, bool] | None:
    """(bound, flipped) where `left REL right` (ASTs) is `variable REL' bound`: `flipped` when
    the variable's coefficient is negative (so the relation turns round). None if the sides
    are not linear in `variable` with rational coefficients, or its coefficient is zero."""
    forms = _linear(left, variable, constant), _linear(right, variable, constant)
    if None in forms:
        return None
    coefficient, offset = forms[0][0] - forms[1][0], forms[0][1] - forms[1][1]
    if coefficient == 0:
        return None
    return _fraction_source(-offset / coefficient), coefficient < 0

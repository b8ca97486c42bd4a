"""One-variable linear relations solved exactly, so that `-x > -1` reads as `x < 1`.

math-verify compares an inequality with its negated form (`$-x > -1$` = `$x < 1$`, its
`test_relations_math`) by solving both with sympy; ours is exact rational arithmetic on the
bounded parser's AST, with no sympy: a side that is not linear in one variable with rational
coefficients is left alone.
"""
from __future__ import annotations

from fractions import Fraction

from mathft_jax.grading import expr, values


def _linear(node, variable: str) -> tuple[Fraction, Fraction] | None:
    """(coefficient, constant) of `node` as a linear function of `variable`, or None."""
    kind = node[0]
    if kind == "var":
        return (Fraction(1), Fraction(0)) if node[1] == variable else None
    if kind == "neg":
        inner = _linear(node[1], variable)
        return None if inner is None else (-inner[0], -inner[1])
    if kind == "add":
        terms = [_linear(term, variable) for term in node[1]]
        if any(term is None for term in terms):
            return None
        return sum((t[0] for t in terms), Fraction(0)), sum((t[1] for t in terms), Fraction(0))
    if kind in ("mul", "div"):
        factors = [_linear(f, variable) for f in (node[1] if kind == "mul" else node[1:])]
        if any(f is None for f in factors):
            return None
        if kind == "div":  # a linear numerator over a constant, non-zero denominator
            (a, b), (c, d) = factors
            return (a / d, b / d) if c == 0 and d != 0 else None
        coefficient, constant = Fraction(0), Fraction(1)
        for a, b in factors:  # at most one factor may hold the variable
            if a and coefficient:
                return None
            coefficient, constant = coefficient * b + a * constant, constant * b
        return coefficient, constant
    if expr.free_variables(node):
        return None
    try:
        return Fraction(0), values.exact_value(node)
    except (values.NotRational, values.TooBig, ValueError, ZeroDivisionError, OverflowError):
        return None


def _fraction_source(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def solve(lhs: str, rhs: str) -> tuple[str, str, bool] | None:
    """(variable, bound, flipped) where `lhs REL rhs` is `variable REL' bound`: `flipped` when
    the variable's coefficient is negative (so the relation turns round). None if the sides
    are not linear in exactly one variable with a non-zero rational coefficient."""
    try:
        left, right = expr.parse_expression(lhs), expr.parse_expression(rhs)
    except (expr.ParseError, ValueError, ZeroDivisionError):
        return None
    variables = expr.free_variables(left) | expr.free_variables(right)
    if len(variables) != 1:
        return None
    (variable,) = variables
    forms = _linear(left, variable), _linear(right, variable)
    if None in forms:
        return None
    coefficient, constant = forms[0][0] - forms[1][0], forms[0][1] - forms[1][1]
    if coefficient == 0:
        return None
    return variable, _fraction_source(-constant / coefficient), coefficient < 0

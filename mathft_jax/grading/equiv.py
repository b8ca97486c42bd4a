"""`is_equiv` and `answer_key`: structural comparison of normalised answers.

Scalars go through a fast exact path (rationals), then guarded 50-digit numerics, and only
expressions with free variables that agree numerically reach sympy, in the bounded helper
process pool (`timeout.py`). Equal keys imply equivalence by construction: `is_equiv` returns
True on equal keys before comparing anything. Keys are bounded by size guards alone; the
comparison after them shares one deadline per call (`deadline.py`) and is False when it runs out.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Hashable, Sequence
from fractions import Fraction

from mathft_jax.grading import expr, timeout, values
from mathft_jax.grading.deadline import Deadline, DeadlineExceeded
from mathft_jax.grading.normalize import MAX_ANSWER_CHARS, normalize_parts
from mathft_jax.grading.structure import parse_structure, split_top

_TRIALS = 3
_CACHE = 1 << 16
# math-verify's `verify(..., float_rounding=6)` (its default, math_verify/grader.py
# `sympy_numeric_eq`): a decimal and a value it cannot equal exactly (1/12, pi) agree when both
# round to the same 6 decimal places: `0.0833333333` is 1/12, `0.0833` and `3.14159` are not.
FLOAT_ROUNDING = 6
_DECIMAL = re.compile(r"^-?\d*\.\d+$")
# OlympiadBench's numerical_equal: |answer - gold| <= 1.01 * precision.
TOLERANCE_SLACK = 1.01


@functools.lru_cache(maxsize=_CACHE)
def _analyse(answer: str):
    """(normalised, structure, key, prefix variable) of an answer string; never raises.
    The prefix is the `y` of `y = ...`, which the key leaves out (`x = 3` is `3`)."""
    if len(answer) > MAX_ANSWER_CHARS:  # compared verbatim, in bounded time
        return answer, ("text", answer), ("raw", answer), None
    try:
        normal, prefix = normalize_parts(answer)
        node = parse_structure(normal)
        return normal, node, _key(node), prefix
    except Exception:  # noqa: BLE001 - a grader must never raise on garbage
        return answer, ("text", answer), ("raw", answer), None


@functools.lru_cache(maxsize=_CACHE)
def _scalar_info(source: str):
    """(ast, exact rational or None, free variables) of a scalar; ast None if unreadable."""
    try:
        ast = expr.parse_expression(source)
    except (expr.ParseError, ValueError, ZeroDivisionError):
        return None, None, frozenset()
    try:
        exact = values.exact_value(ast)
    except (values.NotRational, values.TooBig, ValueError, ZeroDivisionError, OverflowError):
        exact = None
    return ast, exact, expr.free_variables(ast)


def _key(node) -> Hashable:
    kind = node[0]
    if kind == "scalar":
        exact = _scalar_info(node[1])[1]
        return ("q", exact) if exact is not None else ("s", node[1])
    if kind == "text":
        return ("t", node[1])
    if kind == "seq":
        return ("seq", node[1], node[2], tuple(_key(item) for item in node[3]))
    if kind in ("set", "union"):
        return (kind, tuple(sorted((_key(item) for item in node[1]), key=_sort_text)))
    if kind == "matrix":
        return ("matrix", tuple(tuple(_key(cell) for cell in row) for row in node[1]))
    return ("eq", _key(node[1]), _key(node[2]))


def _sort_text(key) -> str:
    """A canonical text for ordering keys: like repr, but integers in hex, since Python
    refuses decimal text for integers over 4,300 digits (`10^{5000}` is a fine answer)."""
    if isinstance(key, tuple):
        return "(" + ",".join(map(_sort_text, key)) + ")"
    if isinstance(key, Fraction):
        return f"{key.numerator:x}/{key.denominator:x}"
    return repr(key)


def _numeric_at(ast, variables, trial, deadline):
    point = {name: values.variable_point(name, trial) for name in variables}
    return values.numeric_value(ast, point, deadline)


def _sympy_equal(ast_a, ast_b, deadline: Deadline) -> bool:
    timeout_s = min(timeout.DEFAULT_TIMEOUT_S, deadline.remaining())
    if timeout_s <= 0:
        raise DeadlineExceeded
    if max(values.expanded_terms(ast_a), values.expanded_terms(ast_b)) > values.MAX_EXPANDED_TERMS:
        return False  # refused by size: the same on any machine, at any load
    sources = values.to_sympy_source(ast_a), values.to_sympy_source(ast_b)
    return timeout.HELPERS.equal(*sources, timeout_s=timeout_s) is True


def _terminates(exact: Fraction | None) -> bool:
    """Whether a value has a finite decimal expansion (a rational over 2^a 5^b)."""
    if exact is None:
        return False
    denominator = exact.denominator
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    return denominator == 1


def _rounded_alike(a: str, value_a, exact_a, b: str, value_b, exact_b) -> bool:
    """math-verify's rounding rule (FLOAT_ROUNDING), where one side is written as a decimal
    and the other has no finite decimal expansion; decimals among themselves stay exact."""
    for decimal, other, other_exact in ((a, value_b, exact_b), (b, value_a, exact_a)):
        if _DECIMAL.match(decimal) and not _terminates(other_exact) and values.is_real(other):
            try:
                return values.rounded(Fraction(decimal), FLOAT_ROUNDING) == values.rounded(
                    other_exact if other_exact is not None else other, FLOAT_ROUNDING)
            except (ArithmeticError, ValueError):  # too many digits to round: not alike
                return False
    return False


def _within(value_a, value_b, tolerance: float | None) -> bool:
    """OlympiadBench's tolerance rule for numeric answers, where the record gives one."""
    return tolerance is not None and values.is_real(value_a) and values.is_real(value_b) and \
        abs(value_a - value_b) <= TOLERANCE_SLACK * tolerance


def _scalars_equal(a: str, b: str, deadline: Deadline, tolerance: float | None = None) -> bool:
    if a == b:
        return True
    ast_a, exact_a, vars_a = _scalar_info(a)
    ast_b, exact_b, vars_b = _scalar_info(b)
    if ast_a is None or ast_b is None:
        return False
    if exact_a is not None and exact_b is not None:
        return exact_a == exact_b or _within(exact_a, exact_b, tolerance) or \
            _rounded_alike(a, exact_a, exact_a, b, exact_b, exact_b)
    variables = vars_a | vars_b
    try:
        for trial in range(_TRIALS if variables else 1):
            value_a = _numeric_at(ast_a, variables, trial, deadline)
            value_b = _numeric_at(ast_b, variables, trial, deadline)
            if not values.close(value_a, value_b):
                return not variables and (_within(value_a, value_b, tolerance) or _rounded_alike(
                    a, value_a, exact_a, b, value_b, exact_b))
    except DeadlineExceeded:
        raise
    except Exception:  # noqa: BLE001 - TooBig, domain errors: cannot show equality
        return False
    if not variables:
        return True
    return _sympy_equal(ast_a, ast_b, deadline)


def _equations_equal(a, b, deadline: Deadline) -> bool:
    """lhs - rhs of one is a constant non-zero multiple of the other's (same plane, line...)."""
    sides = []
    for node in (a, b):
        infos = [_scalar_info(side[1]) for side in node[1:]]
        if any(info[0] is None for info in infos):
            return False
        sides.append((("add", (infos[0][0], ("neg", infos[1][0]))), infos[0][2] | infos[1][2]))
    variables = sides[0][1] | sides[1][1]
    try:
        ratios = []
        for trial in range(_TRIALS):
            d_a, d_b = (_numeric_at(ast, variables, trial, deadline) for ast, _ in sides)
            if values.close(d_b, 0) or values.close(d_a, 0):
                return False
            ratios.append(d_a / d_b)
        return all(values.close(r, ratios[0]) for r in ratios)
    except DeadlineExceeded:
        raise
    except Exception:  # noqa: BLE001
        return False


def _multisets_equal(items_a, items_b, deadline: Deadline, tolerance: float | None = None) -> bool:
    if len(items_a) != len(items_b):
        return False
    unmatched = [(_key(item), item) for item in items_b]
    rest = []
    for item in items_a:  # identical keys first, so a loose match cannot steal an exact one
        key = _key(item)
        match = next((i for i, (other_key, _) in enumerate(unmatched) if other_key == key), None)
        if match is None:
            rest.append(item)
        else:
            unmatched.pop(match)
    for item in rest:
        match = next((i for i, (_, other) in enumerate(unmatched)
                      if _nodes_equal(item, other, deadline, tolerance)), None)
        if match is None:
            return False
        unmatched.pop(match)
    return True


def _vector_entries(node):
    """Entries of a one-row/one-column matrix or a parenthesised tuple, else None."""
    if node[0] == "matrix" and (len(node[1]) == 1 or all(len(row) == 1 for row in node[1])):
        return tuple(cell for row in node[1] for cell in row)
    if node[0] == "seq" and (node[1], node[2]) == ("(", ")"):
        return node[3]
    return None


def _all_equal(items_a, items_b, deadline: Deadline, tolerance: float | None = None) -> bool:
    return len(items_a) == len(items_b) and all(
        _nodes_equal(x, y, deadline, tolerance) for x, y in zip(items_a, items_b))


def _nodes_equal(a, b, deadline: Deadline, tolerance: float | None = None) -> bool:
    """Raises DeadlineExceeded once the call's time is up (checked per element)."""
    deadline.check()
    if _key(a) == _key(b):
        return True
    if a[0] != b[0]:
        entries_a, entries_b = _vector_entries(a), _vector_entries(b)
        if entries_a is None or entries_b is None:
            return False
        return _all_equal(entries_a, entries_b, deadline, tolerance)
    kind = a[0]
    if kind == "scalar":
        return _scalars_equal(a[1], b[1], deadline, tolerance)
    if kind == "seq":
        return a[1:3] == b[1:3] and _all_equal(a[3], b[3], deadline, tolerance)
    if kind in ("set", "union"):
        return _multisets_equal(a[1], b[1], deadline, tolerance)
    if kind == "matrix":
        return [len(r) for r in a[1]] == [len(r) for r in b[1]] and _all_equal(
            [x for row in a[1] for x in row], [y for row in b[1] for y in row], deadline, tolerance)
    if kind == "eq":
        return _equations_equal(a, b, deadline)
    return False  # text: equal only with equal keys


def answer_key(answer: object) -> Hashable:
    """Canonical hashable key: equal keys imply `is_equiv`. None maps to None."""
    if not isinstance(answer, str):
        return None
    return _analyse(answer)[2]


def _prefixed_equation_equal(analysed_a, analysed_b, deadline: Deadline) -> bool:
    """An equation against `v = expression` (whose key is the expression's): the same line,
    plane or curve (`2x+4y-3=0` and `y=-\\frac{1}{2}x+\\frac{3}{4}`), as math-verify's
    `sympy_solve_and_compare` finds by solving both."""
    for (_, equation, _, _), (_, other, _, prefix) in ((analysed_a, analysed_b),
                                                       (analysed_b, analysed_a)):
        if equation[0] == "eq" and other[0] == "scalar" and prefix:
            return _equations_equal(equation, ("eq", ("scalar", prefix), other), deadline)
    return False


def is_equiv(a: object, b: object, timeout_s: float | None = None,
             tolerance: float | None = None) -> bool:
    """Whether two answers are mathematically equivalent. Symmetric; never raises.

    Bounded by `timeout_s` (default `deadline.CALL_TIMEOUT_S`) of the call's own work plus one
    guarded step; a comparison that runs out of time is False (equality not shown).
    `tolerance`: numbers within it (absolute, x 1.01) are equal, as a benchmark's published
    rule grants (docs/benchmarks.md)."""
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    deadline = Deadline(timeout_s)
    if a == b:
        return True
    if b < a:  # canonical order: symmetric even where a greedy match or a timeout is not
        a, b = b, a
    try:
        analysed_a, analysed_b = _analyse(a), _analyse(b)
        if analysed_a[2] == analysed_b[2]:
            return True
        return bool(_nodes_equal(analysed_a[1], analysed_b[1], deadline, tolerance)
                    or _prefixed_equation_equal(analysed_a, analysed_b, deadline))
    except Exception:  # noqa: BLE001 - out of time, or garbage: a grader must never raise
        return False


def parts_equiv(answer: object, parts: Sequence[str], timeout_s: float | None = None,
                tolerance: float | None = None) -> bool:
    """Whether `answer` gives every part of a multiple-answer gold and nothing else: its items
    (a comma list, a set, `a \\pm b`) matched one to one with the parts, in any order, as
    OlympiadBench's judge pairs them. Never raises."""
    if not isinstance(answer, str) or not parts or not all(isinstance(p, str) for p in parts):
        return False
    deadline = Deadline(timeout_s)
    try:
        items = [node for part in parts for node in _items(part)]
        return _multisets_equal(_items(answer), items, deadline, tolerance)
    except Exception:  # noqa: BLE001 - out of time, or garbage: a grader must never raise
        return False


def _items(answer: str) -> list:
    """The items of a list answer, each read on its own (so `x=` on one item goes, as on a
    whole answer) and `a \\pm b` as two (OlympiadBench's `trans_plus_minus_sign`)."""
    normal = _analyse(answer)[0]
    if normal.startswith("\\{") and normal.endswith("\\}"):
        normal = normal[2:-2]
    items = []
    for item in split_top(normal, ","):
        node = _analyse(item)[1]
        items.extend(node[1] if node[0] == "set" else (node,))
    return items

"""`is_equiv` and `answer_key`: structural comparison of normalised answers.

Scalars go through a fast exact path (rationals), then guarded 50-digit numerics, and only
expressions with free variables that agree numerically reach sympy, in the bounded helper
process pool (`timeout.py`). Equal keys imply equivalence by construction: `is_equiv` returns
True on equal keys before comparing anything. Keys are bounded by size guards alone; the
comparison after them shares one deadline per call (`deadline.py`) and is False when it runs out.
"""
from __future__ import annotations

import functools
from collections.abc import Hashable
from fractions import Fraction

from mathft_jax.grading import expr, timeout, values
from mathft_jax.grading.deadline import Deadline, DeadlineExceeded
from mathft_jax.grading.normalize import MAX_ANSWER_CHARS, normalize
from mathft_jax.grading.structure import parse_structure

_TRIALS = 3
_CACHE = 1 << 16


@functools.lru_cache(maxsize=_CACHE)
def _analyse(answer: str):
    """(normalised, structure, key) of an answer string; never raises."""
    if len(answer) > MAX_ANSWER_CHARS:  # compared verbatim, in bounded time
        return answer, ("text", answer), ("raw", answer)
    try:
        normal = normalize(answer)
        node = parse_structure(normal)
        return normal, node, _key(node)
    except Exception:  # noqa: BLE001 - a grader must never raise on garbage
        return answer, ("text", answer), ("raw", answer)


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
    sources = values.to_sympy_source(ast_a), values.to_sympy_source(ast_b)
    return timeout.HELPERS.equal(*sources, timeout_s=timeout_s) is True


def _scalars_equal(a: str, b: str, deadline: Deadline) -> bool:
    if a == b:
        return True
    ast_a, exact_a, vars_a = _scalar_info(a)
    ast_b, exact_b, vars_b = _scalar_info(b)
    if ast_a is None or ast_b is None:
        return False
    if exact_a is not None and exact_b is not None:
        return exact_a == exact_b
    variables = vars_a | vars_b
    try:
        for trial in range(_TRIALS if variables else 1):
            if not values.close(_numeric_at(ast_a, variables, trial, deadline),
                                _numeric_at(ast_b, variables, trial, deadline)):
                return False
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


def _multisets_equal(items_a, items_b, deadline: Deadline) -> bool:
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
                      if _nodes_equal(item, other, deadline)), None)
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


def _all_equal(items_a, items_b, deadline: Deadline) -> bool:
    return len(items_a) == len(items_b) and all(
        _nodes_equal(x, y, deadline) for x, y in zip(items_a, items_b))


def _nodes_equal(a, b, deadline: Deadline) -> bool:
    """Raises DeadlineExceeded once the call's time is up (checked per element)."""
    deadline.check()
    if _key(a) == _key(b):
        return True
    if a[0] != b[0]:
        entries_a, entries_b = _vector_entries(a), _vector_entries(b)
        if entries_a is None or entries_b is None:
            return False
        return _all_equal(entries_a, entries_b, deadline)
    kind = a[0]
    if kind == "scalar":
        return _scalars_equal(a[1], b[1], deadline)
    if kind == "seq":
        return a[1:3] == b[1:3] and _all_equal(a[3], b[3], deadline)
    if kind in ("set", "union"):
        return _multisets_equal(a[1], b[1], deadline)
    if kind == "matrix":
        return [len(r) for r in a[1]] == [len(r) for r in b[1]] and _all_equal(
            [x for row in a[1] for x in row], [y for row in b[1] for y in row], deadline)
    if kind == "eq":
        return _equations_equal(a, b, deadline)
    return False  # text: equal only with equal keys


def answer_key(answer: object) -> Hashable:
    """Canonical hashable key: equal keys imply `is_equiv`. None maps to None."""
    if not isinstance(answer, str):
        return None
    return _analyse(answer)[2]


def is_equiv(a: object, b: object, timeout_s: float | None = None) -> bool:
    """Whether two answers are mathematically equivalent. Symmetric; never raises.

    Returns within `timeout_s` (default `deadline.CALL_TIMEOUT_S`) plus one guarded step;
    a comparison that runs out of time is False (equality not shown)."""
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    deadline = Deadline(timeout_s)
    if a == b:
        return True
    if b < a:  # canonical order: symmetric even where a greedy match or a timeout is not
        a, b = b, a
    try:
        (_, node_a, key_a), (_, node_b, key_b) = _analyse(a), _analyse(b)
        if key_a == key_b:
            return True
        return bool(_nodes_equal(node_a, node_b, deadline))
    except Exception:  # noqa: BLE001 - out of time, or garbage: a grader must never raise
        return False

"""The shape of a normalised answer: text, scalar, tuple/interval, set, union, matrix, equation.

Nodes are hashable tuples:
  ("text", s)  ("scalar", src)  ("seq", open, close, items)  ("set", items)
  ("union", items)  ("matrix", rows)  ("eq", lhs, rhs)
Single-variable inequalities become intervals (`x > 3` is `(3, \\infty)`), and `a \\pm b` becomes
the set {a + b, a - b}.
"""
from __future__ import annotations

import re

from mathft_jax.grading import expr, linear, values

MAX_NESTING = 12
_MATRIX = re.compile(r"^\\begin\{pmatrix\}(.*)\\end\{pmatrix\}$", re.DOTALL)
_RELATION = re.compile(r"(\\le(?![a-zA-Z])|\\ge(?![a-zA-Z])|<|>|=)")
_DIGIT_STRING = re.compile(r"^[0-9]*[A-Z][0-9A-Z]*$")  # `AB` in base 16 is digits, not A*B
_VARIABLE = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?$")
_COMMAND = re.compile(r"\\[a-zA-Z]+ ?")
_PROSE = re.compile(r"[a-zA-Z]{3}")
_ITEM_PREFIX = re.compile(r"^([a-zA-Z](?:_\{?\w+\}?)?)=(?!.*=)")


def split_top(source: str, separator: str) -> list[str]:
    """`source` split at `separator` where no bracket is open (mixed `(3,4]` counts as one)."""
    parts, depth, start, pos = [], 0, 0, 0
    while pos < len(source):
        char = source[pos]
        if char == "\\" and source.startswith(("\\{", "\\}"), pos):
            depth += 1 if source[pos + 1] == "{" else -1
            pos += 2
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and source.startswith(separator, pos):
            parts.append(source[start:pos])
            pos += len(separator)
            start = pos
            continue
        pos += 1
    parts.append(source[start:])
    return [part.strip() for part in parts]


def _wrapped(source: str) -> bool:
    """Whether the opening bracket at source[0] closes at source[-1] (any bracket kinds)."""
    if len(source) < 2 or source[0] not in "([" or source[-1] not in ")]":
        return False
    depth = 0
    for pos, char in enumerate(source):
        depth += char in "([{"
        depth -= char in ")]}"
        if depth == 0:
            return pos == len(source) - 1
    return False


def _set_items(items: list[str], depth: int):
    """An unordered list; `x=1, x=-2` drops the shared `x=` (but `a=1, b=2` keeps both)."""
    prefixes = {m.group(1) if m else None for m in map(_ITEM_PREFIX.match, items)}
    if len(prefixes) == 1 and None not in prefixes:
        items = [_ITEM_PREFIX.sub("", item) for item in items]
    nodes = []
    for item in items:
        node = parse_structure(item, depth + 1)
        nodes.extend(node[1] if node[0] == "set" else (node,))  # `1 \pm 2, 5` is flat
    return ("set", tuple(nodes))


_FLIPPED = {"<": ">", ">": "<", "\\le": "\\ge", "\\ge": "\\le"}


def _interval(parts: list[str], relations: list[str]):
    """`x > 3`, `3 < x`, `-2 < x \\le 5`, `-x > -1` as interval nodes; None for other
    relations."""
    if len(parts) == 2 and _VARIABLE.match(parts[0]):
        bound, relation = parts[1], relations[0]
        if relation in ("<", "\\le"):
            return ("seq", "(", ")" if relation == "<" else "]", (_scalar("-\\infty"), _scalar(bound)))
        return ("seq", "(" if relation == ">" else "[", ")", (_scalar(bound), _scalar("\\infty")))
    if len(parts) == 2 and _VARIABLE.match(parts[1]):
        return _interval([parts[1], parts[0]], [_FLIPPED[relations[0]]])
    solved = _solved(*parts) if len(parts) == 2 else None
    if solved is not None:  # `-x > -1`, `2x + 1 \le 5`: solved for the variable
        variable, (bound, flipped) = solved
        return _interval([variable, bound], [_FLIPPED[relations[0]] if flipped else relations[0]])
    if len(parts) == 3 and _VARIABLE.match(parts[1]) and all(r in ("<", "\\le") for r in relations):
        return ("seq", "(" if relations[0] == "<" else "[", ")" if relations[1] == "<" else "]",
                (_scalar(parts[0]), _scalar(parts[2])))
    return None


def _solved(lhs: str, rhs: str):
    """(variable, (bound, flipped)) of a relation linear in its one variable, else None."""
    try:
        left, right = expr.parse_expression(lhs), expr.parse_expression(rhs)
    except (expr.ParseError, ValueError, ZeroDivisionError):
        return None
    variables = expr.free_variables(left) | expr.free_variables(right)
    if len(variables) != 1:
        return None
    (variable,) = variables
    solved = linear.solve(left, right, variable, values.exact_value)
    return None if solved is None else (variable, solved)


def _scalar(source: str):
    """A scalar, or text where the letters spell words (`sandy` is not s*a*n*d*y)."""
    if _PROSE.search(_COMMAND.sub("", source)) or " " in _COMMAND.sub("", source) or \
            (len(source) > 1 and _DIGIT_STRING.match(source)):
        return ("text", source)
    return ("scalar", source)


def parse_structure(source: str, depth: int = 0):
    """The structure node of a normalised answer string."""
    if depth > MAX_NESTING or not source:
        return ("text", source)
    matrix = _MATRIX.match(source)
    if matrix and "\\begin" not in matrix.group(1):
        rows = [row for row in matrix.group(1).split("\\cr") if row.strip()]
        return ("matrix", tuple(tuple(parse_structure(cell, depth + 1) for cell in row.split("&"))
                                for row in rows))
    union = split_top(source, "\\cup")
    if len(union) > 1:
        return ("union", tuple(parse_structure(part, depth + 1) for part in union))
    if source.startswith("\\{") and source.endswith("\\}"):
        return _set_items(split_top(source[2:-2], ","), depth)
    items = split_top(source, ",")
    if len(items) > 1:
        return _set_items(items, depth)
    if _wrapped(source):
        inner = split_top(source[1:-1], ",")
        if len(inner) > 1:
            return ("seq", source[0], source[-1], tuple(parse_structure(i, depth + 1) for i in inner))
        if source[0] == "(":
            return parse_structure(source[1:-1], depth + 1)
    for sign in ("\\pm", "\\mp"):  # only a lone sign: expanding nested ones doubles per level
        if source.count(sign) == 1 and len(split_top(source, sign)) == 2:
            plus, minus = (source.replace(sign, s, 1) for s in ("+", "-"))
            return ("set", (parse_structure(plus, depth + 1), parse_structure(minus, depth + 1)))
    pieces = _RELATION.split(source)
    if len(pieces) > 1:
        parts, relations = [p.strip() for p in pieces[0::2]], pieces[1::2]
        if relations == ["="]:
            return ("eq", _scalar(parts[0]), _scalar(parts[1]))
        interval = _interval(parts, relations) if "=" not in relations else None
        return interval if interval is not None else ("text", source)
    return _scalar(source)

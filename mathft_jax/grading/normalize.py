"""String normalisation of an answer: one canonical spelling per notation.

Everything here is plain string work with bounded regexes, so it is fast and cannot hang;
the structure and value of the answer are read later (`structure.py`, `expr.py`).
"""
from __future__ import annotations

import re

# Beyond this many characters an answer is compared verbatim: no real answer is this long,
# and every later stage then stays bounded.
MAX_ANSWER_CHARS = 2000

_UNIT_WORDS = (
    "square units|sq units|sq\\.? units|square feet|square inches|square meters|square cm|"
    "square centimeters|cubic inches|cubic feet|cubic units|units?|cm|mm|km|m|meters?|"
    "centimeters?|inches|inch|in|feet|foot|ft|yards?|miles?|mph|degrees?|cents?|dollars?|"
    "euros?|pounds?|hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|years?|gallons?|"
    "acres?|liters?|grams?|gm|kg|ways|people|students|percentage|percent|pct"
)
_UNIT_AFTER_VALUE = re.compile(r"(?<=[\d}.)])\s*\\text\{\s*(?:" + _UNIT_WORDS + r")\.?\s*\}(\^\{?[23]\}?)?")
_PLAIN_UNIT_AFTER_VALUE = re.compile(r"(?<=[\d}])\s+(?:" + _UNIT_WORDS + r")\.?(\^\{?[23]\}?)?$")
_TEXT_COMMANDS = re.compile(r"\\(?:mbox|textbf|textit|textnormal|textrm|mathrm|mathbf|mathit|operatorname)\b")
_TEXT_GROUP = re.compile(r"\\text\s*\{([^{}]*)\}")
_CHOICE = re.compile(r"^\(?([A-Ha-h])\)?$")
_THOUSANDS = re.compile(r"^(-?)(\d{1,3}(?:,\d{3})+)(\.\d+)?$")
_BASE_SUBSCRIPT = re.compile(r"^([0-9A-Z]+)_\{?(\d+)\}?$")
_VARIABLE_PREFIX = re.compile(
    r"^([a-zA-Z](?:_\{?\w+\}?)?|\([a-zA-Z](?:\s*,\s*[a-zA-Z])+\))\s*(?:=|\\in\b)\s*(?!.*=)")
_E_NOTATION = re.compile(r"^(-?\d+(?:\.\d+)?)[eE]([+-]?\d+)$")
# A matrix written with `matrix` or `array` (its column spec dropped), bracketed or not, is a
# pmatrix (math-verify and the Qwen2.5-Math toolkit compare matrices by entries, whatever the
# environment).
_PLAIN_MATRIX = re.compile(r"[(\[]?\\begin\{(matrix|array)\}(?:\{[lcr|\s]*\})?(.*)\\end\{\1\}[)\]]?",
                           re.DOTALL)
# Relations typed in ASCII or Unicode: `>=` is `\ge`, `!=` is `\ne` (math-verify's test suite,
# `test_relations_math`). `!=` after a digit, `)` or `}` stays a factorial followed by `=`.
_ASCII_RELATIONS = (("≥", "\\ge "), ("≤", "\\le "), ("≠", "\\ne "), (">=", "\\ge "),
                    ("<=", "\\le "))
_ASCII_NOT_EQUAL = re.compile(r"(?<![\d)}!])!=")
# The chain rule (math-verify's `get_last_eq`, latex2sympy2_extended's approximation handling):
# `x = 5+5+1 = 11` is its last value; `x \approx 11` is `x = 11`, and `x = \frac13 \approx 0.33`
# is `x = \frac13` (an approximation after an exact value is dropped).
_APPROX = re.compile(r"\\approx|≈")
_PLAIN_EQUALS = re.compile(r"(?<![<>!\\])=")
_SPACES_AFTER_COMMAND = re.compile(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z0-9])")

_REPLACEMENTS = (
    ("\\\\", "\\cr "), ("\\!", ""), ("{,}", ","), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\cfrac", "\\frac"),
    ("\\displaystyle", ""), ("\\left", ""), ("\\right", ""), ("\\bigl", ""), ("\\bigr", ""),
    ("\\Bigl", ""), ("\\Bigr", ""), ("\\big", ""), ("\\Big", ""), ("\\,", " "), ("\\;", " "),
    ("\\:", " "), ("\\ ", " "), ("\\quad", " "), ("\\qquad", " "), ("~", " "),
    ("\\leq", "\\le"), ("\\geq", "\\ge"), ("\\leqslant", "\\le"), ("\\geqslant", "\\ge"),
    ("\\lt", "<"), ("\\gt", ">"), ("\\neq", "\\ne"), ("\\lbrack", "["), ("\\rbrack", "]"),
    ("\\lbrace", "\\{"), ("\\rbrace", "\\}"), ("\\langle", "("), ("\\rangle", ")"),
    ("bmatrix", "pmatrix"), ("vmatrix", "pmatrix"), ("\\$", ""), ("\\%", ""), ("%", ""),
    ("\\degree", ""), ("°", ""), ("\\emptyset", "\\varnothing"), ("\\ge=", "\\ge"),
)
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ")
_WORD_SEPARATORS = re.compile(r"\\text\{\s*(?:or|and|,\s*and)\s*\}|\s+(?:or|and)\s+")


def _one_group(answer: str) -> bool:
    """Whether `answer` is one `{...}` group: its first brace closes at its last character."""
    depth = 0
    for position, char in enumerate(answer):
        depth += (char == "{") - (char == "}")
        if depth == 0:
            return position == len(answer) - 1 and answer[0] == "{"
    return False


def _strip_wrappers(answer: str) -> str:
    """Drop math delimiters, a whole-answer `\\boxed{}` or `{...}` group and a final full stop."""
    answer = answer.strip()
    changed = True
    while changed:
        changed = False
        for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("\\boxed{", "}")):
            if answer.startswith(left) and answer.endswith(right) and len(answer) > len(left) + len(right):
                answer, changed = answer[len(left):-len(right)].strip(), True
        if len(answer) > 2 and _one_group(answer):  # `{ (3, 4) }`: a group, not a set
            answer, changed = answer[1:-1].strip(), True
        if answer.endswith(".") and not answer.endswith(".."):
            answer, changed = answer[:-1].rstrip(), True
    return answer


def _unwrap_text(answer: str) -> str:
    """`\\text{}` groups: unit labels after a value go, other text keeps its content."""
    answer = _UNIT_AFTER_VALUE.sub("", answer)
    answer = _WORD_SEPARATORS.sub(",", answer)
    answer = _TEXT_GROUP.sub(lambda m: m.group(1), answer)
    return _PLAIN_UNIT_AFTER_VALUE.sub("", answer.strip())


def _canonical_number_spelling(answer: str) -> str:
    """Thousands separators, base subscripts and multiple-choice letters."""
    thousands = _THOUSANDS.match(answer)
    if thousands:
        sign, digits, decimals = thousands.groups()
        return sign + digits.replace(",", "") + (decimals or "")
    base = _BASE_SUBSCRIPT.match(answer)
    if base:  # `1011_2` is answered by its digits: the base is the question's
        return base.group(1)
    scientific = _E_NOTATION.match(answer)
    if scientific:
        return f"{scientific.group(1)}\\times10^{{{scientific.group(2)}}}"
    choice = _CHOICE.match(answer)
    if choice:
        return choice.group(1).upper()
    return answer


def _braced_short_arguments(answer: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\sqrt2` -> `\\sqrt{2}`: one spelling for the key."""
    answer = re.sub(r"\\frac\s*(\w)\s*(\w)", r"\\frac{\1}{\2}", answer)
    answer = re.sub(r"\\frac\s*(\w)\s*\{", r"\\frac{\1}{", answer)
    answer = re.sub(r"\\frac\s*(\{[^{}]*\})\s*(\w)", r"\\frac\1{\2}", answer)
    return re.sub(r"\\sqrt\s*(\w)", r"\\sqrt{\1}", answer)


def _relations(answer: str) -> str:
    for old, new in _ASCII_RELATIONS:
        answer = answer.replace(old, new)
    return _ASCII_NOT_EQUAL.sub("\\\\ne ", answer)


def _last_of_chain(answer: str) -> str:
    """The last value of a chain `a = b = c` (not of a list, whose items may be equations)."""
    if "," in answer or ";" in answer:
        return answer
    approx = _APPROX.split(answer)
    if len(approx) > 1:
        answer = approx[0] if _PLAIN_EQUALS.search(approx[0]) else "=".join(approx)
    sides = _PLAIN_EQUALS.split(answer)
    return sides[-1].strip() if len(sides) > 2 else answer


def normalize_parts(answer: object) -> tuple[str, str | None]:
    """(canonical spelling, the variable of a dropped `v =` prefix or None)."""
    if not isinstance(answer, str):
        return "", None
    if len(answer) > MAX_ANSWER_CHARS:
        return answer.strip(), None
    answer = _strip_wrappers(answer.replace("\n", " "))
    answer = re.sub(r",\s*\\!\s*", ",", answer)  # `10,\! 080`: a thousands separator
    for old, new in _REPLACEMENTS:
        answer = answer.replace(old, new)
    answer = _TEXT_COMMANDS.sub("\\\\text", answer)
    answer = _PLAIN_MATRIX.sub(r"\\begin{pmatrix}\2\\end{pmatrix}", answer.strip())
    answer = _DEGREES.sub("", answer)
    answer = _unwrap_text(answer)
    answer = _canonical_number_spelling(_strip_wrappers(_last_of_chain(_relations(answer))))
    prefix = _VARIABLE_PREFIX.match(answer)
    answer = answer[prefix.end():] if prefix else answer
    prefix_name = prefix.group(1).replace(" ", "") if prefix and "(" not in prefix.group(1) else None
    return _finish(_canonical_number_spelling(answer.strip())), prefix_name


def normalize(answer: object) -> str:
    """Canonical spelling of an answer string (None and non-strings give "")."""
    return normalize_parts(answer)[0]


def _finish(answer: str) -> str:
    """Whitespace, prose case and short-argument braces of a normalised answer."""
    if re.search(r"[a-zA-Z]{3}", re.sub(r"\\[a-zA-Z]+", "", answer)) and "\\" not in answer:
        return re.sub(r"\s+", " ", answer).strip().lower()  # prose: keep word breaks
    answer = _SPACES_AFTER_COMMAND.sub(r"\1 ", answer)
    answer = re.sub(r"(?<![a-zA-Z])\s+|\s+(?![a-zA-Z])", "", answer)
    answer = _braced_short_arguments(answer)
    return re.sub(r",(?=\S)", ", ", answer)  # `1, 2` stays a list when normalised again

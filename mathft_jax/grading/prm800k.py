"""The `prm800k` grader: the PRM800K grader's published rules, reimplemented in our own code.

The rules, in order (a given answer against the gold one):
1. Equal after the MATH data set's string normalisation (`_math_normalize`): correct.
2. Equal after PRM800K's further normalisation (`_prm_normalize`: `\\text{}` around the whole
   answer, `$`, `%`, " or "/" and " as commas, million/billion/trillion, unit words, degrees,
   outer braces, `,\\!`, integral floats as integers, mixed numbers, spaces, lower case): correct.
3. A gold tuple or interval (brackets and commas) needs the same brackets and as many elements;
   elements are compared in order, each by rule 4.
4. Two integer fractions `a/b` must be equal as written (unreduced is wrong); an integer against
   a non-integer is wrong; otherwise sympy must simplify gold - given to 0, attempted only with
   at most two unknown letters and no `^{`, `^(`, chained or multi-digit exponents.
Where we differ (docs/grading.md): nothing is `eval`ed; the elements are read by our bounded
parser (`expr.py`) instead of pylatexenc + sympy's parser, and sympy runs in our helper pool
under the call's deadline. Running out of time is "not equal", as an exception was there.
"""
from __future__ import annotations

import re

from mathft_jax.grading import expr, timeout, values
from mathft_jax.grading.deadline import Deadline, DeadlineExceeded
from mathft_jax.grading.normalize import MAX_ANSWER_CHARS

VERSION = "prm800k rules, mathft_jax reimplementation 1"
_UNITS = ("degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour", "day", "week",
          "month", "year", "foot", "feet", "inch", "yard")
_UNIT = re.compile("(?:" + "|".join(_UNITS) + r")(?:es)?(?:s)? *(?:\^[0-9]+)?")
_INTEGER_FRACTION = re.compile(r"^-?[0-9]+\.?/0*[1-9][0-9]*\.?$")
_EXPONENT_HAZARDS = re.compile(r"\^\{|\^\(|\^[0-9]+\^|\^[0-9][0-9]+")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def _braced_short_arguments(answer: str) -> str:
    """`\\sqrt3` -> `\\sqrt{3}`, `\\frac12` -> `\\frac{1}{2}` (one-character arguments)."""
    answer = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", answer)
    answer = re.sub(r"\\frac(\w)(\w)", r"\\frac{\1}{\2}", answer)
    answer = re.sub(r"\\frac\{([^{}]*)\}(\w)", r"\\frac{\1}{\2}", answer)
    return re.sub(r"\\frac(\w)\{", r"\\frac{\1}{", answer)


def _math_normalize(answer: str) -> str:
    """The MATH data set's answer normalisation (Hendrycks et al.): spellings, not values."""
    answer = answer.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    for old, new in (("tfrac", "frac"), ("dfrac", "frac"), ("\\left", ""), ("\\right", ""),
                     ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", ""), ("\\%", ""), ("%", "")):
        answer = answer.replace(old, new)
    if "\\text{ " in answer:  # units after the value
        answer = answer.split("\\text{ ")[0]
    answer = answer.replace(" .", " 0.").replace("{.", "{0.")
    if answer.startswith("."):
        answer = "0" + answer
    sides = answer.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # `x = 5`
        answer = sides[1]
    answer = _braced_short_arguments(answer.replace(" ", ""))
    if answer == "0.5":
        return "\\frac{1}{2}"
    simple = re.fullmatch(r"(-?\d+)/(\d+)", answer)
    return f"\\frac{{{simple.group(1)}}}{{{simple.group(2)}}}" if simple else answer


def _prm_normalize(answer: str) -> tuple[str, str]:
    """(key, math): the string PRM800K compares, and the same before spaces and case go, for
    our parser to read."""
    wrapped = re.fullmatch(r"\\text\{(.+?)\}", answer)
    if wrapped:
        answer = wrapped.group(1)
    for old, new in (("\\%", "%"), ("\\$", "$"), ("$", ""), ("%", ""), (" or ", " , "),
                     (" and ", " , "), ("million", "*10^6"), ("billion", "*10^9"),
                     ("trillion", "*10^12")):
        answer = answer.replace(old, new)
    answer = _UNIT.sub("", answer)
    answer = re.sub(r"\^ *\\circ", "", answer)
    if answer.startswith("{") and answer.endswith("}"):
        answer = answer[1:-1]
    answer = re.sub(r",\\! *", "", answer)
    try:
        number = float(answer)
        if number == int(number):
            answer = str(int(number))
    except (ValueError, OverflowError):
        pass
    answer = answer.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    answer = _braced_short_arguments(answer)
    answer = re.sub(r"\\frac\{(-?\d+)\}\{(\d+)\}", r"\1/\2", answer)  # as printed text
    answer = re.sub(r"- *", "-", answer)
    math = re.sub(r"([0-9]) +([0-9])", r"\1+\2", answer)  # mixed number `7 3/4`
    key = math.replace(" ", "").replace("{", "").replace("}", "").lower()
    if _is_integer(key):
        key = str(int(float(_THOUSANDS.sub("", key))))
    return key, math.strip()


def _is_integer(text: str) -> bool:
    try:
        number = float(_THOUSANDS.sub("", text))
        return abs(number - round(number)) <= 1e-7
    except (ValueError, OverflowError):
        return False


def _elements(text: str) -> list[str]:
    """The elements of a bracketed tuple or interval (no nested brackets), else [text]."""
    text = _THOUSANDS.sub("", text)
    inner = text[1:-1]
    if len(text) > 2 and text[0] in "([" and text[-1] in ")]" and not set("()[]") & set(inner):
        return [element.strip() for element in inner.split(",")]
    return [text]


def _sympy_equal(gold: str, given: str, deadline: Deadline) -> bool:
    if _EXPONENT_HAZARDS.search(f"({gold})-({given})".replace("{", "").replace("}", "")):
        return False
    try:
        asts = [expr.parse_expression(side) for side in (gold, given)]
    except (expr.ParseError, ValueError, ZeroDivisionError):
        return False
    if len(expr.free_variables(asts[0]) | expr.free_variables(asts[1])) > 2:
        return False
    timeout_s = min(timeout.DEFAULT_TIMEOUT_S, deadline.remaining())
    if timeout_s <= 0:
        raise DeadlineExceeded
    try:
        sources = [values.to_sympy_source(ast) for ast in asts]
    except values.NotRational:
        return False
    return timeout.HELPERS.equal(*sources, timeout_s=timeout_s) is True


def _elements_equal(gold: str, given: str, deadline: Deadline) -> bool:
    gold_key, given_key = (_prm_normalize(x)[0] for x in (gold, given))
    if _INTEGER_FRACTION.match(gold_key) and _INTEGER_FRACTION.match(given_key):
        return gold_key == given_key
    if _is_integer(gold_key) != _is_integer(given_key):
        return False
    return gold_key == given_key or _sympy_equal(gold, given, deadline)


def grade_answer(given: str | None, gold: str, deadline: Deadline | None = None) -> bool:
    """Whether `given` is correct for `gold` under the PRM800K rules; never raises."""
    if not isinstance(given, str) or not isinstance(gold, str):
        return False
    deadline = deadline or Deadline()
    if len(given) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return given == gold
    try:
        if _math_normalize(gold) == _math_normalize(given):
            return True
        (gold_key, gold_math), (given_key, given_math) = _prm_normalize(gold), _prm_normalize(given)
        if gold_key == given_key:
            return True
        if not given_key:
            return False
        gold_items, given_items = _elements(gold_math), _elements(given_math)
        if len(gold_items) > 1 and (gold_key[0] != given_key[0] or gold_key[-1] != given_key[-1]):
            return False
        if len(gold_items) != len(given_items):
            return False
        return all(_elements_equal(a, b, deadline) for a, b in zip(gold_items, given_items))
    except Exception:  # noqa: BLE001 - out of time, or garbage: a grader must never raise
        return False

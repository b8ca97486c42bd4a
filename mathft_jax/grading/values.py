"""Values of an expression AST: exact rationals, guarded high-precision numerics, sympy text.

The guards (`MAX_RESULT_BITS`, `MAX_EXPONENT`, `MAX_FACTORIAL`) bound the cost of every
operation, so `2^{2^{2^{2^{2^{2}}}}}` raises `TooBig` in microseconds instead of hanging. The
numeric path checks every intermediate, not just the literals: `\\sin((2^{10000})^{1000})`
stops at the power, before sin has to reduce a ten-million-bit argument.
"""
from __future__ import annotations

import math
import zlib
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from fractions import Fraction

import mpmath

MAX_RESULT_BITS = 20_000
MAX_EXPONENT = 10_000
MAX_FACTORIAL = 500
DIGITS = 50
# Sympy is not asked to expand past this many terms: `(x+y+z+1)^{41}` has 13,244 and takes
# seconds, close to a step's budget, so whether it finished would depend on the machine's load
# (CPU time itself stretches when the other hardware thread of a core is busy). Refused by
# size, it is "not shown equal" everywhere.
MAX_EXPANDED_TERMS = 12_000
_MAGNITUDE_LIMIT = mpmath.mpf(2) ** MAX_RESULT_BITS


class NotRational(ValueError):
    """The expression has no exact rational value (irrational, complex, symbolic)."""


class TooBig(ValueError):
    """Evaluating the expression would cost more than the guards allow."""


def _check_size(value: Fraction) -> Fraction:
    if value.numerator.bit_length() + value.denominator.bit_length() > MAX_RESULT_BITS:
        raise TooBig("rational too large")
    return value


def _integer_root(x: int, n: int) -> int:
    """floor(x ** (1/n)) by Newton's method on integers (floats lose digits past 2^53)."""
    if x < 2:
        return x
    root = 1 << -(-x.bit_length() // n)
    while True:
        better = ((n - 1) * root + x // root ** (n - 1)) // n
        if better >= root:
            return root
        root = better


def _exact_root(value: Fraction, n: int) -> Fraction:
    if n <= 0 or n > 64 or (value < 0 and n % 2 == 0):
        raise NotRational("root")
    parts = []
    for part in (abs(value.numerator), value.denominator):
        root = _integer_root(part, n)
        if root ** n != part:
            raise NotRational("root")
        parts.append(root)
    return (-1 if value < 0 else 1) * Fraction(parts[0], parts[1])


def _exact_power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        return _exact_power(_exact_root(base, exponent.denominator), Fraction(exponent.numerator))
    n = exponent.numerator
    if base in (0, 1) or (base == -1):
        if base == 0 and n < 0:
            raise NotRational("division by zero")
        return base ** n
    bits = max(base.numerator.bit_length(), base.denominator.bit_length())
    if abs(n) > MAX_EXPONENT or abs(n) * bits > MAX_RESULT_BITS:
        raise TooBig("power too large")
    return base ** n


def exact_value(node) -> Fraction:
    """The exact rational value; raises NotRational or TooBig."""
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "add":
        return _check_size(sum((exact_value(t) for t in node[1]), Fraction(0)))
    if kind == "mul":
        product = Fraction(1)
        for factor in node[1]:
            product = _check_size(product * exact_value(factor))
        return product
    if kind == "neg":
        return -exact_value(node[1])
    if kind == "div":
        numerator, denominator = exact_value(node[1]), exact_value(node[2])
        if denominator == 0:
            raise NotRational("division by zero")
        return _check_size(numerator / denominator)
    if kind == "pow":
        return _check_size(_exact_power(exact_value(node[1]), exact_value(node[2])))
    if kind == "root":
        index = exact_value(node[2])
        if index.denominator != 1:
            raise NotRational("fractional root index")
        return _exact_root(exact_value(node[1]), index.numerator)
    if kind == "fact":
        value = exact_value(node[1])
        if value.denominator != 1 or value < 0:
            raise NotRational("factorial of a non-natural")
        if value > MAX_FACTORIAL:
            raise TooBig("factorial too large")
        return Fraction(math.factorial(value.numerator))
    if kind == "abs":
        return abs(exact_value(node[1]))
    if kind == "binom":
        n, k = exact_value(node[1]), exact_value(node[2])
        if n.denominator != 1 or k.denominator != 1 or n < 0 or n > 10 * MAX_FACTORIAL:
            raise NotRational("binomial")
        return Fraction(math.comb(n.numerator, k.numerator)) if k >= 0 else Fraction(0)
    raise NotRational(kind)


def variable_point(name: str, trial: int) -> mpmath.mpf:
    """A deterministic, generic value for a free variable; negative on odd trials, so that
    sqrt(x^2) and |x| differ from x."""
    seed = zlib.crc32(f"{name}:{trial}".encode())
    magnitude = mpmath.mpf(seed % 9973) / 9973 + mpmath.mpf(trial + 1) / 7 + mpmath.sqrt(2) / 10
    return -magnitude if trial % 2 else magnitude


def _numeric_power(base, exponent):
    if abs(exponent) > MAX_EXPONENT and abs(base) not in (0, 1):
        raise TooBig("power too large")
    return mpmath.power(base, exponent)


_NUMERIC_FUNCTIONS = {
    "sin": mpmath.sin, "cos": mpmath.cos, "tan": mpmath.tan, "sec": mpmath.sec,
    "csc": mpmath.csc, "cot": mpmath.cot, "arcsin": mpmath.asin, "arccos": mpmath.acos,
    "arctan": mpmath.atan, "sinh": mpmath.sinh, "cosh": mpmath.cosh, "tanh": mpmath.tanh,
    "exp": mpmath.exp,
}


def _checked(value):
    """`value`, unless its binary exponent is past +-MAX_RESULT_BITS (a huge or vanishing
    intermediate would make the next sin, exp or gamma arbitrarily slow)."""
    if value and mpmath.isfinite(value) and abs(mpmath.mag(value)) > MAX_RESULT_BITS:
        raise TooBig("intermediate value too large")
    return value


def _numeric(node, point, deadline):
    if deadline is not None:
        deadline.check()
    return _checked(_numeric_node(node, point, deadline))


def _numeric_node(node, point, deadline):
    kind = node[0]
    if kind == "num":
        return mpmath.mpf(node[1].numerator) / node[1].denominator
    if kind == "var":
        return point[node[1]]
    if kind == "const":
        return {"pi": mpmath.pi, "i": mpmath.mpc(0, 1), "inf": mpmath.inf}[node[1]] * 1
    if kind == "add":
        return mpmath.fsum(_numeric(t, point, deadline) for t in node[1])
    if kind == "mul":
        return mpmath.fprod(_numeric(f, point, deadline) for f in node[1])
    if kind == "neg":
        return -_numeric(node[1], point, deadline)
    if kind == "div":
        return _numeric(node[1], point, deadline) / _numeric(node[2], point, deadline)
    if kind == "pow":
        base = _numeric(node[1], point, deadline)
        return _numeric_power(base, _numeric(node[2], point, deadline))
    if kind == "root":
        index = _numeric(node[2], point, deadline)
        radicand = _numeric(node[1], point, deadline)
        if index == 2:
            return mpmath.sqrt(radicand)
        if index == 3 and mpmath.im(radicand) == 0 and radicand < 0:
            return -mpmath.cbrt(-radicand)  # the real cube root, as competition math means
        return mpmath.root(radicand, index)
    if kind == "fact":
        value = _numeric(node[1], point, deadline)
        if abs(value) > MAX_FACTORIAL:
            raise TooBig("factorial too large")
        return mpmath.factorial(value)
    if kind == "abs":
        return abs(_numeric(node[1], point, deadline))
    if kind == "binom":
        top = _numeric(node[1], point, deadline)
        return mpmath.binomial(top, _numeric(node[2], point, deadline))
    if kind == "log":
        value = mpmath.log(_numeric(node[1], point, deadline))
        return value if node[2] is None else value / mpmath.log(_numeric(node[2], point, deadline))
    if kind == "func":
        return _NUMERIC_FUNCTIONS[node[1]](_numeric(node[2], point, deadline))
    raise NotRational(kind)


def numeric_value(node, point: dict, deadline=None):
    """A DIGITS-digit value at `point` (variable -> value); raises TooBig, ValueError, ...,
    and `DeadlineExceeded` once `deadline` (a `deadline.Deadline`) has passed."""
    with mpmath.workdps(DIGITS):
        value = _numeric(node, point, deadline)
        if mpmath.isfinite(value) and abs(value) > _MAGNITUDE_LIMIT:
            raise TooBig("value too large")
        return value


def close(a, b) -> bool:
    """Equal to DIGITS - 20 significant digits (exact for infinities)."""
    if mpmath.isinf(a) or mpmath.isinf(b) or mpmath.isnan(a) or mpmath.isnan(b):
        return bool(a == b) and not mpmath.isnan(a)
    with mpmath.workdps(DIGITS):
        scale = max(mpmath.mpf(1), abs(a), abs(b))
        return bool(abs(a - b) <= scale * mpmath.mpf(10) ** (20 - DIGITS))


def is_real(value) -> bool:
    """A finite real number (an exact rational, or an mpmath value with no imaginary part)."""
    if isinstance(value, Fraction):
        return True
    return bool(mpmath.im(value) == 0 and mpmath.isfinite(value))


def rounded(value, places: int) -> Decimal:
    """A real value (Fraction or mpmath) rounded half-even to `places` decimal places;
    raises ArithmeticError where it has more digits than DIGITS can hold."""
    with localcontext() as context:
        context.prec = DIGITS
        if isinstance(value, Fraction):
            number = Decimal(value.numerator) / Decimal(value.denominator)
        else:
            number = Decimal(mpmath.nstr(mpmath.re(value), DIGITS, strip_zeros=False))
        return number.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)


def expanded_terms(node) -> int:
    """An upper estimate of the terms of `node` expanded (a power of a sum of n terms to an
    integer k has C(n+k-1, k)); capped just past MAX_EXPANDED_TERMS, so always cheap."""
    cap = MAX_EXPANDED_TERMS + 1
    kind = node[0]
    if kind == "add":
        return min(cap, sum(expanded_terms(term) for term in node[1]))
    if kind == "mul":
        product = 1
        for factor in node[1]:
            product = min(cap, product * expanded_terms(factor))
        return product
    if kind in ("neg", "div"):
        return min(cap, sum(expanded_terms(child) for child in node[1:]))
    if kind == "pow" and node[2][0] == "num" and node[2][1].denominator == 1 and node[2][1] > 0:
        terms, k = expanded_terms(node[1]), node[2][1].numerator
        if terms == 1:
            return 1
        return cap if k > MAX_EXPONENT else min(cap, math.comb(terms + k - 1, k))
    return 1


_SYMPY_FUNCTIONS = {"arcsin": "asin", "arccos": "acos", "arctan": "atan"}
_SYMPY_CONSTANTS = {"pi": "pi", "i": "I", "inf": "oo"}


def _sympy_call(name: str, node, *children: int) -> str:
    """`name(...)` over the sources of node[i] for i in `children`, converted in that order."""
    return f"{name}({','.join(to_sympy_source(node[i]) for i in children)})"


def _sympy_symbol(node) -> str:
    safe = "".join(c if c.isalnum() else "_" for c in node[1].replace("'", "_prime"))
    return f"Symbol('{safe}')"


def _sympy_log(node) -> str:
    base = "" if node[2] is None else "," + to_sympy_source(node[2])
    return f"log({to_sympy_source(node[1])}{base})"


# kind -> the sympy source of a node of that kind (see the node shapes in `expr`).
_TO_SYMPY = {
    # hex: decimal text of an integer over 4,300 digits is refused by Python (int_max_str_digits)
    "num": lambda node: f"Rational({node[1].numerator:#x},{node[1].denominator:#x})",
    "var": _sympy_symbol,
    "const": lambda node: _SYMPY_CONSTANTS[node[1]],
    "add": lambda node: "(" + "+".join(map(to_sympy_source, node[1])) + ")",
    "mul": lambda node: "(" + "*".join(map(to_sympy_source, node[1])) + ")",
    "neg": lambda node: f"(-{to_sympy_source(node[1])})",
    "div": lambda node: f"({to_sympy_source(node[1])}/{to_sympy_source(node[2])})",
    "pow": lambda node: _sympy_call("Pow", node, 1, 2),
    "root": lambda node: _sympy_call("root", node, 1, 2),
    "fact": lambda node: _sympy_call("factorial", node, 1),
    "abs": lambda node: _sympy_call("Abs", node, 1),
    "binom": lambda node: _sympy_call("binomial", node, 1, 2),
    "log": _sympy_log,
    "func": lambda node: _sympy_call(_SYMPY_FUNCTIONS.get(node[1], node[1]), node, 2),
}


def to_sympy_source(node) -> str:
    """Python source for sympy (built only from AST names and numbers, never from raw input)."""
    kind = node[0]
    if kind not in _TO_SYMPY:
        raise NotRational(kind)
    return _TO_SYMPY[kind](node)

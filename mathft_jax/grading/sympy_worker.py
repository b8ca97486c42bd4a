"""Sympy helper process: reads `{"a": src, "b": src}` lines, answers "1", "0" or "e".

Run as a script by `timeout.SympyHelper` so that a hung simplification can be killed.
It imports only sympy; the sources are built by `values.to_sympy_source`.
"""
import json
import sys

import sympy

_NAMES = {name: getattr(sympy, name) for name in (
    "Rational", "Symbol", "pi", "I", "oo", "Pow", "root", "factorial", "Abs", "binomial", "log",
    "sin", "cos", "tan", "sec", "csc", "cot", "asin", "acos", "atan", "sinh", "cosh", "tanh", "exp")}


def symbolically_equal(a_source: str, b_source: str) -> bool:
    difference = eval(a_source, {"__builtins__": {}}, _NAMES) - eval(b_source, {"__builtins__": {}}, _NAMES)
    if difference == 0 or sympy.expand(difference) == 0:
        return True
    return sympy.simplify(difference) == 0


def main() -> None:
    x = sympy.Symbol("x")  # sympy's first simplify loads and caches much: not a graded call's cost
    symbolically_equal("Pow(Symbol('x')+1,2)", "Symbol('x')**2+2*Symbol('x')+1")
    sympy.simplify(sympy.sin(x) ** 2 + sympy.cos(x) ** 2)
    print("ready", flush=True)
    for line in sys.stdin:
        try:
            request = json.loads(line)
            answer = "1" if symbolically_equal(request["a"], request["b"]) else "0"
        except Exception:  # noqa: BLE001 - any sympy failure is "cannot decide"
            answer = "e"
        print(answer, flush=True)


if __name__ == "__main__":
    main()

"""A small LaTeX expression parser for answers, into a tuple AST.

Bounded by construction: inputs over `MAX_TOKENS` tokens or nested deeper than `MAX_DEPTH`
raise `ParseError`, so a pathological answer costs microseconds, never a stack overflow.

AST nodes are tuples: ("num", Fraction) ("var", name) ("const", "pi"|"i"|"inf")
("add", (terms...)) ("mul", (factors...)) ("neg", x) ("div", a, b) ("pow", a, b)
("root", x, n) ("func", name, x) ("log", x, base|None) ("fact", x) ("abs", x) ("binom", n, k).
"""
from __future__ import annotations

import re
from fractions import Fraction

MAX_TOKENS = 600
MAX_DEPTH = 60

_TOKEN = re.compile(r"\\[a-zA-Z]+|\\[{}|\\]|\d|[a-zA-Z]|\S")
FUNCTIONS = frozenset(("sin", "cos", "tan", "sec", "csc", "cot", "arcsin", "arccos", "arctan",
                       "sinh", "cosh", "tanh", "exp"))
GREEK = frozenset(("alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta",
                   "theta", "vartheta", "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma",
                   "tau", "phi", "varphi", "chi", "psi", "omega", "Gamma", "Delta", "Theta",
                   "Lambda", "Sigma", "Phi", "Psi", "Omega"))
_MULTIPLY = frozenset(("*", "\\cdot", "\\times"))
_DIVIDE = frozenset(("/", "\\div"))
_OPENERS = {"(": ")", "[": "]", "{": "}"}
_IGNORED = frozenset(("\\limits", "\\mathit", "\\text"))


class ParseError(ValueError):
    """The string is not an expression this parser reads."""


def tokenize(source: str) -> list[str]:
    tokens = [t for t in _TOKEN.findall(source) if t not in _IGNORED]
    if len(tokens) > MAX_TOKENS:
        raise ParseError("too many tokens")
    return tokens


class _Parser:
    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    # -- helpers
    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise ParseError(f"expected {expected!r}, got {token!r}")
        self.pos += 1
        return token

    def nested(self, parse, *args):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ParseError("nested too deeply")
        try:
            return parse(*args)
        finally:
            self.depth -= 1

    # -- grammar
    def parse(self):
        node = self.expression()
        if self.peek() is not None:
            raise ParseError(f"unexpected {self.peek()!r}")
        return node

    def expression(self):
        terms = [self.nested(self.signed_term)]
        while self.peek() in ("+", "-"):
            if self.take() == "+":
                terms.append(self.nested(self.term))
            else:
                terms.append(("neg", self.nested(self.term)))
        return terms[0] if len(terms) == 1 else ("add", tuple(terms))

    def signed_term(self):
        if self.peek() == "-":
            self.take()
            return ("neg", self.nested(self.term))
        if self.peek() == "+":
            self.take()
        return self.term()

    def term(self):
        factors = [self.nested(self.power)]
        while True:
            token = self.peek()
            if token in _MULTIPLY:
                self.take()
                factors.append(self.nested(self.power))
            elif token in _DIVIDE:
                self.take()
                factors = [("div", self._product(factors), self.nested(self.power))]
            elif token is not None and self._starts_atom(token):
                factor = self.nested(self.power)
                if _is_integer_literal(factors[-1]) and _is_simple_fraction(factor):
                    factors[-1] = ("add", (factors[-1], factor))  # mixed number 2\frac{1}{2}
                else:
                    factors.append(factor)
            else:
                return self._product(factors)

    @staticmethod
    def _product(factors):
        return factors[0] if len(factors) == 1 else ("mul", tuple(factors))

    @staticmethod
    def _starts_atom(token: str) -> bool:
        if token[0].isalnum() or token in ("(", "[", "{", ".", "\\{"):
            return True
        if token.startswith("\\") and token.isascii() and len(token) > 1:
            name = token[1:]
            return name in ("frac", "sqrt", "binom", "pi", "infty", "log", "ln") or name in FUNCTIONS \
                or name in GREEK
        return False

    def power(self):
        base = self.nested(self.postfix)
        if self.peek() == "^":
            self.take()
            exponent = self.nested(self.argument, True)
            return ("pow", base, exponent)
        return base

    def postfix(self):
        node = self.nested(self.atom)
        while self.peek() in ("!", "'"):
            if self.take() == "!":
                node = ("fact", node)
            elif node[0] == "var":
                node = ("var", node[1] + "'")
            else:
                raise ParseError("prime on a non-variable")
        return node

    def argument(self, whole_number: bool = False):
        """A `{group}` or a single token, as after `\\frac`, `\\sqrt` and `^`."""
        token = self.peek()
        if token == "{":
            self.take()
            node = self.nested(self.expression)
            self.take("}")
            return node
        if token == "-" and whole_number:
            self.take()
            return ("neg", self.nested(self.argument, True))
        if token is not None and token.isdigit():
            if whole_number:
                return self.number()
            self.take()
            return ("num", Fraction(int(token)))
        return self.nested(self.atom)

    def number(self):
        digits = []
        while self.peek() is not None and (self.peek().isdigit() or self.peek() == "."):
            digits.append(self.take())
        text = "".join(digits)
        if text.count(".") > 1 or text == ".":
            raise ParseError(f"bad number {text!r}")
        return ("num", Fraction(text if not text.endswith(".") else text[:-1]))

    def atom(self):
        token = self.peek()
        if token is None:
            raise ParseError("unexpected end")
        if token.isdigit() or token == ".":
            return self.number()
        if token in _OPENERS:
            self.take()
            node = self.nested(self.expression)
            self.take(_OPENERS[token])
            return node
        if token == "|":
            self.take()
            node = self.nested(self.expression)
            self.take("|")
            return ("abs", node)
        if len(token) == 1 and token.isalpha():
            self.take()
            if token == "i":
                return ("const", "i")
            return ("var", token + self._subscript())
        if token.startswith("\\"):
            return self.command(self.take()[1:])
        raise ParseError(f"unexpected {token!r}")

    def _subscript(self) -> str:
        if self.peek() != "_":
            return ""
        self.take()
        if self.peek() == "{":
            self.take()
            parts = []
            while self.peek() not in ("}", None):
                parts.append(self.take())
            self.take("}")
        else:
            parts = [self.take()]
        name = "".join(parts)
        if not re.fullmatch(r"\w+", name):
            raise ParseError("bad subscript")
        return "_" + name

    def command(self, name: str):
        if name == "frac":
            numerator = self.nested(self.argument)
            return ("div", numerator, self.nested(self.argument))
        if name == "binom":
            top = self.nested(self.argument)
            return ("binom", top, self.nested(self.argument))
        if name == "sqrt":
            index = ("num", Fraction(2))
            if self.peek() == "[":
                self.take()
                index = self.nested(self.expression)
                self.take("]")
            return ("root", self.nested(self.argument), index)
        if name == "pi":
            return ("const", "pi")
        if name == "infty":
            return ("const", "inf")
        if name in GREEK:
            return ("var", name + self._subscript())
        if name in ("log", "ln"):
            base = None
            if name == "log" and self.peek() == "_":
                self.take()
                base = self.nested(self.argument)
            return ("log", self._function_argument(), base)
        if name in FUNCTIONS:
            exponent = None
            if self.peek() == "^":  # \sin^2 x
                self.take()
                exponent = self.nested(self.argument, True)
            node = ("func", name, self._function_argument())
            return node if exponent is None else ("pow", node, exponent)
        raise ParseError(f"unknown command \\{name}")

    def _function_argument(self):
        return self.nested(self.power)


def _is_integer_literal(node) -> bool:
    return node[0] == "num" and node[1].denominator == 1


def _is_simple_fraction(node) -> bool:
    return node[0] == "div" and _is_integer_literal(node[1]) and _is_integer_literal(node[2])


def parse_expression(source: str):
    """AST of a LaTeX expression; raises ParseError."""
    tokens = tokenize(source)
    if not tokens:
        raise ParseError("empty")
    return _Parser(tokens).parse()


def free_variables(node) -> frozenset[str]:
    if node[0] == "var":
        return frozenset((node[1],))
    found = frozenset()
    for child in node[1:]:
        if isinstance(child, tuple):
            if child and isinstance(child[0], str):
                found |= free_variables(child)
            else:
                for item in child:
                    found |= free_variables(item)
    return found

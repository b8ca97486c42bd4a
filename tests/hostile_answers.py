"""A seeded set of hostile answers and solution texts for the grader (our own generation).

Shared by tests/test_grading_fuzz.py and bench/grader_soak.py. Each family below is a
function of a `random.Random`; `hostile_inputs(seed, count)` cycles through them, so every
family is represented whatever the count. `pairs(...)` adds the second answer of each call.
"""
from __future__ import annotations

import random
import re

_NUMBERS = ["2", "10", "3", "7", "99", "0", "1", "-1", "0.5", "\\pi", "e", "x", "i"]
_FUNCTIONS = ["\\sin", "\\cos", "\\tan", "\\exp", "\\log", "\\ln", "\\sqrt", "\\sinh", "\\arctan",
              "\\cot"]
_PIECES = ["1", "2", "-", "+", "x", "y", "i", "\\pi", "\\frac{1}{2}", "\\frac", "{", "}", "(", ")",
           "[", "]", ",", "\\sqrt{3}", "^", ".5", "0", "\\%", "^\\circ", "\\text{ cm}", "\\cup",
           "\\infty", "=", "<", "\\le", "\\pm", "_8", "\\text{(A)}", "!", "/", " ", "\\cdot",
           "\\boxed{", "\\fbox{", "\\left(", "\\right)", "\\begin{pmatrix}", "\\end{pmatrix}",
           "&", "\\\\", "\\binom", "$", "\\$", "\\{", "\\}", "|", "\\mp", "\\dfrac", "e"]


def _huge(rng: random.Random) -> str:
    base, exponent = rng.choice([10, 2, 3, 7, 99, 12345]), rng.choice([1000, 5000, 10000, 99999])
    return f"{base}^{{{exponent}}}"


def deep_nesting(rng):
    depth = rng.choice([50, 61, 200, 1000, 5000]) + rng.randrange(10)
    opener, closer = rng.choice([("\\frac{1}{", "}"), ("\\sqrt{", "}"), ("(", ")"), ("{", "}"),
                                 ("\\{", "\\}"), ("|", "|"), ("\\left(", "\\right)"),
                                 ("\\sin(", ")"), ("2^{", "}"), ("\\boxed{", "}")])
    return opener * depth + rng.choice(_NUMBERS) + closer * depth


def nested_powers(rng):
    inner = _huge(rng)
    for _ in range(rng.randrange(1, 4)):
        inner = f"({inner})^{{{rng.choice([2, 50, 100, 1000, 10000])}}}"
    wrapper = rng.choice(_FUNCTIONS + ["", ""])
    return f"{wrapper}({inner})" if wrapper else inner


def power_towers(rng):
    base = rng.choice(["2", "10", "x", "1.0001", "-3", "i", "\\pi", "e"])
    tower = base
    for _ in range(rng.randrange(2, 9)):
        tower = f"{base}^{{{tower}}}"
    return tower


def factorials(rng):
    argument = rng.choice([_huge(rng), "10^{100}", "100000", "501", "(2^{100})!", "x", "\\pi",
                           "-1"])
    return argument + "!" * rng.randrange(1, 4) if rng.random() < 0.5 else f"({argument})!"


def binomials(rng):
    top, bottom = _huge(rng), _huge(rng)
    if rng.random() < 0.5:
        top, bottom = f"({top})^{{100}}", f"({bottom})^{{50}}"
    return f"\\binom{{{top}}}{{{bottom}}}" + rng.choice(["", "!", "\\cdot x", "+\\sin(x)"])


def big_integers(rng):
    exponent = rng.randrange(4301, 6600)
    return rng.choice([f"10^{{{exponent}}}", f"(10^{{10}})^{{{exponent // 10}}}",
                       "1" * rng.choice([1999, 2000, 2001]), f"2^{{{exponent * 3}}}",
                       f"\\frac{{10^{{{exponent}}}}}{{3}}", f"\\{{10^{{{exponent}}}, 1\\}}"])


def long_strings(rng):
    unit = rng.choice(["1+", "\\frac{", "x^", "a", "\\boxed{", "\\fbox{", "{", "((", "$", "\\\\",
                       "The final answer is ", "# Answer\n", " ", "\n", "\\left(", "0,", "\\pm",
                       "Answer: ", "答案是", "\\[", "$$", "\\(", "1 234 ", "**"])
    return unit * (rng.randrange(50_000, 100_001) // len(unit))


def unclosed_groups(rng):
    group = rng.choice(["\\boxed{", "\\fbox{", "\\frac{1}{2", "\\sqrt{", "(", "[", "\\{", "\\left(",
                        "\\begin{pmatrix}1&2", "\\text{", "{{", "$", "\\["])
    return group * rng.randrange(1, 3000) + rng.choice(["", "}", "}}}{{{", ")", "\\boxed{1}"])


def garbage(rng):
    data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4000)))
    errors = rng.choice(["surrogateescape", "replace"])
    if rng.random() < 0.7:
        return data.decode(rng.choice(["latin-1", "utf-8"]), errors=errors)
    return "\x00" * rng.randrange(1, 100) + "\ud800\udfff\ufffe"


# Harmless if ever executed, except for the marker file: the fuzz test asserts it never appears.
MARKER = "mathft_injection_marker"


def injections(rng):
    return rng.choice([
        f"__import__('os').system('touch /tmp/{MARKER}')",
        f"open('/tmp/{MARKER}','w').write('x')",
        "().__class__.__bases__[0].__subclasses__()",
        "Symbol('x')); __import__('os')._exit(3) #",
        "Rational(1,0)", "lambda: 0", "eval('1+1')", "exec('x=1')", "[x for x in range(10**9)]",
        "\\input{/etc/passwd}", "\\def\\x{\\x}\\x", "\\write18{rm -rf /}",
        "\\csname relax\\endcsname",
        "\\immediate\\write18{ls}", "\\begin{verbatim}\\end{verbatim}", "\\catcode`\\{=12",
        "$$\\boxed{$}$$", "\\newcommand{\\a}{\\a\\a}\\a", "'; DROP TABLE answers; --",
        "{\"a\": \"b\"}\n", "\\\\\\\\\\\\", "\\u0000", "%s%s%s%n",
    ]) + rng.choice(["", "x", "\\boxed{1}", " = 1"]) + str(rng.randrange(100))


def long_tuples(rng):
    count = rng.randrange(20, 200)
    item = rng.choice(["(2x+2y+2z+2)^{{{k}}}", "(x+1)^{{{k}}}", "{k}", "\\frac{{{k}}}{{7}}",
                       "x^{{{k}}}-1", "\\sqrt{{{k}}}", "10^{{{k}00}}"])
    items = [item.format(k=rng.randrange(2, 40)) for _ in range(count)]
    opener, closer = rng.choice([("(", ")"), ("[", "]"), ("\\{", "\\}"), ("", "")])
    return opener + ", ".join(items) + closer


def matrices(rng):
    rows, cols = rng.randrange(1, 40), rng.randrange(1, 40)
    cell = rng.choice(["1", "x", "\\frac{1}{2}", "(x+1)^{30}", _huge(rng), "",
                       "\\begin{pmatrix}1\\end{pmatrix}"])
    body = " \\\\ ".join(" & ".join(cell for _ in range(cols)) for _ in range(rows))
    return rng.choice(["\\begin{pmatrix}", "\\begin{bmatrix}", "\\begin{matrix}"]) + body + \
        rng.choice(["\\end{pmatrix}", "\\end{bmatrix}", "\\end{matrix}", ""])


def plus_minus_chains(rng):
    answer = "1"
    for _ in range(rng.randrange(5, 30)):
        step = rng.choice(["({a})\\pm1", "{a}\\pm{a}", "({a})\\mp2", "\\{{{a}\\}}\\cup\\{{1\\}}"])
        answer = step.format(a=answer)
        answer = answer[:1990]
    return answer


def random_pieces(rng):
    return "".join(rng.choice(_PIECES) for _ in range(rng.randrange(1, 60)))


def polynomial_powers(rng):
    k = rng.randrange(2, 16) if rng.random() < 0.9 else rng.randrange(30, 60)
    return rng.choice([f"(2x+2y+2z+2)^{{{k}}}", f"(2x+2y+2z+2)^{{{k}}}-1", f"(x+1)^{{{k * 1000}}}",
                       f"\\sin(x)^{{{k}}}+\\cos(x)^{{{k}}}", f"((2x+2y+2z+2)^{{{k}}}, x)"])


def whitespace_runs(rng):
    """A long run inside an answer sentence: regexes that try every position of a run are
    quadratic in it."""
    head = rng.choice(["Answer: x", "the answer is 5", "The final answer is 1", "$", "\\boxed 5",
                       "# Answer\n\n2", "答案是 3", "Answer: 5,", "so $x$"])
    run = rng.choice([" ", "\t", "*_ ", "\u3000", " \n", ". "]) * rng.randrange(5_000, 30_000)
    tail = rng.choice(["y", "y.", "becausex", "dollarsx", "percent", "$", "\\]", "whichx"])
    return head + run + tail


FAMILIES = (deep_nesting, nested_powers, power_towers, factorials, binomials, big_integers,
            long_strings, unclosed_groups, garbage, injections, long_tuples, matrices,
            plus_minus_chains, random_pieces, polynomial_powers, whitespace_runs)


def hostile_inputs(seed: int = 0, count: int = 1000) -> list[str]:
    rng = random.Random(seed)
    return [FAMILIES[index % len(FAMILIES)](rng) for index in range(count)]


_EXPANDED_POWER = re.compile(r"\(2x\+2y\+2z\+2\)\^\{(\d+)\}")


def _rewrite(answer: str, rng: random.Random) -> str:
    """A spelling of the same answer (usually), so equal keys and the contract get exercised."""
    # Same value, other key: reaches sympy. Rarer in long tuples, which then run to the deadline.
    if _EXPANDED_POWER.search(answer) and rng.random() < (0.5 if len(answer) < 200 else 0.15):
        return _EXPANDED_POWER.sub(r"2^{\1}(x+y+z+1)^{\1}", answer)
    return rng.choice([answer + " ", f"${answer}$", f"\\boxed{{{answer}}}",
                       answer.replace("\\frac", "\\dfrac"),
                       answer.replace("(", "\\left(").replace(")", "\\right)"), answer + "."])


def deadline_bound(rng: random.Random, count: int = 2) -> list[tuple[str, str]]:
    """Pairs that run to the per-call deadline: tuples of 40-75 equal polynomial powers, each
    element a sympy step of about half a second, so no call can finish within the bound."""
    result = []
    for _ in range(count):
        powers = [rng.randrange(20, 30) for _ in range(rng.randrange(40, 76))]
        left = "(" + ", ".join(f"(2x+2y+2z+2)^{{{k}}}" for k in powers) + ")"
        result.append((left, _EXPANDED_POWER.sub(r"2^{\1}(x+y+z+1)^{\1}", left)))
    return result


# Identities only sympy shows (their numeric trials agree): the fuzz test's load check.
SYMPY_IDENTITIES = (("x^2+2x+1", "(x+1)^2"), ("\\sin^2 x + \\cos^2 x", "1"),
                    ("\\frac{x^2-1}{x-1}", "x+1"), ("(a+b)^3", "a^3+3a^2b+3ab^2+b^3"),
                    ("\\tan x", "\\frac{\\sin x}{\\cos x}"), ("\\cos(2x)", "\\cos^2 x - \\sin^2 x"))


def sympy_pairs(seed: int = 0, count: int = 36) -> list[tuple[str, str]]:
    """Distinct equal pairs whose verdict needs a sympy step (their numeric trials agree):
    SYMPY_IDENTITIES, then polynomial powers against their rewrites."""
    rng = random.Random(seed)
    shapes = ["(2x+2y+2z+2)^{{{k}}}", "((2x+2y+2z+2)^{{{k}}}, x)", "(2x+2y+2z+2)^{{{k}}}-1"]
    powers = [shape.format(k=k) for k in range(2, 14) for shape in shapes]
    rng.shuffle(powers)
    return (list(SYMPY_IDENTITIES) + [(left, _EXPANDED_POWER.sub(r"2^{\1}(x+y+z+1)^{\1}", left))
                                      for left in powers])[:count]


def pairs(seed: int = 0, count: int = 1000, to_deadline: int = 2) -> list[tuple[str, str]]:
    """(hostile, other): other is a rewrite of it, another hostile input, or a plain answer;
    the first `to_deadline` pairs run to the deadline (`deadline_bound`)."""
    rng = random.Random(seed + 1)
    inputs = hostile_inputs(seed, count - to_deadline)
    result = deadline_bound(rng, to_deadline)
    for answer in inputs:
        roll = rng.random()
        other = (_rewrite(answer, rng) if roll < 0.5 else rng.choice(inputs) if roll < 0.75 else
                 rng.choice(["4", "x+1", "\\frac{1}{2}", "(1, 2)", "\\text{(C)}", "2^{10000}",
                             "0"]))
        result.append((answer, other))
    return result

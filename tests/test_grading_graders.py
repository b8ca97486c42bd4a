"""Extraction policies, the grader table (every name), the PRM800K rules and agreement reports."""
import pytest

from mathft_jax.grading import GRADERS, POLICIES, extract_answer, get_grader, grade, warm_up
from mathft_jax.grading.agreement import agreement_report, grade_record
from mathft_jax.grading.prm800k import grade_answer as prm800k_grade


@pytest.mark.parametrize("text, expected", [
    # answer sentences, the last one wins; the next line when the phrase ends its own
    ("So the answer is 9.", "9"),
    ("The answer is 3. Doubling, the answer is 6.", "6"),
    ("Answer:\n\n**42**", "42"),
    ("Therefore, the answer is $x \\geq 5$, as required.", "x \\geq 5"),
    ("答案是 $12$。", "12"), ("La réponse est 7.", "7"), ("Ответ: 15", "15"), ("答えは 25", "25"),
    # the closing line's last math, or a display block that ends the text
    ("so we get\n\\[ 9 \\]", "9"), ("We conclude\n$$\nx = 7\n$$", "x = 7"),
    ("The roots are $1$ and $-2$, the larger is $1$.", "1"),
    # numbers: percent words, currency, thousands separators, unit words; \text{} wrappers
    ("The answer is 28 percent.", "28\\%"), ("The answer is \\$1,234.", "1234"),
    ("The answer is 1 234 567.", "1234567"), ("The answer is 28 students.", "28"),
    ("Answer: \\text{(B)}", "(B)"), ("The answer is \\textbf{12}.", "12"),
])
def test_lenient_cases(text, expected):
    assert extract_answer(text, policy="lenient") == expected
    assert extract_answer(text) is None  # strict (the default) is unchanged: no box, no answer


@pytest.mark.parametrize("text", [
    "I think it is about 9, but I am not sure.",  # no sentence, no closing math: no guess
    "The answer isn't obvious at first",          # "answer is" must end a word
    "We have $x = 3$ so far.\nThen we check the other case.",  # math not on the closing line
    "The answer is",
])
def test_lenient_does_not_guess(text):
    assert extract_answer(text, policy="lenient") is None


def test_strict_answers_win_under_lenient():
    text = "The answer is 3.\n\\boxed{4}"
    assert extract_answer(text, policy="lenient") == extract_answer(text) == "4"


def test_unknown_policy_and_grader_are_usage_errors():
    assert POLICIES == ("strict", "lenient")
    with pytest.raises(ValueError, match="policy"):
        extract_answer("x", policy="loose")
    with pytest.raises(ValueError, match="policy"):
        grade("x", "1", policy="loose")
    with pytest.raises(ValueError, match="mathft, prm800k, math_verify"):
        get_grader("sympy")


def test_every_grader_name_is_registered_and_versioned():
    assert set(GRADERS) == {"mathft", "prm800k", "math_verify"}
    for grader in GRADERS.values():
        assert grader.version()


@pytest.mark.parametrize("name", ["mathft", "prm800k"])
def test_builtin_graders(name):
    warm_up()
    assert grade("so $\\boxed{\\frac{1}{2}}$", "0.5", grader=name) == ("\\frac{1}{2}", True)
    assert grade("so $\\boxed{3}$", "0.5", grader=name).correct is False
    assert grade("The answer is 9.", "9", grader=name).correct is False  # strict: no answer
    assert grade("The answer is 9.", "9", policy="lenient", grader=name) == ("9", True)
    assert grade("(x+1)^2", "x^2+2x+1", grader=name, answer="(x+1)^2").correct is True
    assert grade(None, "1", grader=name) == (None, False)


def test_math_verify_grader():
    grader = GRADERS["math_verify"]
    if not grader.available():
        with pytest.raises(ValueError, match=r"pip install -e '\.\[graders\]'"):
            grade("\\boxed{1}", "1", grader="math_verify")
        pytest.skip("math-verify is not installed (extra [graders])")
    assert grade("so $\\boxed{\\frac{1}{2}}$", "0.5", grader="math_verify", timeout_s=60).correct
    assert not grade("so $\\boxed{3}$", "0.5", grader="math_verify", timeout_s=60).correct


@pytest.mark.parametrize("text, correct", [
    ("so $\\boxed{84, 69}$", True),                # every part, in any order
    ("$\\boxed{69}$ and $\\boxed{84}$", True),     # the boxes joined (OlympiadBench's judge)
    ("so $\\boxed{69}$", False),                   # a part missing
    ("so $\\boxed{69, 84, 1}$", False),            # one too many
])
def test_math_verify_needs_every_part_of_a_list_gold(text, correct):
    if not GRADERS["math_verify"].available():
        pytest.skip("math-verify is not installed (extra [graders])")
    assert grade(text, ["69", "84"], grader="math_verify", timeout_s=60).correct is correct


def test_math_verify_grants_the_records_tolerance():
    if not GRADERS["math_verify"].available():
        pytest.skip("math-verify is not installed (extra [graders])")
    near, far = "so $\\boxed{0.6}$", "so $\\boxed{0.62}$"
    assert not grade(near, "0.5", grader="math_verify", timeout_s=60).correct
    assert grade(near, "0.5", grader="math_verify", timeout_s=60, tolerance=0.1).correct
    assert not grade(far, "0.5", grader="math_verify", timeout_s=60, tolerance=0.1).correct
    # the slack is OlympiadBench's 1.01 x the tolerance, as ours
    assert grade("so $\\boxed{0.6005}$", "0.5", grader="math_verify", timeout_s=60,
                 tolerance=0.1).correct
    assert not grade("so $\\boxed{x}$", "0.5", grader="math_verify", timeout_s=60,
                     tolerance=0.1).correct  # not a number: no tolerance applies


@pytest.mark.parametrize("given, gold, correct", [
    ("\\frac{1}{2}", "0.5", True),        # 1: MATH normalisation
    ("5\\text{ cm}", "5", True),          # 1: units after the value
    ("\\text{Sandy}", "sandy", True),     # 2: \text{} and case
    ("1,000", "1000", True),              # 2: thousands commas
    ("7 3/4", "\\frac{31}{4}", True),     # 2: a mixed number is a sum
    ("3 million", "3\\cdot 10^6", True),  # 2: million, then 4: sympy
    ("3 million", "3000000", False),      # 4: an integer gold needs an integer answer
    ("(1,2)", "[1,2]", False),            # 3: a tuple's brackets must match
    ("(1,2,3)", "(1,2)", False),          # 3: as many elements
    ("(2, \\sqrt{8})", "(2, 2\\sqrt{2})", True),  # 3: element by element, 4: sympy
    ("\\frac{2}{4}", "\\frac{1}{2}", False),      # 4: unreduced fractions are wrong
    ("2.0", "2", True), ("2.5", "2", False),      # 4: integers
    ("2^{10}", "1024", False),            # 4: an integer gold needs an integer answer
    ("x^2+2x+1", "(x+1)^2", True),        # 4: sympy
    ("a+b+c", "c+b+a", False),            # 4: more than two unknown letters: no sympy
    ("x^{10}", "x^{5}x^{5}", False),      # 4: multi-digit exponents: no sympy
])
def test_prm800k_rules(given, gold, correct):
    warm_up()
    assert prm800k_grade(given, gold) is correct


def _record(problem_id, gold, answers):
    return {"problem_id": problem_id, "problem": "", "gold": gold,
            "samples": [{"text": f"so \\boxed{{{a}}}", "answer": a} for a in answers]}


def test_agreement_report_counts_and_lists_disagreements():
    # Verdicts (mathft, prm800k): p1 (T, F), (T, T), (F, F); p2 (T, F), (T, T); p3 (F, T).
    records = [_record("p1", "\\frac{1}{2}", ["\\frac{2}{4}", "0.5", "3"]),
               _record("p2", "1024", ["2^{10}", "1024"]),
               _record("p3", "\\frac{31}{4}", ["7 3/4"])]
    summary, disagreements = agreement_report(records, ["mathft", "prm800k"])
    assert summary["samples"] == 6 and summary["agree"] == 3
    assert summary["correct"] == {"mathft": 4, "prm800k": 3}
    assert summary["pairwise_agree"] == {"mathft|prm800k": 3}
    assert [(d["problem_id"], d["sample"], d["answer"], d["verdicts"]) for d in disagreements] == [
        ("p1", 0, "\\frac{2}{4}", {"mathft": True, "prm800k": False}),
        ("p2", 0, "2^{10}", {"mathft": True, "prm800k": False}),
        ("p3", 0, "7 3/4", {"mathft": False, "prm800k": True})]
    assert grade_record(records[0], "mathft") == [
        ("\\frac{2}{4}", True), ("0.5", True), ("3", False)]
    with pytest.raises(ValueError):
        agreement_report(records, ["mathft"])

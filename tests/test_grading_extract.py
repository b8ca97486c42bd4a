"""extract_answer: boxes, PRM800K "# Answer" sections, final-answer sentences, no guessing."""
import pytest

from mathft_jax.grading import extract_answer


@pytest.mark.parametrize("text, expected", [
    ("so $\\boxed{42}$.", "42"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\fbox{7}", "7"),
    ("\\boxed{a} and \\fbox{b}", "b"),
    ("the answer is $\\boxed 5$.", "5"),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("Steps.\n\n# Answer\n\n17", "17"),
    ("Steps.\n# Answer\n\n\\frac{3}{4}\n", "\\frac{3}{4}"),
    ("Final Answer: The final answer is $12$. I hope it is correct.", "12"),
    ("The final answer is 3.5.", "3.5"),
    ("\\boxed{3} ... The final answer is 4", "3"),
])
def test_extracts(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text", [None, "", "no answer here, maybe 12", "\\boxed{unclosed", 17])
def test_returns_none_without_an_answer(text):
    assert extract_answer(text) is None


def test_last_number_only_when_asked():
    text = "we get 3 apples and then 1,250 pears"
    assert extract_answer(text) is None
    assert extract_answer(text, fallback_last_number=True) == "1,250"


def test_unbalanced_box_falls_back_to_an_earlier_complete_one():
    assert extract_answer("\\boxed{1} and \\boxed{2") == "1"

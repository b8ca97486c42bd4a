"""Properties (hypothesis): is_equiv is reflexive and symmetric; equal keys imply is_equiv."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mathft_jax.grading import answer_key, is_equiv, normalize

# Answer-like strings: LaTeX pieces glued together, plus arbitrary text.
PIECES = ["1", "2", "-", "+", "x", "y", "i", "\\pi", "\\frac{1}{2}", "\\frac", "{", "}", "(", ")",
          "[", "]", ",", "\\sqrt{3}", "^", "2", ".5", "0", "\\%", "^\\circ", "\\text{ cm}", "\\cup",
          "\\infty", "=", "<", "\\le", "\\pm", "_8", "\\text{(A)}", "e", "!", "/", " ", "\\cdot"]
latexish = st.lists(st.sampled_from(PIECES), min_size=1, max_size=8).map("".join)
answers = st.one_of(latexish, st.text(max_size=30))
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(answers)
def test_reflexive(a):
    assert is_equiv(a, a)


@SETTINGS
@given(answers, answers)
def test_symmetric(a, b):
    assert is_equiv(a, b) == is_equiv(b, a)


@SETTINGS
@given(answers, answers)
def test_equal_keys_imply_equivalence(a, b):
    if answer_key(a) == answer_key(b):
        assert is_equiv(a, b)


@SETTINGS
@given(latexish)
def test_normalised_form_is_equivalent_and_never_raises(a):
    assert isinstance(normalize(a), str)
    assert answer_key(normalize(a)) is not None


@SETTINGS
@given(st.integers(-10**6, 10**6), st.integers(1, 10**4))
def test_fraction_spellings_agree(p, q):
    assert is_equiv(f"\\frac{{{p}}}{{{q}}}", f"{p}/{q}")
    assert is_equiv(f"\\dfrac{{{p}}}{{{q}}}", f"\\frac{{{2 * p}}}{{{2 * q}}}")

"""Answer grading: extraction, normalisation, equivalence, canonical keys and graders.

See docs/grading.md for the policies (decimals, percentages, bases, units), the extraction
policies, the graders and the time bounds.
"""
from mathft_jax.grading.equiv import answer_key, is_equiv
from mathft_jax.grading.extract import POLICIES, extract_answer
from mathft_jax.grading.graders import GRADERS, Verdict, get_grader, grade
from mathft_jax.grading.normalize import normalize
from mathft_jax.grading.timeout import warm_up

__all__ = ["extract_answer", "normalize", "is_equiv", "answer_key", "warm_up", "grade", "get_grader",
           "GRADERS", "POLICIES", "Verdict"]

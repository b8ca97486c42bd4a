"""seqio postprocessing and metric for generation tasks: final-answer accuracy via the grader."""
from __future__ import annotations

from typing import Optional, Sequence

from mathft_jax import grading


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def postprocess_answer(output_or_target, example: Optional[dict] = None,
                       is_target: bool = False) -> Optional[str]:
    """Targets become the gold answer (the example's `answer` feature); predictions become the
    answer extracted from the generated solution (None where it has none)."""
    if is_target:
        return _text(example["answer"])
    return grading.extract_answer(_text(output_or_target))


def answer_accuracy(targets: Sequence[str], predictions: Sequence[Optional[str]]) -> dict:
    """Pass@1 of one sample per problem: the share of predictions equivalent to the gold."""
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    correct = sum(grading.is_equiv(p, t) for t, p in zip(targets, predictions))
    return {"answer_accuracy": 100.0 * correct / max(len(targets), 1)}

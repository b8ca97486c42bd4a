"""Pull the final answer out of a solution text.

Order of preference: the last `\\boxed{...}` / `\\fbox{...}` (nested braces matched, also the
brace-less `\\boxed 5` form), PRM800K's "# Answer" section, a "The final answer is X" sentence.
Anything else returns None under the default `strict` policy; the `lenient` policy adds answer
sentences and closing math (`lenient.py`). Guessing the last number is opt-in
(`fallback_last_number`).
"""
from __future__ import annotations

import re

from mathft_jax.grading.lenient import extract_lenient

POLICIES = ("strict", "lenient")
_ANSWER_SECTION = re.compile(r"^#+[ \t]*Answer[ \t]*\n+(.+?)(?:\n[ \t]*\n|\Z)", re.MULTILINE | re.DOTALL)
_FINAL_SENTENCE = re.compile(r"[Tt]he final answer is[:\s]*(.+?)(?:\.\s*I hope it is correct|\n|$)",
                             re.DOTALL)
_LAST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_BOX = re.compile(r"\\(?:boxed|fbox)")
_BOXED_SPACE_END = re.compile(r"[$\n]")
_BRACE_OR_ESCAPE = re.compile(r"\\.|[{}]", re.DOTALL)


def _closing_braces(text: str) -> dict[int, int]:
    """Position of each `{` -> position of its matching `}`, in one pass (linear in the text;
    rescanning from every box made `\\boxed{` * 14,285 take minutes). `\\{`, `\\}` and `\\\\`
    are escapes, not braces; an unclosed `{` has no entry."""
    closing, open_at = {}, []
    for match in _BRACE_OR_ESCAPE.finditer(text):
        if match.group() == "{":
            open_at.append(match.start())
        elif match.group() == "}" and open_at:
            closing[open_at.pop()] = match.start()
    return closing


def _box_contents(text: str, last_only: bool) -> list[str]:
    """Contents of the boxes in `text`, from the last (just that one with `last_only`);
    an empty box states no answer and ends the search."""
    boxes = [match.end() for match in _BOX.finditer(text)]
    closing = _closing_braces(text) if boxes else {}
    found = []
    for rest in reversed(boxes):
        if rest < len(text) and text[rest] == "{":
            end = closing.get(rest)
            content = None if end is None else text[rest + 1:end]
        elif rest < len(text) and text[rest] == " ":  # `\boxed 5`: up to `$` or end of line
            stop = _BOXED_SPACE_END.search(text, rest + 1)
            content = text[rest + 1:stop.start() if stop else len(text)].strip() or None
        else:  # `\boxedfoo` is another command: look further back
            content = None
        if content is not None:
            if not content.strip():
                break
            found.append(content.strip())
            if last_only:
                break
    return found


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed`/`\\fbox` in `text`, or None."""
    found = _box_contents(text, last_only=True)
    return found[0] if found else None


def all_boxed(text: str) -> list[str]:
    """Contents of every box in `text`, in order (OlympiadBench's judge joins them all for a
    multiple-answer problem); those before an empty box are left out."""
    return _box_contents(text, last_only=False)[::-1]


def _strip_math_delimiters(answer: str) -> str:
    answer = answer.strip().rstrip(".").strip()
    for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if answer.startswith(left) and answer.endswith(right) and len(answer) >= len(left) + len(right):
            answer = answer[len(left):len(answer) - len(right)].strip()
    return answer.rstrip(".").strip()


def extract_answer(text: str | None, fallback_last_number: bool = False,
                   policy: str = "strict") -> str | None:
    """The final answer of a solution, or None when it states none. `policy` is "strict"
    (the rules above) or "lenient" (then also `lenient.extract_lenient`'s rules)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown extraction policy {policy!r}; expected one of {POLICIES}")
    if not isinstance(text, str) or not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    for pattern in (_ANSWER_SECTION, _FINAL_SENTENCE):
        matches = pattern.findall(text)
        if matches:
            answer = _strip_math_delimiters(matches[-1])
            if answer:
                return answer
    if policy == "lenient":
        answer = extract_lenient(text)
        if answer is not None:
            return answer
    if fallback_last_number:
        numbers = _LAST_NUMBER.findall(text)
        if numbers:
            return numbers[-1].rstrip(",")
    return None

"""Pull the final answer out of a solution text.

Order of preference: the last `\\boxed{...}` / `\\fbox{...}` (nested braces matched, also the
brace-less `\\boxed 5` form), PRM800K's "# Answer" section, a "The final answer is X" sentence.
Anything else returns None: guessing the last number is opt-in (`fallback_last_number`).
"""
from __future__ import annotations

import re

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_ANSWER_SECTION = re.compile(r"^#+[ \t]*Answer[ \t]*\n+(.+?)(?:\n[ \t]*\n|\Z)", re.MULTILINE | re.DOTALL)
_FINAL_SENTENCE = re.compile(r"[Tt]he final answer is[:\s]*(.+?)(?:\.\s*I hope it is correct|\n|$)",
                             re.DOTALL)
_LAST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _group_after(text: str, start: int) -> str | None:
    """The brace group opening at `text[start]`, without its braces; None if unbalanced."""
    depth, pos = 0, start
    while pos < len(text):
        char = text[pos]
        if char == "\\":  # `\{`, `\}` and `\\` are escapes, not braces
            pos += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:pos]
        pos += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed`/`\\fbox` in `text`, or None."""
    start = max(text.rfind(command) for command in _BOX_COMMANDS)
    while start >= 0:
        command = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
        rest = start + len(command)
        if rest < len(text) and text[rest] == "{":
            content = _group_after(text, rest)
        elif rest < len(text) and text[rest] == " ":  # `\boxed 5`: up to `$` or end of line
            content = re.split(r"[$\n]", text[rest + 1:], maxsplit=1)[0].strip() or None
        else:  # `\boxedfoo` is another command: look further back
            content = None
        if content is not None:
            return content.strip() or None  # an empty box states no answer
        start = max(text.rfind(command, 0, start) for command in _BOX_COMMANDS)
    return None


def _strip_math_delimiters(answer: str) -> str:
    answer = answer.strip().rstrip(".").strip()
    for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if answer.startswith(left) and answer.endswith(right) and len(answer) >= len(left) + len(right):
            answer = answer[len(left):len(answer) - len(right)].strip()
    return answer.rstrip(".").strip()


def extract_answer(text: str | None, fallback_last_number: bool = False) -> str | None:
    """The final answer of a solution, or None when it states none."""
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
    if fallback_last_number:
        numbers = _LAST_NUMBER.findall(text)
        if numbers:
            return numbers[-1].rstrip(",")
    return None

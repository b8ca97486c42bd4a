"""The `lenient` extraction policy: answers that are not boxed (docs/grading.md, case by case).

Tried only where the strict rules find nothing, in this order:
1. an answer sentence, the last one in the text: "the answer is", "Answer:", "final answer"
   and their equivalents in the major languages of math benchmarks;
2. the last display or inline math of the closing line (or a display block that ends the text);
3. the number the last sentence states (`So Sam has 12 apples in total.`): its only number, or
   the one a chain ends in (`9 * 2 = $18 a day.`), unless the sentence hedges or negates;
then the answer is cleaned: markdown emphasis, a whole-answer `\\text{}`, currency, percent
words, thousands separators, decimal commas of prose and unit words after a number go.
Everything is one pass or a bounded number of `rfind`s over the text: linear time.
"""
from __future__ import annotations

import re
import string

_PHRASES = (
    # English
    "the final answer is", "final answer is", "the answer is", "answer is", "final answer:",
    "final answer", "answer:",
    # Chinese, Japanese, Korean
    "最终答案是", "最终答案为", "最终答案:", "答案是", "答案为", "答案:", "答えは", "答え:", "정답은", "답은",
    "정답:", "답:",
    # Spanish, Portuguese, Italian, French, German
    "la respuesta final es", "la respuesta es", "respuesta final:", "respuesta:", "a resposta é",
    "resposta:", "la risposta è", "risposta:", "la réponse finale est", "la réponse est",
    "réponse :", "réponse:", "die endgültige antwort ist", "die antwort ist", "antwort:",
    "ergebnis:",
    # Russian, Vietnamese, Indonesian
    "окончательный ответ:", "ответ равен", "ответ:", "ответ —", "đáp án là", "đáp án:",
    "jawabannya adalah", "jawaban:",
)
_VARIANTS = {variant for phrase in _PHRASES
             for variant in (phrase, phrase.replace(":", "："), phrase.replace(":", " :"))}
# Longest first, so "the final answer is" wins over "answer is" at the same position; a phrase
# ending in a Latin letter must end a word ("the answer isn't" is no answer sentence).
_PHRASE = re.compile("|".join(
    re.escape(p) + (r"(?![\w'’])" if p[-1].isascii() and p[-1].isalpha() else "")
    for p in sorted(_VARIANTS, key=len, reverse=True)), re.IGNORECASE)
_LONE_DOLLAR = re.compile(r"(?<![\\$])\$(?!\$)")
# A whitespace run is entered at its start only (`(?<!\s)`): trying every position inside a
# long run made one search quadratic in it.
_SENTENCE_END = re.compile(
    r"[.。!?！？;；](?=\s|$)|,\s+(?:which|so|since|because|as)\b|(?<!\s)\s+(?:because|since)\s")
_LEADING_MARKS = string.whitespace + "\u00a0\u3000*_#>:："  # markdown and a colon left over
_TRAILING_MARKS = string.whitespace + "\u00a0\u3000*_"
_TEXT_WRAPPER = re.compile(r"^\\(?:text|textbf|mathrm|mbox|textrm)\{([^{}]*)\}$")
_CURRENCY = re.compile(r"^(?:US\$|USD\s*|\\\$|\$|€|£|¥|₹|Rs\.?\s*)(?=[\d.])|"
                       r"(?<!\s)\s*(?:USD|EUR|dollars?|euros?)$", re.IGNORECASE)
_PERCENT_WORDS = re.compile(r"(?<=\d)\s*(?:percentage|percent|per\s+cent|pct|por\s+ciento|pour\s+cent|prozent|"
                            r"per\s+cento|por\s+cento|процент(?:а|ов)?|%)$", re.IGNORECASE)
_SPACED_THOUSANDS = re.compile(r"^-?\d{1,3}(?:(?:\s|\\,|\u202f|\u2009)\d{3})+(?:\.\d+)?$")
_COMMA_THOUSANDS = re.compile(r"^-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?$")
# In prose (never in math, where a comma separates items: `1,3` is a list), a comma between
# digits that is not a thousands separator is a decimal comma: `2,74`, `1000,99`, `0,111`
# (math-verify's number extraction, parser.py `lazy_expr_regex`).
_DECIMAL_COMMA = re.compile(r"^-?\d+,\d+$")
# A number, then at most three words (`28 students`, `12 square meters`): the number.
_NUMBER_THEN_WORDS = re.compile(r"^(-?\d+(?:\.\d+)?)\s+([^\W\d_]+(?:\s+[^\W\d_]+){0,2})$")
_CONNECTIVES = frozenset(("or", "and", "to", "of", "times", "over", "plus", "minus", "o", "y", "et",
                          "und", "oder", "или", "и"))


def _strip_marks(text: str) -> str:
    return text.lstrip(_LEADING_MARKS).rstrip(_TRAILING_MARKS)


def _rest_of_sentence(text: str, start: int) -> tuple[str, bool]:
    """From `start` to the end of the sentence; the next non-empty line if the phrase ends one
    ("Answer:\\n\\n9")."""
    end = text.find("\n", start)
    line = text[start:] if end < 0 else text[start:end]
    while not _strip_marks(line) and end >= 0:
        start = end + 1
        end = text.find("\n", start)
        line = text[start:] if end < 0 else text[start:end]
    math = _first_math(line)
    if math is not None:
        return math, False
    stop = _SENTENCE_END.search(line)
    return (line[:stop.start()] if stop else line), True


def _math_spans(line: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of the first and of the last complete span of each delimiter
    kind in a line: a bounded number of `find`s, so linear in the line."""
    spans = []
    for left, right in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)")):
        begin = line.find(left)
        end = line.find(right, begin + len(left)) if begin >= 0 else -1
        if end >= 0:
            spans.append((begin, end, line[begin + len(left):end]))
        end = line.rfind(right)
        begin = line.rfind(left, 0, end - len(left) + 1) if end > 0 else -1
        if begin >= 0 and begin + len(left) <= end:
            spans.append((begin, end, line[begin + len(left):end]))
    dollars = [m.start() for m in _LONE_DOLLAR.finditer(line)]
    pairs = len(dollars) // 2  # paired from the left: `$a$ costs $5` leaves the last one out
    for pair in {0, pairs - 1} if pairs else ():
        begin, end = dollars[2 * pair], dollars[2 * pair + 1]
        spans.append((begin, end, line[begin + 1:end]))
    return spans


def _first_math(line: str) -> str | None:
    spans = _math_spans(line)
    return min(spans)[2] if spans else None


def answer_sentence(text: str) -> tuple[str, bool] | None:
    """(what the last answer phrase states, whether it is prose rather than math)."""
    last = None
    for last in _PHRASE.finditer(text):
        pass
    if last is None:
        return None
    answer, prose = _rest_of_sentence(text, last.end())
    return (answer, prose) if _strip_marks(answer) else None


def closing_math(text: str) -> tuple[str, bool] | None:
    """The last math of the closing line; a display block may end the text over several lines."""
    text = text.rstrip()
    for left, right in (("\\[", "\\]"), ("$$", "$$")):
        if text.endswith(right):
            begin = text.rfind(left, 0, len(text) - len(right))
            if begin >= 0:
                return text[begin + len(left):len(text) - len(right)], False
    spans = _math_spans(text[text.rfind("\n") + 1:])
    return (max(spans, key=lambda span: span[1])[2], False) if spans else None


def clean(answer: str, prose: bool = False) -> str:
    """Markdown, `\\text{}` around the whole answer, currency, percent words, thousands
    separators, decimal commas (`prose` only: read outside math delimiters) and unit words
    after a number."""
    answer = _strip_marks(answer).rstrip(".。").strip()
    if len(answer) > 1 and answer[0] == answer[-1] == "$" and not _CURRENCY.match(answer):
        answer, prose = answer.strip("$").strip(), False
    wrapped = _TEXT_WRAPPER.match(answer)
    if wrapped:
        answer = wrapped.group(1).strip()
    answer = _CURRENCY.sub("", answer).strip()
    percent = _PERCENT_WORDS.search(answer)
    if percent:
        answer = answer[:percent.start()].strip() + "\\%"
    if _SPACED_THOUSANDS.match(answer) or _COMMA_THOUSANDS.match(answer):
        answer = re.sub(r"\s|\\,|,|\u202f|\u2009", "", answer)
    elif prose and _DECIMAL_COMMA.match(answer):
        answer = answer.replace(",", ".")
    unit = _NUMBER_THEN_WORDS.match(answer)
    if unit and not _CONNECTIVES.intersection(unit.group(2).lower().split()):
        answer = unit.group(1)
    return answer


# The last sentence of free text: a number (thousands groups, a decimal point or comma, a
# fraction a/b), words that hedge or negate it, and a chain's last `=`.
_NUMBER = re.compile(r"(?<![\w.,])-?\d+(?:[.,]\d+)*(?:/\d+)?(?![\w])")
_HEDGES = re.compile(r"\b(?:about|approximately|around|roughly|nearly|almost|maybe|perhaps|probably|"
                     r"think|guess|not|never|no|or|between|sure|isn't|aren't|wasn't|n't)\b|n't\b",
                     re.IGNORECASE)
_LAST_SENTENCE_END = re.compile(r"[.!?。！？]\s+(?=\S)|\n")
_CHAIN_END = re.compile(r"=\s*(?:\\?\$|US\$|€|£)?\s*$")
_CLAUSE_BREAK = re.compile(r",\s*(?:so|thus|therefore|hence)\b|;", re.IGNORECASE)


def last_sentence_number(text: str) -> tuple[str, bool] | None:
    """The number the last sentence states, with what follows it up to the sentence's end
    (`12 apples in total` -> cleaned to `12`): its only number (of its last clause, after
    `, so` or `;`, where it has several), or the last one where a chain `... = N` ends in it. None where the sentence hedges or negates (`about 9`, `isn't 4`,
    `5 or 6`) or states no number. math-verify reads numbers anywhere in free text, the last
    first (its README, "Answer Extraction"); this is the part of that we trust."""
    text = text.rstrip()
    last_end = None
    for last_end in _LAST_SENTENCE_END.finditer(text):
        pass
    sentence = text[last_end.end():] if last_end else text
    sentence = sentence.rstrip(".!?。！？ ")
    clause = None
    for clause in _CLAUSE_BREAK.finditer(sentence):  # `..., so each gets 18`: its last clause
        pass
    if clause and len(_NUMBER.findall(sentence)) > 1:
        sentence = sentence[clause.end():]
    numbers = list(_NUMBER.finditer(sentence))
    if not numbers or _HEDGES.search(sentence):
        return None
    last = numbers[-1]
    if len(numbers) > 1 and not _CHAIN_END.search(sentence[:last.start()]):
        return None
    tail = sentence[last.end():].split()
    percent = " ".join(tail[:1]) if tail and _PERCENT_WORDS.search("0 " + tail[0]) else ""
    return f"{last.group()} {percent}".strip(), True


def extract_lenient(text: str) -> str | None:
    """An answer sentence, else the closing line's math, else the number the last sentence
    states; cleaned. None if none."""
    for rule in (answer_sentence, closing_math, last_sentence_number):
        found = rule(text)
        if found is not None:
            answer = clean(*found)
            if answer:
                return answer
    return None

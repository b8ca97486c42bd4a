"""Stop strings: a sample ends at the first token whose text completes one of them.

    stop = StopStrings(("\\n\\nProblem:", "</s>"), vocab.decode)
    k = stop.first_stop(tokens)  # keep tokens[:k]; None: no stop string in the text
    cut_text(vocab.decode(tokens[:k]), stop.strings)  # the text before the string

Matched on the host, in decoded text, not on device over tokens. A string can end inside a
token (":\\n" completes "Problem:") and be tokenized in many ways ("\\n\\n" + "Problem" + ":"
or "\\n" + "\\nProblem:" ...), so a token-level matcher has to precompute, for every token,
how it can overlap each string (HF's StopStringCriteria does this), and it still goes wrong
where the text is not the concatenation of the tokens' strings (byte fallback, SentencePiece's
leading space, clean-up of spaces). Searching the decoded text is right for any tokenizer,
and cheap: the continuous engine decodes a sample once per chunk (a few dozen decodes of a
MATH-length sample) and searches for the ending token only in a chunk that completes a
string (`first_stop`: a binary search over the chunk's tokens). The price is that the
static engine (one device loop per batch) cannot free a row early: it truncates after the
loop, the continuous engine frees the slot after the chunk.

What is kept (vLLM's default, not HF's `stop_strings`, which keeps the string): the sample's
tokens run to the token that completes the string, inclusive (they were generated, and
`num_tokens` and the log-likelihood count them, as they count an EOS); its text stops before
the string (`cut_text`), so nothing of the string or after it reaches grading.

A single token that ends a sample (an EOS, a chat model's end of turn) is a stop id,
matched on device (`SamplingParams.stop_ids`): a special token's text is not in the
decoded text at all (decoding skips special tokens).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np


def check_strings(strings, where: str) -> tuple[str, ...]:
    """`strings` as a tuple of non-empty strings (gin and JSON give lists); else ValueError
    naming `where`."""
    if isinstance(strings, str) or not isinstance(strings, (tuple, list)):
        raise ValueError(f"{where} must be a tuple of strings, got {strings!r}")
    for s in strings:
        if not isinstance(s, str) or not s:
            raise ValueError(f"{where} must hold non-empty strings, got {s!r}")
    return tuple(strings)


class StopStrings:
    """Stop strings and the decoding they are searched in (a vocabulary's `decode`: token ids
    -> text). The search assumes what every tokenizer's decoder gives: the text of a prefix
    of the tokens is a prefix of the whole text (but for an incomplete last character), so
    once a prefix holds a string every longer one does."""

    def __init__(self, strings: Sequence[str], decode: Callable[[Sequence[int]], str]):
        self.strings = check_strings(strings, "stop_strings")
        self._decode = decode

    def holds(self, tokens: Sequence[int]) -> bool:
        text = self._decode(list(tokens))
        return any(s in text for s in self.strings)

    def first_stop(self, tokens: Sequence[int], checked: int = 0) -> Optional[int]:
        """The fewest leading tokens whose text holds a stop string (the sample ends after
        them), or None when the text of all of `tokens` holds none. `checked`: a prefix
        length already known to hold none (the tokens before this chunk)."""
        if not self.holds(tokens):
            return None
        lo, hi = checked, len(tokens)  # tokens[:lo] holds no string, tokens[:hi] holds one
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.holds(tokens[:mid]):
                hi = mid
            else:
                lo = mid
        return hi


def cut_text(text: str, strings: Sequence[str]) -> str:
    """The text before the first stop string in it (all of it when none is)."""
    ends = [i for i in (text.find(s) for s in strings) if i >= 0]
    return text[:min(ends)] if ends else text


def sum_logprobs(values: np.ndarray) -> float:
    """A sample's log-likelihood from its tokens' log-probabilities, added one by one in
    float32 (both engines sum a stopped sample's kept tokens with this, so they agree)."""
    total = np.float32(0.0)
    for v in np.asarray(values, np.float32):
        total = np.float32(total + v)
    return float(total)

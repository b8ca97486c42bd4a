"""Prompt formats (Liu et al., 2023) and evaluator training examples, each gin-configurable.

Text level only: tokenisation happens in the seqio tasks. Examples are plain dicts with
`inputs` (the prompt) and `targets` (what the model learns to produce).
"""
from __future__ import annotations

import collections
import logging
import math
import re
import zlib
from typing import Iterable, Optional, Sequence

import gin
import numpy as np

GENERATION_TEMPLATE = "Problem:\n{problem}\n\nSolution:\n"
EVALUATOR_TEMPLATE = ("Here is a math problem: {problem}\n"
                      "Here is a candidate solution: {solution}\n"
                      "The above candidate solution is")
CORRECT_TARGET = " correct"
INCORRECT_TARGET = " incorrect"


@gin.configurable
def generation_prompt(problem: str, template: str = GENERATION_TEMPLATE) -> str:
    """The SSFT prompt; the model continues it with the solution."""
    return template.format(problem=problem)


@gin.configurable
def generation_target(solution: str) -> str:
    r"""The SSFT target: the step-by-step solution, ending in its `\boxed{answer}`."""
    return solution.rstrip()


@gin.configurable
def evaluator_prompt(problem: str, solution: str, template: str = EVALUATOR_TEMPLATE) -> str:
    """The evaluator's prompt; the model continues it with ` correct` or ` incorrect`."""
    return template.format(problem=problem, solution=solution)


@gin.configurable
def evaluator_target(correct: bool, positive: str = CORRECT_TARGET,
                     negative: str = INCORRECT_TARGET) -> str:
    return positive if correct else negative


# ----------------------------------------------------------------------------- SCR examples


@gin.configurable
def evaluator_heldout(records: Iterable[dict], split: str, fraction: float = 0.0,
                      max_train_problems: Optional[int] = None) -> list[dict]:
    """The graded records of an evaluator split: "validation" holds about `fraction` of the
    problems (chosen by a hash of the problem id, so it is stable as the file grows),
    "train" the rest. The trainer's `eval_every` then reports the evaluator's held-out pair
    accuracy and loss. fraction 0 (the default): everything trains.

    max_train_problems: "train" keeps only its first that many problems (file order), so a
    study can vary the evaluator's data from one sampled file (bench/evaluator_study.py)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"evaluator_heldout.fraction={fraction!r} must be in [0, 1)")
    if max_train_problems is not None and max_train_problems < 1:
        raise ValueError(f"evaluator_heldout.max_train_problems={max_train_problems!r} must be "
                         "positive (or None: all)")
    if split not in ("train", "validation"):
        raise ValueError(f"evaluator tasks have splits train and validation, not {split!r}")
    cut = int(round(fraction * 10_000))
    held = lambda r: zlib.crc32(str(r["problem_id"]).encode("utf-8")) % 10_000 < cut  # noqa: E731
    kept = [r for r in records if held(r) == (split == "validation")]
    return kept[:max_train_problems] if split == "train" else kept


def problem_rng(seed: int, problem_id: str) -> np.random.Generator:
    """Per-problem generator: a problem's sample does not depend on the other problems."""
    return np.random.default_rng([seed, zlib.crc32(problem_id.encode("utf-8"))])


def split_by_correctness(samples: Iterable[dict], dedupe: bool = True) -> tuple[list[str], list[str]]:
    """Candidate texts (first occurrence order) split into (correct, incorrect)."""
    seen: set[str] = set()
    correct, incorrect = [], []
    for sample in samples:
        text = sample["text"]
        if dedupe and text in seen:
            continue
        seen.add(text)
        (correct if sample["correct"] else incorrect).append(text)
    return correct, incorrect


# ----------------------------------------------------------------------------- step prefixes
# A verifier's easier curriculum: every line-prefix of a candidate, labelled by whether it is
# still right. A label then follows the step it judges, so checking is local (bench/
# evaluator_study.py, docs/RESULTS.md). Steps are checked when they are arithmetic
# ("a op b = c", the synthetic steps style writes one per operation).

ARITHMETIC_STEP = re.compile(r"^\s*(-?\d+)\s*([-+*/])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")


def check_step(line: str) -> Optional[bool]:
    """Whether an "a op b = c" line is right (division exact); None for any other line."""
    m = ARITHMETIC_STEP.match(line)
    if not m:
        return None
    a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
    if op == "/":
        return b != 0 and a == b * c
    return {"+": a + b, "-": a - b, "*": a * b}[op] == c


def has_wrong_step(text: str) -> bool:
    """Whether any line of `text` is an "a op b = c" step that is wrong (`check_step`)."""
    return any(check_step(line) is False for line in text.split("\n"))


def solution_prefixes(text: str) -> list[str]:
    """The candidate cut after each of its lines; the last is the whole (stripped) text."""
    lines = text.rstrip().split("\n")
    return ["\n".join(lines[:i]) for i in range(1, len(lines) + 1)]


def prefix_labels(text: str, correct: bool) -> list[Optional[bool]]:
    """Per prefix (`solution_prefixes`): False from the first wrong checkable step on, True
    before it, and the grade for the whole text. A wrong candidate with no wrong checkable
    step has its error where no check sees it: its partial prefixes are None (unknown)."""
    checks = [check_step(line) for line in text.rstrip().split("\n")]
    visible = any(c is False for c in checks)
    labels, ok = [], True
    for c in checks[:-1]:
        ok = ok and c is not False
        labels.append(False if not ok else (True if correct or visible else None))
    return labels + [bool(correct)]


LABEL_KINDS = ("outcome", "process")


@gin.configurable
def evaluator_labels(records: Iterable[dict], kind: str = "outcome") -> list[dict]:
    """The label each training candidate of the evaluator gets.

    outcome (the paper): the final answer's grade.
    process: right only if the answer is right and no checkable step is wrong
      (`check_step`), the way PRM800K's step ratings mark a solution with any bad step as
      bad. On the synthetic curriculum about half the right answers come from wrong
      arithmetic (docs/RESULTS.md); outcome labels teach the evaluator that such slips are
      fine, process labels teach it to find them. Test metrics always use the outcome grade.
    """
    if kind not in LABEL_KINDS:
        raise ValueError(f"evaluator_labels.kind={kind!r}: choose from {LABEL_KINDS}")
    if kind == "outcome":
        return list(records)
    return [{**record, "samples": [
        {**s, "correct": bool(s["correct"]) and not has_wrong_step(s["text"])}
        for s in record["samples"]]} for record in records]


def step_records(records: Iterable[dict]) -> list[dict]:
    """Graded records whose samples are their candidates' labelled prefixes (unknown ones
    dropped), for the pair and pointwise builders."""
    out = []
    for record in records:
        samples = [{"text": prefix, "correct": label}
                   for sample in record["samples"]
                   for prefix, label in zip(solution_prefixes(sample["text"]),
                                            prefix_labels(sample["text"], sample["correct"]))
                   if label is not None]
        out.append({**record, "samples": samples})
    return out


def _pair_order_uniform(n_pos: int, n_neg: int, count: int, rng: np.random.Generator):
    flat = rng.choice(n_pos * n_neg, size=count, replace=False)
    return [(int(k) // n_neg, int(k) % n_neg) for k in flat]


def _pair_order_round_robin(n_pos: int, n_neg: int, count: int, rng: np.random.Generator):
    # Pair k is (k mod P, (k + k // lcm) mod N) over shuffled lists: every solution is used as
    # evenly as possible, and the first P*N pairs are all distinct.
    pos, neg = rng.permutation(n_pos), rng.permutation(n_neg)
    lcm = math.lcm(n_pos, n_neg)
    return [(int(pos[k % n_pos]), int(neg[(k + k // lcm) % n_neg])) for k in range(count)]


PAIR_SAMPLERS = {"uniform": _pair_order_uniform, "round_robin": _pair_order_round_robin}


def sample_pairs(n_pos: int, n_neg: int, num_pairs: int, sampling: str,
                 rng: np.random.Generator) -> list[tuple[int, int]]:
    """Up to `num_pairs` distinct (correct index, incorrect index) pairs."""
    if sampling not in PAIR_SAMPLERS:
        raise ValueError(f"unknown pair sampling {sampling!r}; choose from {sorted(PAIR_SAMPLERS)}")
    count = min(num_pairs, n_pos * n_neg)
    return PAIR_SAMPLERS[sampling](n_pos, n_neg, count, rng) if count else []


def _count_one_sided(stats: collections.Counter, correct: Sequence[str], incorrect: Sequence[str]) -> bool:
    """Counts a problem without a correct or without an incorrect candidate; True if so."""
    stats["problems"] += 1
    stats["problems_without_correct"] += not correct
    stats["problems_without_incorrect"] += not incorrect
    return not correct or not incorrect


def _candidate_pairs(records: Iterable[dict], num_pairs: int, sampling: str, seed: int,
                     dedupe: bool, stats: collections.Counter):
    """(record, correct text, incorrect text, pair id) for up to `num_pairs` pairs a problem.
    Problems with no correct or no incorrect candidate give none and are counted."""
    for record in records:
        correct, incorrect = split_by_correctness(record["samples"], dedupe)
        if _count_one_sided(stats, correct, incorrect):
            continue
        rng = problem_rng(seed, str(record["problem_id"]))
        for i, j in sample_pairs(len(correct), len(incorrect), num_pairs, sampling, rng):
            yield record, correct[i], incorrect[j], stats["pairs"]
            stats["pairs"] += 1


@gin.configurable
def pairwise_examples(records: Iterable[dict], num_pairs: int = 10, sampling: str = "uniform",
                      seed: int = 0, dedupe: bool = True) -> tuple[list[dict], collections.Counter]:
    """Margin-loss examples: per problem, up to `num_pairs` (correct, incorrect) pairs of its
    candidates (the paper: 10 pairs from 64 candidates).

    Each pair gives four consecutive examples sharing `pair_id`, in the order
    (X+, " correct"), (X+, " incorrect"), (X-, " correct"), (X-, " incorrect"):
    `inputs` = evaluator prompt of that candidate, `targets` = the label, `is_positive` = 1 for
    X+ and 0 for X-, `label_correct` = 1 for the " correct" rows. Both labels of each candidate
    are there so the trainer computes S = p(" correct") / (p(" correct") + p(" incorrect"))
    exactly, also when a label is several tokens. Problems with no correct or no incorrect
    candidate give no pairs and are counted.
    """
    def rows(record: dict, text: str) -> list[dict]:
        return [{"inputs": evaluator_prompt(record["problem"], text),
                 "targets": evaluator_target(bool(label)), "label_correct": label}
                for label in (1, 0)]
    return _pair_examples(records, num_pairs, sampling, seed, dedupe, rows, "pairwise evaluator")


def _pair_examples(records: Iterable[dict], num_pairs: int, sampling: str, seed: int,
                   dedupe: bool, rows, what: str) -> tuple[list[dict], collections.Counter]:
    """The examples of every sampled pair: `rows(record, text)` for X+ then for X-, each
    row tagged with the pair's `problem_id`, `pair_id` and `is_positive`."""
    stats: collections.Counter = collections.Counter()
    examples = []
    for record, good, bad, pair_id in _candidate_pairs(records, num_pairs, sampling, seed,
                                                       dedupe, stats):
        for text, positive in ((good, 1), (bad, 0)):
            for row in rows(record, text):
                examples.append({"problem_id": str(record["problem_id"]), **row,
                                 "pair_id": pair_id, "is_positive": positive})
    logging.info("%s examples: %s", what, dict(stats))
    return examples, stats


@gin.configurable(denylist=["format_of"])
def sequence_pair_examples(records: Iterable[dict], num_pairs: int = 10,
                           sampling: str = "uniform", seed: int = 0, dedupe: bool = True,
                           format_of=None) -> tuple[list[dict], collections.Counter]:
    """Generation-format pairs for the sequence margin / contrastive MLE losses: two
    consecutive examples per pair, (P, X+) then (P, X-), sharing `pair_id`.

    format_of(record): the prompt format a record's pairs are in, its prompt and each text
    as that format's continuation (the task and the DPO pairs pass `prompts.sampled_format`:
    the format the record was sampled with); None: the generation prompt, texts as they are.
    """
    def rows(record: dict, text: str) -> list[dict]:
        if format_of is None:
            return [{"inputs": generation_prompt(record["problem"]), "targets": text}]
        prompt_format = format_of(record)
        return [{"inputs": prompt_format.prompt_text(record["problem"]),
                 "targets": prompt_format.continuation(text)}]
    return _pair_examples(records, num_pairs, sampling, seed, dedupe, rows, "sequence pair")


@gin.configurable
def pointwise_examples(records: Iterable[dict], max_per_class: int = 8, seed: int = 0,
                       dedupe: bool = True) -> tuple[list[dict], collections.Counter]:
    """Balanced cross-entropy examples: per problem, k correct and k incorrect candidates with
    k = min(#correct, #incorrect, max_per_class); targets " correct" / " incorrect".
    Problems with no correct or no incorrect candidate give nothing and are counted."""
    stats: collections.Counter = collections.Counter()
    examples = []
    for record in records:
        correct, incorrect = split_by_correctness(record["samples"], dedupe)
        if _count_one_sided(stats, correct, incorrect):
            continue
        rng = problem_rng(seed, str(record["problem_id"]))
        k = min(len(correct), len(incorrect), max_per_class)
        for texts, is_correct in ((correct, True), (incorrect, False)):
            for index in sorted(rng.choice(len(texts), size=k, replace=False)):
                examples.append({
                    "problem_id": str(record["problem_id"]),
                    "inputs": evaluator_prompt(record["problem"], texts[index]),
                    "targets": evaluator_target(is_correct),
                    "is_positive": int(is_correct),
                })
        stats["examples_per_class"] += k
    logging.info("pointwise evaluator examples: %s", dict(stats))
    return examples, stats

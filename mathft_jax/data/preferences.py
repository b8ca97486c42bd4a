"""The preference file (docs/formats.md): (prompt, chosen, rejected) pairs for DPO, with the
frozen reference model's log-likelihoods beside them: read, check, write, build from graded
candidates, and the `dpo_pairs` task's examples. The reference's log-likelihoods are
computed by `mathft_jax.scoring.reference` (the model side).
"""
from __future__ import annotations

import json
import math
from typing import Iterable, Sequence

import numpy as np

from mathft_jax.core import atomic
from mathft_jax.data import formats, prompts
from mathft_jax.data.readers import iter_jsonl

REF_FIELDS = ("ref_chosen", "ref_rejected")


class PreferenceFormatError(ValueError):
    """A malformed preference line; the message starts with file:line."""


def _check_record(record, where: str) -> dict:
    if not isinstance(record, dict):
        raise PreferenceFormatError(f"{where}: expected a JSON object")
    if not isinstance(record.get("prompt"), str) and not isinstance(record.get("problem"), str):
        raise PreferenceFormatError(f"{where}: needs a string 'problem' or 'prompt'")
    for field in ("chosen", "rejected"):
        if not isinstance(record.get(field), str):
            raise PreferenceFormatError(f"{where}: '{field}' must be a string")
    refs = [record.get(f) for f in REF_FIELDS]
    if any(r is not None for r in refs):
        if not all(isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r)
                   for r in refs):
            raise PreferenceFormatError(f"{where}: 'ref_chosen' and 'ref_rejected' must both be "
                                        "finite numbers (or both absent)")
    return record


def has_reference(record: dict) -> bool:
    return record.get("ref_chosen") is not None


def read_preferences(path: str) -> list[dict]:
    """Every pair of a preference file, checked; reference log-likelihoods are on every line
    or on none (a half-filled file is an error)."""
    records = []
    for where, record in iter_jsonl(path):
        records.append(_check_record(record, where))
    with_ref = sum(has_reference(r) for r in records)
    if with_ref not in (0, len(records)):
        raise PreferenceFormatError(f"{path}: {with_ref} of {len(records)} pairs have reference "
                                    "log-likelihoods; recompute them for the whole file")
    lengths = {r.get("ref_sequence_length") for r in records}
    if len(lengths) > 1:
        raise PreferenceFormatError(f"{path}: reference log-likelihoods computed at several "
                                    f"sequence lengths {sorted(map(str, lengths))}")
    return records


def write_preferences(path: str, records: Sequence[dict]) -> None:
    """Checked, then written whole or not at all."""
    for i, record in enumerate(records):
        _check_record(record, f"record {i}")
    atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def prompt_text(record: dict) -> str:
    """The prompt a pair's texts continue: `prompt` as given, else `problem` in the run's
    prompt format (gin's `prompt_format.*`; plain: the SSFT format)."""
    if isinstance(record.get("prompt"), str):
        return record["prompt"]
    return prompts.gin_format().prompt_text(record["problem"])


def from_candidates(records: Iterable[dict]) -> list[dict]:
    """Preference pairs from graded candidates: the (correct, incorrect) pairs that
    `formats.sequence_pair_examples` samples (gin: `sequence_pair_examples.num_pairs`, ...),
    chosen = the correct solution. Pairs of candidates sampled in another format than plain
    keep the prompt they were sampled with (`prompt`) and their texts as that format trains
    them (`PromptFormat.continuation`)."""
    records = list(records)
    problems = {str(r["problem_id"]): r["problem"] for r in records}
    formatted = {str(r["problem_id"]) for r in records
                 if prompts.recorded_format(r)[0] != prompts.PLAIN}
    rows, _ = formats.sequence_pair_examples(records, format_of=prompts.sampled_format)
    pairs = []
    for good, bad in zip(rows[0::2], rows[1::2]):  # (P, X+), (P, X-) per pair
        assert good["pair_id"] == bad["pair_id"] and good["is_positive"] and not bad["is_positive"]
        pairs.append({"problem_id": good["problem_id"], "problem": problems[good["problem_id"]],
                      **({"prompt": good["inputs"]} if good["problem_id"] in formatted else {}),
                      "chosen": good["targets"], "rejected": bad["targets"]})
    return pairs


def preference_examples(records: Sequence[dict]) -> list[dict]:
    """The `dpo_pairs` task's examples: (P, chosen) then (P, rejected) per pair, sharing
    `pair_id` (the line's index), with `ref_log_likelihood` where the file has it."""
    examples = []
    for pair_id, record in enumerate(records):
        for text, positive, ref in ((record["chosen"], 1, "ref_chosen"),
                                    (record["rejected"], 0, "ref_rejected")):
            row = {"problem_id": str(record.get("problem_id", pair_id)),
                   "inputs": prompt_text(record), "targets": text, "pair_id": pair_id,
                   "is_positive": positive}
            if has_reference(record):
                row["ref_log_likelihood"] = float(record[ref])
            examples.append(row)
    return examples


def with_reference(records: Sequence[dict], log_likelihoods: np.ndarray,
                   sequence_length: int) -> list[dict]:
    """Copies of the records carrying their reference log-likelihoods (floats of the float32
    values, so they read back bit-exact) and the sequence length they were computed at."""
    return [{**r, "ref_chosen": float(ll[0]), "ref_rejected": float(ll[1]),
             "ref_sequence_length": int(sequence_length)}
            for r, ll in zip(records, np.asarray(log_likelihoods, np.float32))]

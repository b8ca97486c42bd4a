"""The preference file (docs/formats.md): (prompt, chosen, rejected) pairs for DPO, with the
frozen reference model's log-likelihoods stored beside them.

    python -m mathft_jax.preferences --gin_file=gin_configs/models/tiny.gin \\
        --gin_bindings="make_preferences.candidates_path='graded.jsonl'" \\
        --gin_bindings="make_preferences.reference_checkpoint='runs/x/ssft/checkpoints'" \\
        --gin_bindings="make_preferences.output_path='prefs.jsonl'"

DPO compares the policy's sequence log-likelihoods with a frozen reference's. The reference's
never change, so they are computed here once, teacher-forced on exactly the rows training
will see (the task's tokenisation, EOS and truncation to `sequence_length`), and written into
the file; the `dpo_pairs` task hands them to `objectives.dpo_objective` as the float feature
`ref_log_likelihood`, and training holds one model. Pairs come from a graded candidates file
(the SCR pairs in generation format, `formats.sequence_pair_examples` and its gin settings)
or from a preference file of one's own.
"""
from __future__ import annotations

if __name__ == "__main__":  # run the package module once (see mathft_jax/entry.py)
    from mathft_jax.entry import run_module
    run_module("mathft_jax.preferences")


import json
import logging
import math
from typing import Iterable, Optional, Sequence

import gin
import numpy as np

from mathft_jax import atomic

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
    from mathft_jax.data.readers import iter_jsonl  # noqa: PLC0415 (the data package)
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
    """The prompt a pair's texts continue: `prompt` as given, else the generation prompt of
    `problem` (the SSFT format)."""
    from mathft_jax.data.formats import generation_prompt  # noqa: PLC0415
    return record["prompt"] if isinstance(record.get("prompt"), str) else generation_prompt(record["problem"])


def from_candidates(records: Iterable[dict]) -> list[dict]:
    """Preference pairs from graded candidates: the (correct, incorrect) pairs that
    `formats.sequence_pair_examples` samples (gin: `sequence_pair_examples.num_pairs`, ...),
    chosen = the correct solution."""
    from mathft_jax.data import formats  # noqa: PLC0415
    records = list(records)
    problems = {str(r["problem_id"]): r["problem"] for r in records}
    rows, _ = formats.sequence_pair_examples(records)
    pairs = []
    for good, bad in zip(rows[0::2], rows[1::2]):  # (P, X+), (P, X-) per pair
        assert good["pair_id"] == bad["pair_id"] and good["is_positive"] and not bad["is_positive"]
        pairs.append({"problem_id": good["problem_id"], "problem": problems[good["problem_id"]],
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


# ----------------------------------------------------------------------------- reference


def row_batches(records: Sequence[dict], vocab, sequence_length: int, batch_size: int):
    """Feature-converted rows of every pair, (P, chosen) then (P, rejected), as the
    `dpo_pairs` task gives them unpacked (`packing.rows_from_examples`: EOS appended, truncated
    by `packing.fit_to_length`): yields (first row index, batch of `batch_size` rows, rows
    used); the last batch is filled with copies of its first row."""
    from mathft_jax.data import packing  # noqa: PLC0415
    from mathft_jax.data.vocab import decoder_start_id  # noqa: PLC0415
    start = decoder_start_id(vocab)
    examples = [(np.asarray(vocab.encode(prompt_text(r)), np.int32),
                 np.asarray(list(vocab.encode(text)) + [int(vocab.eos_id)], np.int32))
                for r in records for text in (r["chosen"], r["rejected"])]
    for begin in range(0, len(examples), batch_size):
        chunk = examples[begin:begin + batch_size]
        used = len(chunk)
        chunk = chunk + [chunk[0]] * (batch_size - used)
        yield begin, packing.rows_from_examples(chunk, sequence_length, start), used


def reference_log_likelihoods(params, cfg, vocab, records: Sequence[dict], sequence_length: int,
                              batch_size: int = 16, mesh=None, rules=None) -> np.ndarray:
    """float32 [num_pairs, 2]: the model's log P(chosen | P) and log P(rejected | P), computed
    as `objectives.dpo_objective` computes the policy's (same rows, same code)."""
    import jax  # noqa: PLC0415 (jax only where a model runs)

    from mathft_jax import decoding, objectives, partitioning  # noqa: PLC0415
    from mathft_jax.models.decoder import Decoder  # noqa: PLC0415
    model = Decoder(cfg)
    fn = jax.jit(lambda p, b: objectives._row_log_likelihoods(model, p, b, 0))  # noqa: SLF001
    rules = decoding.resolve_rules(cfg, mesh, rules)
    out = np.zeros((2 * len(records),), np.float32)
    for begin, batch, used in row_batches(records, vocab, sequence_length, batch_size):
        with decoding.run_context(mesh, rules):
            ll = fn(params, {k: partitioning.to_global(v, mesh) for k, v in batch.items()})
        out[begin:begin + used] = decoding.to_host(ll)[:used]
    return out.reshape(-1, 2)


def with_reference(records: Sequence[dict], log_likelihoods: np.ndarray,
                   sequence_length: int) -> list[dict]:
    """Copies of the records carrying their reference log-likelihoods (floats of the float32
    values, so they read back bit-exact) and the sequence length they were computed at."""
    return [{**r, "ref_chosen": float(ll[0]), "ref_rejected": float(ll[1]),
             "ref_sequence_length": int(sequence_length)}
            for r, ll in zip(records, np.asarray(log_likelihoods, np.float32))]


@gin.configurable
def make_preferences(output_path: str = gin.REQUIRED,
                     reference_checkpoint: str = gin.REQUIRED,
                     candidates_path: Optional[str] = None,
                     preferences_path: Optional[str] = None,
                     sequence_length: int = 256, batch_size: int = 16,
                     vocabulary=None) -> dict:
    """Write `output_path`: the pairs of a graded candidates file (`candidates_path`) or of a
    preference file (`preferences_path`), with the reference checkpoint's log-likelihoods.
    sequence_length must be the DPO stage's `train.sequence_length` (rows are truncated to it
    alike). Returns counts."""
    from mathft_jax import checkpoints, distributed, partitioning, settings  # noqa: PLC0415
    from mathft_jax.data import readers, vocab as vocab_lib  # noqa: PLC0415
    from mathft_jax.models.config import DecoderConfig  # noqa: PLC0415
    settings.check("make_preferences", sequence_length=sequence_length, batch_size=batch_size)
    if (candidates_path is None) == (preferences_path is None):
        raise settings.SettingError("make_preferences: set exactly one of candidates_path (graded "
                                    "candidates) and preferences_path (a preference file)")
    records = (from_candidates(readers.read_candidates(candidates_path)) if candidates_path
               else read_preferences(preferences_path))
    if not records:
        raise ValueError(f"no preference pairs in {candidates_path or preferences_path} (every "
                         "problem's candidates are all correct or all incorrect?)")
    cfg = DecoderConfig().validate()
    if sequence_length > cfg.max_seq_len:
        raise settings.SettingError(f"make_preferences.sequence_length={sequence_length} exceeds "
                                    f"DecoderConfig.max_seq_len={cfg.max_seq_len}")
    mesh = partitioning.make_mesh()
    partitioning.check_batch_divisible(batch_size, mesh, "make_preferences.batch_size")
    rules = partitioning.rules_for(cfg, mesh)
    params = checkpoints.load_params(reference_checkpoint, cfg, mesh, rules)
    lls = reference_log_likelihoods(params, cfg, vocabulary or vocab_lib.get_vocabulary(),
                                    records, sequence_length, batch_size, mesh, rules)
    if distributed.is_main_process():
        write_preferences(output_path, with_reference(records, lls, sequence_length))
    logging.info("preferences: %d pairs with reference log-likelihoods -> %s", len(records),
                 output_path)
    return {"pairs": len(records), "output": str(output_path),
            "mean_ref_margin": float(np.mean(lls[:, 0] - lls[:, 1]))}


def main(argv):
    del argv
    from mathft_jax import entry  # noqa: PLC0415
    entry.parse_gin_flags()
    print(json.dumps(make_preferences()), flush=True)

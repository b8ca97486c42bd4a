"""The reference log-likelihoods of a preference file (docs/formats.md, the format in
`data/preferences.py`): DPO's frozen reference, computed once and stored with the pairs.

    python -m mathft_jax.scoring.reference --gin_file=gin_configs/models/tiny.gin \\
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

if __name__ == "__main__":  # run the package module once (see mathft_jax/core/entry.py)
    from mathft_jax.core.entry import run_module
    run_module("mathft_jax.scoring.reference")


import json
import logging
from typing import Optional, Sequence

import gin
import numpy as np

from mathft_jax.data.preferences import (from_candidates, prompt_text, read_preferences,
                                         with_reference, write_preferences)

# ----------------------------------------------------------------------------- reference


def reference_log_likelihoods(params, cfg, vocab, records: Sequence[dict], sequence_length: int,
                              batch_size: int = 16, partitioner=None) -> np.ndarray:
    """float32 [num_pairs, 2]: the model's log P(chosen | P) and log P(rejected | P), on the
    rows the `dpo_pairs` task gives `objectives.dpo_objective` unpacked (same rows, same code:
    `likelihood.completion_log_likelihoods`). partitioner: a `partitioning.Partitioner`
    (default: none, one device)."""
    from mathft_jax.scoring.likelihood import completion_log_likelihoods  # noqa: PLC0415
    texts = [(prompt_text(r), text) for r in records for text in (r["chosen"], r["rejected"])]
    ll, _ = completion_log_likelihoods(params, cfg, vocab, [p for p, _ in texts],
                                       [t for _, t in texts], sequence_length=sequence_length,
                                       batch_size=batch_size, partitioner=partitioner)
    return ll.reshape(-1, 2)


@gin.configurable
def make_preferences(output_path: str = gin.REQUIRED,
                     reference_checkpoint: str = gin.REQUIRED,
                     candidates_path: Optional[str] = None,
                     preferences_path: Optional[str] = None,
                     sequence_length: int = 256, batch_size: int = 16,
                     vocabulary=None, model=None) -> dict:
    """Write `output_path`: the pairs of a graded candidates file (`candidates_path`) or of a
    preference file (`preferences_path`), with the reference checkpoint's log-likelihoods.
    sequence_length must be the DPO stage's `train.sequence_length` (rows are truncated to it
    alike). model: the checkpoint's `DecoderConfig` (default: `DecoderConfig()` from gin;
    the pipeline passes its dpo stage's `TrainConfig.model`). Returns counts."""
    from mathft_jax.convert import lora_checkpoints  # noqa: PLC0415
    from mathft_jax.core import distributed, settings
    from mathft_jax.models import partitioning
    from mathft_jax.data import readers, vocab as vocab_lib  # noqa: PLC0415
    from mathft_jax.models.config import DecoderConfig  # noqa: PLC0415
    settings.check("make_preferences", sequence_length=sequence_length, batch_size=batch_size)
    if (candidates_path is None) == (preferences_path is None):
        raise settings.SettingError("make_preferences: set exactly one of candidates_path (graded "
                                    "candidates) and preferences_path (a preference file)")
    records = (from_candidates(readers.read_candidates(candidates_path)) if candidates_path
               else read_preferences(preferences_path))
    if not records:
        raise readers.DataFormatError(
            f"no preference pairs in {candidates_path or preferences_path} (every problem's "
            "candidates are all correct or all incorrect?)")
    cfg = (model or DecoderConfig()).validate()
    if sequence_length > cfg.max_seq_len:
        raise settings.SettingError(f"make_preferences.sequence_length={sequence_length} exceeds "
                                    f"DecoderConfig.max_seq_len={cfg.max_seq_len}")
    partitioner = partitioning.Partitioner.create(cfg)
    partitioner.check_batch_divisible(batch_size, "make_preferences.batch_size")
    params = lora_checkpoints.load_model(reference_checkpoint, cfg, partitioner)
    lls = reference_log_likelihoods(params, cfg, vocabulary or vocab_lib.get_vocabulary(),
                                    records, sequence_length, batch_size, partitioner)
    if distributed.is_main_process():
        write_preferences(output_path, with_reference(records, lls, sequence_length))
    logging.info("preferences: %d pairs with reference log-likelihoods -> %s", len(records),
                 output_path)
    return {"pairs": len(records), "output": str(output_path),
            "mean_ref_margin": float(np.mean(lls[:, 0] - lls[:, 1]))}


def main(argv):
    del argv
    from mathft_jax.core import entry  # noqa: PLC0415
    entry.parse_gin_flags()
    print(json.dumps(make_preferences()), flush=True)

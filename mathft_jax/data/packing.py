"""Prefix-LM rows in numpy: the features of `seqio.PrefixLMFeatureConverter`, built per row.

Each example is (inputs, targets) token arrays, targets already ending in EOS. A row holds one
example (unpacked) or several whole examples (packed; no example ever crosses a row or a
segment boundary). Features, all int32 [batch, length]:

  decoder_target_tokens    inputs ++ targets of each segment, 0 on padding
  decoder_input_tokens     the same shifted right by one within each segment, starting with
                           the decoder start token (the vocabulary's BOS, else 0)
  decoder_loss_weights     1 exactly on target tokens (EOS included), 0 elsewhere
  decoder_segment_ids      1, 2, ... per example in the row; 0 on padding
  decoder_positions        0.. within each segment; 0 on padding
  decoder_causal_attention 1 on the inputs and one position beyond (seqio's prefix-LM mask)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

FEATURES = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
            "decoder_segment_ids", "decoder_positions", "decoder_causal_attention")
# Per-row features of unpacked rows (evaluator and preference tasks) and their padding value:
# int32, or float32 where the padding is a float (a DPO pair's reference log-likelihoods,
# `preferences.py`). `dataset` fills them; the planner shapes a batch by them.
ROW_FEATURES = {"pair_id": -1, "is_positive": 0, "label_correct": 0, "ref_log_likelihood": 0.0}


def fit_to_length(inputs: np.ndarray, targets: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Truncates an over-long example to `length` tokens.

    Targets keep their first k = min(len(targets), max(length - len(inputs), length // 2))
    tokens: a long solution is cut at its end, a short label such as " correct" is never cut.
    Inputs then keep their LAST length - k tokens, so the prompt's closing cue ("Solution:",
    "The above candidate solution is") stays next to the target.
    """
    if len(inputs) + len(targets) <= length:
        return inputs, targets
    k = min(len(targets), max(length - len(inputs), length // 2))
    keep_inputs = length - k
    return (inputs[len(inputs) - keep_inputs:] if keep_inputs else inputs[:0]), targets[:k]


def empty_batch(batch_size: int, length: int) -> dict[str, np.ndarray]:
    return {name: np.zeros((batch_size, length), np.int32) for name in FEATURES}


def write_segment(batch: dict[str, np.ndarray], row: int, start: int, segment_id: int,
                  inputs: np.ndarray, targets: np.ndarray, start_id: int) -> int:
    """Writes one example into `batch[row]` at `start`; returns the next free position."""
    n_in, n = len(inputs), len(inputs) + len(targets)
    end = start + n
    span = slice(start, end)
    batch["decoder_target_tokens"][row, start:start + n_in] = inputs
    batch["decoder_target_tokens"][row, start + n_in:end] = targets
    batch["decoder_input_tokens"][row, start] = start_id
    batch["decoder_input_tokens"][row, start + 1:end] = batch["decoder_target_tokens"][row, start:end - 1]
    batch["decoder_loss_weights"][row, start + n_in:end] = 1
    batch["decoder_segment_ids"][row, span] = segment_id
    batch["decoder_positions"][row, span] = np.arange(n, dtype=np.int32)
    batch["decoder_causal_attention"][row, start:min(start + n_in + 1, end)] = 1
    return end


def rows_from_examples(examples: Sequence[tuple[np.ndarray, np.ndarray]], length: int,
                       start_id: int = 0) -> dict[str, np.ndarray]:
    """One unpacked row per example: the rows `likelihood` scores (DPO's reference, the
    likelihood scorer), and tests' batches."""
    batch = empty_batch(len(examples), length)
    for row, (inputs, targets) in enumerate(examples):
        inputs, targets = fit_to_length(inputs, targets, length)
        write_segment(batch, row, 0, 1, inputs, targets, start_id)
    return batch

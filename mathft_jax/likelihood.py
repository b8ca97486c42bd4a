"""Teacher-forced log-likelihoods of completions: log P(completion + EOS | prompt).

Each (prompt, completion) becomes the unpacked training row SSFT and DPO train on
(`packing.rows_from_examples`: start token, prompt as input, completion plus EOS as target,
truncated by `packing.fit_to_length`), and its likelihood is the sum of the target tokens'
log-probabilities as `objectives` computes it. Two users: DPO's frozen reference
(`preferences.reference_log_likelihoods`) and the likelihood scorer
(`scoring.score_records(method='likelihood')`), which re-ranks candidates by a model's own
mean token log-probability instead of an evaluator's label.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np

from mathft_jax.batching import bucket_length


def example_rows(prompts: Sequence[str], completions: Sequence[str], vocab, sequence_length: int,
                 batch_size: int, start_id: int):
    """Yields (first index, rows of `batch_size` examples, examples used): the rows of the
    (prompts[i], completions[i]) examples in order; the last batch is filled with copies of
    its first example."""
    from mathft_jax.data import packing  # noqa: PLC0415
    examples = [(np.asarray(vocab.encode(p), np.int32),
                 np.asarray(list(vocab.encode(c)) + [int(vocab.eos_id)], np.int32))
                for p, c in zip(prompts, completions, strict=True)]
    for begin in range(0, len(examples), batch_size):
        chunk = examples[begin:begin + batch_size]
        used = len(chunk)
        chunk = chunk + [chunk[0]] * (batch_size - used)
        yield begin, packing.rows_from_examples(chunk, sequence_length, start_id), used


@functools.lru_cache(maxsize=None)
def _compiled(cfg):
    import jax  # noqa: PLC0415 (jax only where a model runs)

    from mathft_jax import objectives  # noqa: PLC0415
    from mathft_jax.models.decoder import Decoder  # noqa: PLC0415
    model = Decoder(cfg)
    return jax.jit(lambda p, b: objectives._row_log_likelihoods(model, p, b, 0))  # noqa: SLF001


def completion_log_likelihoods(params, cfg, vocab, prompts: Sequence[str],
                               completions: Sequence[str], *,
                               sequence_length: Optional[int] = None, batch_size: int = 16,
                               partitioner=None,
                               start_id: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [n] log P(completion + EOS | prompt), int32 [n] target tokens summed over).

    sequence_length: the row length (default: the longest example's, rounded up to a power
    of two and capped at cfg.max_seq_len); longer examples are truncated as training
    truncates them. batch_size must divide over the partitioner's batch shards (default
    partitioner: none, one device). start_id: the decoder's start token (default:
    `data.vocab.decoder_start_id(vocab)`)."""
    from mathft_jax import partitioning  # noqa: PLC0415
    if len(prompts) != len(completions):
        raise ValueError(f"prompts ({len(prompts)}) and completions ({len(completions)}) "
                         "differ in length")
    if not len(prompts):
        return np.zeros((0,), np.float32), np.zeros((0,), np.int32)
    partitioner = partitioner or partitioning.NO_MESH
    if sequence_length is None:  # + start token and EOS
        longest = max(len(vocab.encode(p)) + len(vocab.encode(c)) + 2
                      for p, c in zip(prompts, completions))
        sequence_length = min(bucket_length(longest), cfg.max_seq_len)
    fn = _compiled(cfg)
    ll = np.zeros((len(prompts),), np.float32)
    tokens = np.zeros((len(prompts),), np.int32)
    if start_id is None:
        from mathft_jax.data.vocab import decoder_start_id  # noqa: PLC0415 (pulls in TF)
        start_id = decoder_start_id(vocab)
    rows = example_rows(prompts, completions, vocab, sequence_length, batch_size, start_id)
    for begin, batch, used in rows:
        with partitioner.context():
            out = fn(params, {k: partitioner.to_global(v) for k, v in batch.items()})
        ll[begin:begin + used] = partitioner.to_host(out)[:used]
        tokens[begin:begin + used] = batch["decoder_loss_weights"][:used].sum(-1)
    return ll, tokens

"""Teacher-forced log-likelihoods of completions: log P(completion + EOS | prompt).

Each (prompt, completion) becomes one unpacked row as `packing.rows_from_examples` builds it
(the rows DPO trains on: start token, prompt as input, completion plus EOS as target,
truncated by `packing.fit_to_length`), and its likelihood is the sum of the target tokens'
log-probabilities as `objectives` computes it. Two users: DPO's frozen reference
(`preferences.reference_log_likelihoods`, at the DPO stage's fixed row length) and the
likelihood scorer (`scoring.score_records(method='likelihood')`), which ranks candidates by a
model's own mean token log-probability instead of an evaluator's label.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np

from mathft_jax.sampling.batching import bucket_length


@functools.lru_cache(maxsize=None)
def compiled(cfg, loss_chunk: int):
    import jax  # noqa: PLC0415 (jax only where a model runs)

    from mathft_jax.training import objectives  # noqa: PLC0415
    from mathft_jax.models.decoder import Decoder  # noqa: PLC0415
    model = Decoder(cfg)
    return jax.jit(lambda p, b: objectives._row_log_likelihoods(model, p, b, loss_chunk))  # noqa: SLF001


def completion_log_likelihoods(params, cfg, vocab, prompts: Sequence[str],
                               completions: Sequence[str], *,
                               sequence_length: Optional[int] = None, batch_size: int = 16,
                               partitioner=None, start_id: Optional[int] = None,
                               loss_chunk: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [n] log P(completion + EOS | prompt), int32 [n] target tokens summed over).

    sequence_length: every row's length, in the given order (DPO's reference: the rows its
    training sees); longer examples are truncated as training truncates them. None: the
    examples are batched by length and each batch's rows are its longest example's length
    rounded up to a power of two (capped at cfg.max_seq_len), so one long sample does not
    pad every row. batch_size must divide over the partitioner's batch shards (default
    partitioner: none, one device); the last batch is filled with copies of its first
    example. start_id: the decoder's start token (default: `data.vocab.decoder_start_id`).
    loss_chunk > 0: the output projection that many positions at a time
    (`objectives`' `loss_chunk`): no [batch, length, vocab] logits, for large vocabularies.
    """
    from mathft_jax.models import partitioning  # noqa: PLC0415
    from mathft_jax.data import packing  # noqa: PLC0415
    if len(prompts) != len(completions):
        raise ValueError(f"prompts ({len(prompts)}) and completions ({len(completions)}) "
                         "differ in length")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    partitioner = partitioner or partitioning.NO_MESH
    partitioner.check_batch_divisible(batch_size)
    if start_id is None:
        from mathft_jax.data.vocab import decoder_start_id  # noqa: PLC0415 (seqio)
        start_id = decoder_start_id(vocab)
    examples = [(np.asarray(vocab.encode(p), np.int32),
                 np.asarray(list(vocab.encode(c)) + [int(vocab.eos_id)], np.int32))
                for p, c in zip(prompts, completions)]
    sizes = [len(inputs) + len(targets) for inputs, targets in examples]  # the start is shifted in
    order = (np.arange(len(examples)) if sequence_length is not None
             else np.argsort(sizes, kind="stable"))
    fn = compiled(cfg, loss_chunk)
    ll = np.zeros((len(examples),), np.float32)
    tokens = np.zeros((len(examples),), np.int32)
    for begin in range(0, len(order), batch_size):
        index = order[begin:begin + batch_size]
        length = sequence_length or min(bucket_length(max(sizes[i] for i in index)),
                                        cfg.max_seq_len)
        chunk = [examples[i] for i in index]
        batch = packing.rows_from_examples(chunk + [chunk[0]] * (batch_size - len(chunk)),
                                           length, start_id)
        with partitioner.context():
            out = fn(params, {k: partitioner.to_global(v) for k, v in batch.items()})
        ll[index] = partitioner.to_host(out)[:len(index)]
        tokens[index] = batch["decoder_loss_weights"][:len(index)].sum(-1)
    return ll, tokens

"""Rollouts: G completions per prompt from the project's sampler, as training rows.

A row is the SSFT row of (prompt, completion): `packing.write_segment` with the completion as
target (its EOS included where one was sampled: stopping is an action too), so the policy's
teacher-forced log-probs on the row are those of the sampled tokens in the context that
sampled them. Prompts are cut to `sequence_length - max_decode_len` tokens (start token and
tail kept) before sampling, so a row always holds its whole context.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from mathft_jax.sampling import decoding
from mathft_jax.sampling.batching import check_prompts
from mathft_jax.data.prompts import gin_format
from mathft_jax.data.packing import empty_batch, write_segment
from mathft_jax.models.partitioning import NO_MESH, Partitioner


@dataclasses.dataclass
class Rollout:
    batch: dict  # int32 [prompts * G, sequence_length] rows, prompt-major
    texts: list  # [prompts][G] decoded completions (no EOS)
    lengths: np.ndarray  # [prompts, G] completion tokens, EOS included


def prompt_tokens(problems: Sequence[dict], vocab, start_id: int, limit: int) -> list[list[int]]:
    """[start] + encode(prompt) per problem in the gin-bound prompt format, cut to `limit`
    tokens."""
    prompt_format = gin_format(vocab)
    prompts = [prompt_format.tokens(p["problem"], vocab, start_id) for p in problems]
    return check_prompts(prompts, limit, truncate=True)


def rollout_batch(params, cfg, vocab, problems: Sequence[dict], sampling: decoding.SamplingParams,
                  *, seed: int, prompt_ids: Sequence[int], sequence_length: int, start_id: int,
                  partitioner: Partitioner = NO_MESH) -> Rollout:
    """Sample `sampling.num_samples` completions per problem and lay them out as rows.
    Sample j of prompt i draws from stream prompt_ids[i] * G + j of `seed` (decoding.generate):
    the same rollout on any mesh and on a resumed run."""
    if sequence_length <= sampling.max_decode_len:
        raise ValueError(f"sequence_length={sequence_length} leaves no room for a prompt beside "
                         f"max_decode_len={sampling.max_decode_len}")
    prompts = prompt_tokens(problems, vocab, start_id, sequence_length - sampling.max_decode_len)
    samples = decoding.generate(params, cfg, prompts, sampling, seed=seed, prompt_ids=prompt_ids,
                                partitioner=partitioner)
    g = sampling.num_samples
    batch = empty_batch(len(problems) * g, sequence_length)
    texts = []
    for i, prompt in enumerate(prompts):
        for j in range(g):
            completion = samples.tokens[i, j, :samples.lengths[i, j]]
            write_segment(batch, i * g + j, 0, 1, np.asarray(prompt[1:], np.int32), completion,
                          start_id)
        texts.append([vocab.decode(seq) for seq in samples.sequences(i, sampling.eos_id)])
    return Rollout(batch, texts, samples.lengths)


def trim_rows(rows: dict, bucket: int) -> dict:
    """Rows [B, L] cut to the end of their longest row, rounded up to a multiple of `bucket`
    (at most L; 0: as they are). A row's trailing padding changes nothing before it (causal
    attention, masked loss), so this only saves the padding's compute; with prompts and
    completions far shorter than `sequence_length` that is most of a step. Each new length
    compiles the steps once more: `bucket` bounds how many lengths there are."""
    if not bucket:
        return rows
    length = rows["decoder_segment_ids"].shape[1]
    used = np.flatnonzero(rows["decoder_segment_ids"].any(axis=0))
    end = int(used[-1]) + 1 if used.size else 1
    keep = min(length, -(-end // bucket) * bucket)
    return {k: v[:, :keep] for k, v in rows.items()}


def problem_indices(num_problems: int, seed: int, first: int, count: int) -> np.ndarray:
    """Problems of global prompt positions first .. first + count - 1: epoch e is a
    permutation seeded by (seed, e), so the order is pure arithmetic on the position (a
    resumed run continues from the position its checkpoint holds)."""
    positions = np.arange(first, first + count)
    epochs, offsets = np.divmod(positions, num_problems)
    perms = {int(e): np.random.default_rng([seed, int(e)]).permutation(num_problems)
             for e in np.unique(epochs)}
    return np.array([perms[int(e)][o] for e, o in zip(epochs, offsets)], np.int64)


def sampling_params(num_generations: int, max_decode_len: int, temperature: float,
                    top_k: int, top_p: float, eos_id: int) -> decoding.SamplingParams:
    """G completions per prompt sharing the prompt's prefill."""
    return decoding.SamplingParams(num_generations, max_decode_len, temperature, top_k, top_p,
                                   int(eos_id)).validate()

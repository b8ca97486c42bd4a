"""Host-side batching, shared by decoding, the engine and scoring: checking prompts, padding
them into rows of a bucketed length, and how many rows split evenly over the batch shards.

NumPy only: what goes to the devices is the Partitioner's business (`partitioning`).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

PAD_ID = 0
MIN_BUCKET = 16


def bucket_length(n: int, minimum: int = MIN_BUCKET) -> int:
    """Static shapes: round up to a power of two, so few distinct lengths compile."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def check_prompts(prompts: Sequence[Sequence[int]], max_len: int, truncate: bool,
                  what: str = "prompts") -> list[list[int]]:
    """Token lists, checked: none empty; longer than max_len raises, or with `truncate`
    keeps the first token (the decoder's start token) and the last max_len - 1."""
    if len(prompts) == 0:
        raise ValueError(f"{what} is empty: nothing to decode")
    out = []
    for i, p in enumerate(prompts):
        p = [int(t) for t in p]
        if not p:
            raise ValueError(f"{what}[{i}] is empty: a prompt needs at least one token")
        if len(p) > max_len:
            if not truncate:
                raise ValueError(f"{what}[{i}] has {len(p)} tokens, more than the model's "
                                 f"max_seq_len={max_len} (pass truncate_prompts=True to keep "
                                 "its last tokens)")
            p = p[:1] + p[len(p) - max_len + 1:]
        out.append(p)
    return out


def pad_prompts(prompts: Sequence[Sequence[int]], rows: int,
                length: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32 [rows, length], lengths int32 [rows]): the prompts right-padded with
    PAD_ID; rows beyond the prompts are one-token dummies (length 1). length 0: the
    longest prompt's `bucket_length`."""
    if len(prompts) > rows:
        raise ValueError(f"{len(prompts)} prompts do not fit in {rows} rows")
    length = length or bucket_length(max(map(len, prompts), default=1))
    tokens = np.full((rows, length), PAD_ID, np.int32)
    lengths = np.ones((rows,), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = p
        lengths[i] = len(p)
    return tokens, lengths


def rows_for(num_items: int, shards: int, per_row: int = 1) -> int:
    """The fewest rows, at least num_items, whose rows * per_row sequences split evenly over
    `shards` batch shards. With per_row = N samples a prompt, the sequences are what is
    sharded, so one prompt with N=64 on 8 shards runs 1 row (8 sequences a shard), not 8."""
    step = shards // math.gcd(shards, per_row)
    return -(-num_items // step) * step

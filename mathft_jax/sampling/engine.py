"""Continuous batching: a fixed set of decode slots, refilled as their samples finish.

    samples = engine.generate(params, cfg, prompts, SamplingParams(num_samples=64, ...),
                              seed=0, prompt_ids=ids, partitioner=partitioner, slots=512,
                              chunk=16)

`decoding.generate` decodes a static batch until its longest sample ends, so every finished
row keeps computing padding; MATH solutions vary several-fold in length, and the longest of
64 samples is far above their mean. Here a finished sample's slot takes the next (prompt,
sample) from a host-side queue:

- The decode loop is a jitted `while_loop` over at most `chunk` steps (`decode_chunk`); it
  stops early when no slot is live. Between chunks the host collects finished samples and
  refills their slots, so a slot idles at most `chunk - 1` steps after its sample ends.
- Shared prefill is kept: a prompt is prefilled once into a small pool (`_prefill_into_pool`)
  and its cache rows are copied into every slot that samples it (`_insert`), in whatever
  round that slot frees up. Prompts are prefilled in groups of `prefill_group`, static
  batching's batches (see `stream`). The queue is prompt-major, so at most one group stays
  open between rounds.
- Attention reads only the filled part of the cache (`Attention._cache_attention`: blocks
  up to the furthest live slot), so a step's cost follows the live lengths, not the capacity,
  and its result does not depend on the capacity, bit for bit.
- Determinism is `decoding.generate`'s: sample j of prompt i draws its t-th token from
  fold_in(fold_in(key(seed), i * N + j), t), whatever its slot, round or the device count,
  and every row of the model is computed independently of the others; so the samples are
  static batching's, token for token (tests/test_engine.py).
- The drain: once nothing is left to queue, the slots halve while the live ones fit in
  half (`_shrink`), so the last long samples run in a small batch.
- On a mesh the slots are sharded like `decoding.generate`'s batch rows (data x fsdp), so
  `slots` must divide by the partitioner's `batch_shards`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mathft_jax.sampling import decoding, stops
from mathft_jax.sampling.batching import PAD_ID, bucket_length, check_prompts, pad_prompts, rows_for
from mathft_jax.sampling.decoding import DecodeStatic, SamplingParams, Samples
from mathft_jax.models.config import DecoderConfig
from mathft_jax.models.decoder import init_cache
from mathft_jax.models.partitioning import NO_MESH, Partitioner

DEFAULT_CHUNK = 16


# ----------------------------------------------------------------------------- device side


def _map_cache(fn, *caches):
    """fn over matching (k or v) leaves of unrolled caches: lists over layers of (k, v)."""
    return [tuple(fn(*xs) for xs in zip(*layer)) for layer in zip(*caches)]


def decode_chunk(params, cache, token, pos, step, budget, sid, live, logprob, seed, temperature,
                 top_p, *, cfg: DecoderConfig, sp: DecodeStatic, chunk: int):
    """Up to `chunk` decode steps of every slot; [S] arrays per slot: token (the next input),
    pos (its cache slot), step (tokens generated so far), budget (the most it may generate),
    sid (global sample id), live, logprob (the sample's log-likelihood so far, float32).
    -> (cache, out [S, chunk + 2], logprob, token_lp): the chunk's tokens (PAD_ID once a slot
    is dead), then each slot's step and live flag after the chunk; the log-likelihoods
    carried on, in the same float32 order of additions as `decoding.generate_tokens`; with
    sp.token_logprobs each token's log-probability [S, chunk] (else None).

    One step is `decoding.generate_tokens`'s body, per slot: the token's key is fold_in of
    the sample's key with the sample's own step, so no slot or round enters a draw.
    """
    params, cfg = decoding.unroll_layers(params, cfg)
    keys = decoding.sample_keys(seed, sid)
    out = jnp.full((token.shape[0], chunk), PAD_ID, jnp.int32)
    token_lp = jnp.zeros((token.shape[0], chunk), jnp.float32) if sp.token_logprobs else None

    def cond(state):
        i, _, _, _, live, _, _, _, _ = state
        return (i < chunk) & jnp.any(live)

    def body(state):
        i, token, pos, step, live, cache, out, logprob, token_lp = state
        # Dead slots run too (fixed shapes) and write their own rows at a frozen pos: their
        # rows are refilled before they are read again.
        logits, cache = decoding.extend(params, cfg, token[:, None], cache, pos)
        step_keys = jax.vmap(jax.random.fold_in)(keys, step)
        new = decoding.sample_logits(logits[:, 0], step_keys, temperature, top_p, top_k=sp.top_k,
                                     greedy=sp.greedy, nucleus=sp.nucleus)
        new = jnp.where(live, new, PAD_ID)
        out = jax.lax.dynamic_update_slice(out, new[:, None], (0, i))
        new_lp = jnp.where(live, decoding.token_log_prob(logits[:, 0], new), 0.0)
        logprob = logprob + new_lp
        if token_lp is not None:
            token_lp = jax.lax.dynamic_update_slice(token_lp, new_lp[:, None], (0, i))
        step, pos = step + live, pos + live
        live = live & ~decoding.ends_sample(new, sp) & (step < budget)
        return i + 1, new, pos, step, live, cache, out, logprob, token_lp

    state = (jnp.int32(0), token, pos, step, live, cache, out, logprob, token_lp)
    _, _, _, step, live, cache, out, logprob, token_lp = jax.lax.while_loop(cond, body, state)
    cache = decoding.constrain_cache(cache, cfg)
    packed = jnp.concatenate([out, step[:, None], live[:, None].astype(jnp.int32)], axis=1)
    return cache, packed, logprob, token_lp


def _prefill_into_pool(params, pool, prompts, rows, *, cfg: DecoderConfig):
    """Prefill prompts [g, Pb] (right-padded) and write their caches into pool rows `rows`
    [g], positions [0, Pb)."""
    params, cfg = decoding.unroll_layers(params, cfg)
    fresh = decoding.prefill(params, cfg, prompts, prompts.shape[1])
    width = prompts.shape[1]
    return _map_cache(lambda p, f: p.at[rows, :width].set(f.astype(p.dtype)), pool, fresh)


def _insert(cache, pool, src, fill, *, cfg: DecoderConfig):
    """Slots where `fill` [S] take pool row src[S] as their first pool-width cache slots (the
    prompt; what lies beyond is masked until the sample overwrites it)."""
    def one(x, p):
        width = p.shape[1]
        head = jnp.where(fill[:, None, None, None], p[src].astype(x.dtype), x[:, :width])
        return jax.lax.dynamic_update_slice(x, head, (0,) * x.ndim)
    return decoding.constrain_cache(_map_cache(one, cache, pool), cfg)


def _take_slots(cache, keep, *, cfg: DecoderConfig):
    """The cache rows of slots `keep` [S'], in that order."""
    return decoding.constrain_cache(_map_cache(lambda x: x[keep], cache), cfg)


def _empty_cache(*, cfg: DecoderConfig, slots: int, capacity: int):
    return decoding.constrain_cache(init_cache(cfg, slots, capacity), cfg)


@functools.lru_cache(maxsize=None)
def compiled(name: str, cfg: DecoderConfig, **static):
    fns = {"chunk": (decode_chunk, (1,)), "prefill": (_prefill_into_pool, (1,)),
           "insert": (_insert, (0,)), "empty": (_empty_cache, ()), "take": (_take_slots, ())}
    fn, donate = fns[name]
    return jax.jit(functools.partial(fn, cfg=cfg, **static), donate_argnums=donate)


# ----------------------------------------------------------------------------- host side


@dataclasses.dataclass
class _Slots:
    """Host copy of the per-slot state `decode_chunk` takes."""
    token: np.ndarray
    pos: np.ndarray
    step: np.ndarray
    budget: np.ndarray
    sid: np.ndarray
    live: np.ndarray
    owner: np.ndarray  # local sample index (prompt * N + j) or -1
    logprob: np.ndarray  # float32, carried through decode_chunk

    def take(self, keep: np.ndarray) -> "_Slots":
        return _Slots(*(getattr(self, f.name)[keep] for f in dataclasses.fields(self)))

    @classmethod
    def empty(cls, n: int) -> "_Slots":
        z = lambda: np.zeros((n,), np.int32)  # noqa: E731
        return cls(z(), z(), z(), z(), z(), np.zeros((n,), bool), np.full((n,), -1, np.int64),
                   np.zeros((n,), np.float32))


@dataclasses.dataclass
class _Sample:
    """A slot's sample so far: its tokens and, with stop strings, their log-probabilities
    (a stopped sample's log-likelihood is summed over the tokens it keeps)."""
    tokens: list = dataclasses.field(default_factory=list)
    token_lps: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Stats:
    """What a run did: tokens (generated, EOS included) over slot-steps (slots x steps run)
    is the share of live slot-steps. The `queued_` pair counts only chunks that began with
    samples still queued: the steady state of a long run, without the final drain, where
    slots empty one by one as the last samples finish."""
    tokens: int = 0
    slot_steps: int = 0
    queued_tokens: int = 0
    queued_slot_steps: int = 0
    chunks: int = 0
    prefills: int = 0

    @property
    def live_fraction(self) -> float:
        return self.tokens / max(self.slot_steps, 1)

    @property
    def queued_live_fraction(self) -> float:
        return self.queued_tokens / max(self.queued_slot_steps, 1)


def check_slots(slots: int, partitioner: Partitioner) -> None:
    if not isinstance(slots, (int, np.integer)) or slots < 1:
        raise ValueError(f"slots must be a positive int, got {slots!r}")
    partitioner.check_batch_divisible(slots, "slots")


def stream(params, cfg: DecoderConfig, prompts: Sequence[Sequence[int]], sampling: SamplingParams,
           *, seed: int = 0, prompt_ids: Optional[Sequence[int]] = None,
           partitioner: Partitioner = NO_MESH, truncate_prompts: bool = False,
           slots: int = 64, chunk: int = DEFAULT_CHUNK, prefill_group: int = 0,
           stats: Optional[Stats] = None, decode=None
           ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Yields (prompt index in `prompts`, tokens [N, max_decode_len], lengths [N], logprobs
    [N] float32, as `decoding.Samples` holds them) as each
    prompt's N samples finish (roughly in order: the queue is prompt-major). Arguments as
    `decoding.generate`'s; slots: sequences decoded together; chunk: decode steps between
    refills. prefill_group: prompts are prefilled in groups of this many consecutive ones
    (default ceil(slots / N)), padded as `decoding.generate` pads a batch: with static
    batching's batch size (and slots = its rows), every computation has static batching's
    shapes, which is what makes the samples equal bit for bit on XLA:CPU (rows of a batch
    are computed alike only within one shape). `stats`, if given, is filled in (its tokens
    count every token decoded, those past a stop string too). decode: the vocabulary's
    (token ids -> text), for `sampling.stop_strings`: after each chunk a sample whose text
    holds one ends at the token that completes it and its slot is refilled (`stops.py`)."""
    sampling.validate()
    matcher = sampling.stop_matcher(decode)
    check_slots(slots, partitioner)
    if not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    limit = cfg.max_seq_len - sampling.max_decode_len if truncate_prompts else cfg.max_seq_len
    prompts = check_prompts(prompts, max(1, limit), truncate_prompts)
    n, max_len, sp = sampling.num_samples, sampling.max_decode_len, sampling.static()
    ids = np.arange(len(prompts)) if prompt_ids is None else np.asarray(prompt_ids, np.int64)
    if ids.shape != (len(prompts),):
        raise ValueError(f"prompt_ids must have one id per prompt ({len(prompts)}), "
                         f"got {ids.shape}")
    if (ids.max() + 1) * n > 2 ** 31:
        raise ValueError("prompt_ids * num_samples must stay below 2**31")
    stats = stats if stats is not None else Stats()
    lengths = np.array([len(p) for p in prompts], np.int64)
    budgets = np.minimum(max_len, cfg.max_seq_len - lengths)  # room left in the context
    pool_width = bucket_length(lengths.max())
    capacity = decoding.cache_length(pool_width, max_len)
    group = prefill_group or -(-slots // n)
    group_rows = rows_for(group, partitioner.batch_shards, per_row=n)  # as generate(pad_to=group)
    split = group_rows % partitioner.batch_shards == 0
    # A refill round touches the open group and those its free slots reach.
    pool_groups = min(-(-len(prompts) // group), -(-slots // (group * n)) + 2)
    ucfg = cfg.replace(scan_layers=False)  # the engine's caches are per layer (unroll_layers)
    temperature, top_p = jnp.float32(sampling.temperature), jnp.float32(sampling.top_p)

    host = _Slots.empty(slots)
    bufs = [_Sample() for _ in range(slots)]
    remaining = np.full((len(prompts),), n, np.int64)
    results: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    pooled: dict[int, int] = {}  # prompt group -> its block of group_rows pool rows
    queue = ((i, j) for i in range(len(prompts)) for j in range(n))

    def finish(i: int, j: int, toks: list[int], logprob: float = 0.0):
        tokens, counts, logprobs = results.setdefault(
            i, (np.full((n, max_len), PAD_ID, np.int32), np.zeros((n,), np.int32),
                np.zeros((n,), np.float32)))
        tokens[j, :len(toks)] = toks
        counts[j], logprobs[j] = len(toks), logprob
        remaining[i] -= 1

    def pop_completed():
        for i in sorted(i for i in results if remaining[i] == 0):
            yield (i, *results.pop(i))

    with partitioner.context():
        cache = compiled("empty", ucfg, slots=slots, capacity=capacity)()
        pool = init_cache(ucfg, pool_groups * group_rows, pool_width)
        pending = next(queue, None)
        while True:
            # Refill: free slots take the next samples; new prompts are prefilled once.
            fill = np.zeros(host.live.shape, bool)
            src = np.zeros(host.live.shape, np.int32)
            fresh: list[int] = []  # groups
            for s in np.flatnonzero(~host.live):
                while pending is not None and budgets[pending[0]] <= 0:
                    finish(*pending, [])  # a prompt filling the context: no tokens
                    pending = next(queue, None)
                if pending is None:
                    break
                i, j = pending
                if i // group not in pooled:
                    free = set(range(pool_groups)) - set(pooled.values())
                    if not free:  # groups of mostly full-context prompts: wait a round
                        break
                    pooled[i // group] = min(free)
                    fresh.append(i // group)
                fill[s], src[s] = True, pooled[i // group] * group_rows + i % group
                host.token[s], host.pos[s] = prompts[i][-1], lengths[i] - 1
                host.step[s], host.budget[s], host.logprob[s] = 0, budgets[i], 0.0
                host.sid[s], host.live[s], host.owner[s] = ids[i] * n + j, True, i * n + j
                bufs[s] = _Sample()
                pending = next(queue, None)
            for g in fresh:
                members = prompts[g * group:(g + 1) * group]
                toks, _ = pad_prompts(members, group_rows)
                rows = pooled[g] * group_rows + np.arange(group_rows, dtype=np.int32)
                toks = partitioner.to_global(toks, split)  # as decoding.generate
                pool = compiled("prefill", cfg)(params, pool, toks, jnp.asarray(rows))
                stats.prefills += len(members)
            if fill.any():
                cache = compiled("insert", ucfg)(cache, pool, partitioner.to_global(src),
                                                  partitioner.to_global(fill))
            # Groups all of whose samples have slots no longer need their pool rows.
            open_group = pending[0] // group if pending is not None else -1
            pooled = {g: r for g, r in pooled.items() if g == open_group}
            yield from pop_completed()
            if not host.live.any():
                break
            if pending is None:
                cache, host, bufs = _shrink(cache, host, bufs, ucfg, partitioner)
            width = len(host.live)

            run = compiled("chunk", cfg, sp=sp, chunk=chunk)
            args = [partitioner.to_global(x) for x in
                    (host.token, host.pos, host.step, host.budget, host.sid, host.live,
                     host.logprob)]
            cache, packed, logprob, token_lp = run(params, cache, *args, jnp.int32(seed),
                                                   temperature, top_p)
            packed = partitioner.to_host(packed)
            token_lp = None if token_lp is None else partitioner.to_host(token_lp)
            host.logprob = partitioner.to_host(logprob).astype(np.float32)
            out, step, live = packed[:, :chunk], packed[:, chunk], packed[:, chunk + 1].astype(bool)
            made = step - host.step
            stats.chunks += 1
            stats.tokens += int(made.sum())
            stats.slot_steps += width * int(made.max(initial=0))
            if pending is not None:
                stats.queued_tokens += int(made.sum())
                stats.queued_slot_steps += width * int(made.max(initial=0))
            for s in np.flatnonzero(made):
                bufs[s].tokens.extend(out[s, :made[s]].tolist())
                host.token[s] = out[s, made[s] - 1]
                if matcher is not None:
                    live[s] &= not _stopped(bufs[s], matcher, made[s], token_lp[s])
            host.pos += made.astype(np.int32)
            host.step = step.astype(np.int32)
            for s in np.flatnonzero(host.live & ~live):
                i, j = divmod(int(host.owner[s]), n)
                logprob = (float(host.logprob[s]) if matcher is None
                           else stops.sum_logprobs(bufs[s].token_lps))
                finish(i, j, bufs[s].tokens, logprob)
                host.owner[s] = -1
            host.live = live
        yield from pop_completed()


def _stopped(sample: _Sample, matcher: stops.StopStrings, made: int,
             token_lp: np.ndarray) -> bool:
    """After a chunk that added `made` tokens (log-probabilities token_lp[:made]): whether
    the sample's text now holds a stop string; if so it is cut after the token completing it."""
    sample.token_lps.extend(token_lp[:made].tolist())
    end = matcher.first_stop(sample.tokens, checked=len(sample.tokens) - made)
    if end is None:
        return False
    del sample.tokens[end:], sample.token_lps[end:]
    return True


def _shrink(cache, host: _Slots, bufs: list, cfg: DecoderConfig, partitioner: Partitioner):
    """The drain (nothing left to queue): halve the slots while the live ones fit in half,
    so the last samples do not drag a mostly idle batch along. A decode step computes each
    row alike in any batch of 2 or more rows on XLA:CPU (tests/test_engine.py; the bench's
    2 x 1,024 samples), so moving a sample changes none of its tokens; a batch of 1 takes a
    matrix-vector path that sums differently, so the slots stop at 2."""
    width, shards = len(host.live), partitioner.batch_shards
    while (width % 2 == 0 and width // 2 >= 2 and (width // 2) % shards == 0
           and host.live.sum() <= width // 2):
        width //= 2
    if width == len(host.live):
        return cache, host, bufs
    keep = np.concatenate([np.flatnonzero(host.live), np.flatnonzero(~host.live)])[:width]
    cache = compiled("take", cfg)(cache, partitioner.to_global(keep.astype(np.int32)))
    return cache, host.take(keep), [bufs[k] for k in keep]


def generate(params, cfg: DecoderConfig, prompts: Sequence[Sequence[int]], sampling: SamplingParams,
             **kwargs) -> Samples:
    """`decoding.generate`'s Samples, decoded by the engine (keywords as `stream`'s)."""
    n, max_len = sampling.num_samples, sampling.max_decode_len
    tokens = np.full((len(prompts), n, max_len), PAD_ID, np.int32)
    lengths = np.zeros((len(prompts), n), np.int32)
    logprobs = np.zeros((len(prompts), n), np.float32)
    for i, toks, counts, logprob in stream(params, cfg, prompts, sampling, **kwargs):
        tokens[i], lengths[i], logprobs[i] = toks, counts, logprob
    return Samples(tokens=tokens, lengths=lengths, logprobs=logprobs)

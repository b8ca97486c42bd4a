"""Sampling with a KV cache: one prefill pass over the prompts, then a `jax.lax.while_loop`.

    samples = generate(params, cfg, prompts, SamplingParams(num_samples=64, temperature=0.7,
                       eos_id=vocab.eos_id), seed=0, prompt_ids=global_indices, partitioner=partitioner)
    samples.tokens [num_prompts, N, max_decode_len], samples.lengths [num_prompts, N],
    samples.logprobs [num_prompts, N] (each sample's log-likelihood under the model)

Design (see docs/ARCHITECTURE.md, "Decoding"; figures in docs/PERFORMANCE.md):
- Prompts of different lengths share a batch right-padded; each sequence then continues at
  its own cache slot (its length), and a query only sees slots <= its own, so the padding's
  garbage keys are never attended to and are overwritten as the sequence grows.
- The prefill's logits are never used (XLA drops them): the loop's first step re-feeds each
  prompt's last token at its own slot, so every new token comes from one code path and the
  [batch, prompt, vocab] prefill logits are never materialised.
- N samples of a prompt share its prefill: prefill [B, P], repeat the cache to [B*N].
- Sample j of prompt i draws from fold_in(key(seed), i * N + j), folded with the step, so a
  sample depends on neither the batch it sits in nor the number of devices. A draw is one
  uniform number through the inverse CDF (`categorical`), not V Gumbel numbers.
- Data-parallel with `jax.jit` over arrays sharded by the logical rules (batch over
  data x fsdp, heads and cache over tensor), so tensor-parallel weights work unchanged.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mathft_jax.sampling import stops
from mathft_jax.sampling.batching import PAD_ID, check_prompts, pad_prompts, rows_for
from mathft_jax.models import lora
from mathft_jax.models.config import DecoderConfig
from mathft_jax.models.decoder import Decoder, cache_logical_axes, init_cache
from mathft_jax.models.layers import CACHE_BLOCK
from mathft_jax.models.partitioning import NO_MESH, Partitioner


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """What to sample. `DecodeStatic` is the part that shapes the compiled program (each
    distinct value of it compiles once); temperature and top_p values are traced."""
    num_samples: int = 1
    max_decode_len: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    eos_id: int = 1
    share_prefill: bool = True  # False only to measure what sharing saves
    # Token ids that also end a sample, matched on device and kept in its tokens as the EOS
    # is (an imported model's generation_config.json may list several EOS ids).
    stop_ids: tuple = ()
    # Strings that end a sample, matched on the host in its decoded text (`stops.py`, which
    # says what is kept); the engines then need the vocabulary's `decode`.
    stop_strings: tuple = ()

    def __post_init__(self):  # gin and JSON give lists; the static part must hash
        for name in ("stop_ids", "stop_strings"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def end_ids(self) -> tuple:
        """Every token id that ends a sample: the EOS, then the stop ids."""
        return (self.eos_id,) + tuple(i for i in self.stop_ids if i != self.eos_id)

    def static(self) -> "DecodeStatic":
        return DecodeStatic(self.num_samples, self.max_decode_len, self.top_k, self.eos_id,
                            self.share_prefill, self.temperature == 0.0, self.top_p < 1.0,
                            self.end_ids[1:], bool(self.stop_strings))

    def validate(self) -> "SamplingParams":
        if not isinstance(self.num_samples, (int, np.integer)) or self.num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {self.num_samples!r}")
        if not isinstance(self.max_decode_len, (int, np.integer)) or self.max_decode_len < 1:
            raise ValueError(f"max_decode_len must be a positive int, got {self.max_decode_len!r}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
        if not isinstance(self.stop_ids, tuple) or not all(
                isinstance(i, (int, np.integer)) and not isinstance(i, bool) and i >= 0
                for i in self.stop_ids):
            raise ValueError(f"stop_ids must be a tuple of token ids >= 0, got {self.stop_ids!r}")
        stops.check_strings(self.stop_strings, "stop_strings")
        return self

    def stop_matcher(self, decode) -> Optional[stops.StopStrings]:
        """The stop strings searched in `decode`'s text (None when there are none)."""
        if not self.stop_strings:
            return None
        if decode is None:
            raise ValueError("stop_strings need the vocabulary's decode (decode=vocab.decode)")
        return stops.StopStrings(self.stop_strings, decode)


class DecodeStatic(NamedTuple):
    """The part of SamplingParams that shapes the compiled program (temperature and top_p
    are traced; only whether they are on is static)."""
    num_samples: int
    max_decode_len: int
    top_k: int
    eos_id: int
    share_prefill: bool
    greedy: bool
    nucleus: bool
    stop_ids: tuple  # beyond eos_id
    token_logprobs: bool  # also each token's log-probability (stop strings cut samples)


def ends_sample(token: jax.Array, sp: DecodeStatic) -> jax.Array:
    """Whether each sampled token ends its sample (the EOS or a stop id)."""
    hit = token == sp.eos_id
    for stop_id in sp.stop_ids:
        hit = hit | (token == stop_id)
    return hit


@dataclasses.dataclass
class Samples:
    """tokens [num_prompts, N, max_decode_len] (PAD_ID after the end) and lengths
    [num_prompts, N]: tokens generated, the EOS included where one was emitted. logprobs
    [num_prompts, N] float32: the sum of log softmax(logits) of those tokens, the model's own
    distribution (temperature 1, no top-k/top-p), whatever the sampling settings."""
    tokens: np.ndarray
    lengths: np.ndarray
    logprobs: Optional[np.ndarray] = None

    def sequences(self, i: int, end_ids: Union[None, int, Sequence[int]] = None
                  ) -> list[list[int]]:
        """Prompt i's N samples as token lists, without the last token when it is one of
        `end_ids` (an EOS id, or `SamplingParams.end_ids`)."""
        ends = () if end_ids is None else (end_ids,) if np.isscalar(end_ids) else tuple(end_ids)
        out = []
        for toks, n in zip(self.tokens[i], self.lengths[i]):
            seq = toks[:n].tolist()
            if seq and seq[-1] in ends:
                seq = seq[:-1]
            out.append(seq)
        return out


# ----------------------------------------------------------------------------- pure functions


def _last_positive(mass: jax.Array) -> jax.Array:
    """Index of the last entry > 0 along the last axis (0 when none is)."""
    n = mass.shape[-1]
    return n - 1 - jnp.argmax((mass > 0)[..., ::-1], axis=-1).astype(jnp.int32)


def categorical(keys: jax.Array, logits: jax.Array) -> jax.Array:
    """One draw per row from softmax(logits [b, V]) with that row's key (keys [b]): int32 [b].

    Inverse CDF with one uniform per row, rather than jax.random.categorical's Gumbel
    noise, which draws V random numbers per row (4.8 ms for 64 x 4096 on a 2-core CPU,
    against 0.27 ms here: bench/sampler.py; 64 x 256k is 16M threefry draws a step). The CDF is
    searched in two levels of ~sqrt(V) blocks, so no V-long scan is needed. Tokens of zero
    probability (-inf logits) are never drawn, even where rounding puts u at the total.
    """
    b, vocab = logits.shape
    block = 1 << max(0, (math.isqrt(vocab) - 1).bit_length())
    blocks = -(-vocab // block)
    probs = jnp.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = jnp.pad(probs, ((0, 0), (0, blocks * block - vocab))).reshape(b, blocks, block)
    mass = probs.sum(axis=-1)  # [b, blocks]
    cum = jnp.cumsum(mass, axis=-1)
    u = jax.vmap(jax.random.uniform)(keys) * cum[:, -1]
    j = jnp.minimum(jnp.sum(cum <= u[:, None], axis=-1), _last_positive(mass))
    before = jnp.take_along_axis(jnp.pad(cum, ((0, 0), (1, 0))), j[:, None], axis=1)
    inner = jnp.take_along_axis(probs, j[:, None, None], axis=1)[:, 0]  # [b, block]
    inner_cum = before + jnp.cumsum(inner, axis=-1)
    i = jnp.minimum(jnp.sum(inner_cum <= u[:, None], axis=-1), _last_positive(inner))
    return (j * block + i).astype(jnp.int32)


def sample_logits(logits: jax.Array, keys: jax.Array, temperature, top_p=1.0, *,
                  top_k: int = 0, greedy: bool = False, nucleus: bool = False) -> jax.Array:
    """One token per row of logits [b, V] with that row's key (keys [b]); int32 [b].

    greedy (static) takes the argmax. top_k (static) keeps the k most likely tokens; with
    nucleus (static), top_p then keeps the smallest prefix of them (by probability) whose
    mass reaches p: a token is kept when the mass before it is < p, so the most likely
    token always is. temperature and top_p may be traced: sweeping them never recompiles.
    """
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    vocab = logits.shape[-1]
    k = min(top_k, vocab) if top_k else (vocab if nucleus else 0)
    token_ids = None
    if k:
        logits, token_ids = jax.lax.top_k(logits, k)  # sorted, most likely first
        if nucleus:
            probs = jax.nn.softmax(logits, axis=-1)
            mass_before = jnp.cumsum(probs, axis=-1) - probs
            logits = jnp.where(mass_before < top_p, logits, -jnp.inf)
    choice = categorical(keys, logits)
    if token_ids is not None:
        choice = jnp.take_along_axis(token_ids, choice[:, None], axis=-1)[:, 0]
    return choice.astype(jnp.int32)


def constrain_cache(cache, cfg: DecoderConfig):
    """Shard the cache by its logical axes (no-op outside a `Partitioner.context()`)."""
    is_axes = lambda a: isinstance(a, tuple) and all(isinstance(s, str) for s in a)  # noqa: E731
    axes = jax.tree_util.tree_leaves(cache_logical_axes(cfg), is_leaf=is_axes)
    leaves, treedef = jax.tree_util.tree_flatten(cache)
    return treedef.unflatten([nn.with_logical_constraint(x, a) for x, a in zip(leaves, axes)])


def repeat_cache(cache, cfg: DecoderConfig, n: int):
    """Each sequence's cache repeated n times along the batch axis ([B] -> [B*n])."""
    axis = (1 if cfg.scan_layers else 0)  # cache_logical_axes: ("layers",)? + ("batch", ...)
    return constrain_cache(jax.tree_util.tree_map(lambda x: jnp.repeat(x, n, axis=axis), cache), cfg)


def unroll_layers(params, cfg: DecoderConfig):
    """Scanned-layer params as per-layer `layers_i`, with the unscanned config.

    Decoding a scanned model threads the whole KV cache through nn.scan at every step, which
    copies it: palm_1b decodes 2.3x slower on an H200 (docs/PERFORMANCE.md). Inside jit
    the slices are taken once per call, outside the decode loop.
    """
    if not cfg.scan_layers:
        return params, cfg

    def unroll(tree):  # the base, and unmerged adapters (the same paths)
        out = {k: v for k, v in tree.items() if k != "layers"}
        for i in range(cfg.num_layers):
            out[f"layers_{i}"] = jax.tree_util.tree_map(lambda x: x[i], tree["layers"]["layer"])
        return out
    return lora.map_trees(unroll, params), cfg.replace(scan_layers=False)


def extend(params, cfg: DecoderConfig, tokens: jax.Array, cache, cache_index: jax.Array):
    """Run tokens [b, t] at slots [cache_index[b], cache_index[b] + t): (logits [b, t, V], cache)."""
    return lora.apply(Decoder(cfg), params, tokens, cache=cache, cache_index=cache_index)


def prefill(params, cfg: DecoderConfig, prompts: jax.Array, cache_len: int):
    """A fresh cache of cache_len slots holding right-padded prompts [b, P] at slots [0, P).

    The logits are dropped (and so never computed under jit): the caller re-feeds each
    prompt's last token at its own slot to get the next-token logits.
    """
    b = prompts.shape[0]
    cache = constrain_cache(init_cache(cfg, b, cache_len), cfg)
    _, cache = extend(params, cfg, prompts, cache, jnp.zeros((b,), jnp.int32))
    return cache


def cache_length(prompt_len: int, max_decode_len: int) -> int:
    """Cache slots for prompts of prompt_len then max_decode_len tokens, in whole attention
    blocks (`layers.CACHE_BLOCK`), which attention reads in place."""
    return -(-(prompt_len + max_decode_len) // CACHE_BLOCK) * CACHE_BLOCK


def last_tokens(prompts: jax.Array, lengths: jax.Array) -> jax.Array:
    return jnp.take_along_axis(prompts, (lengths - 1)[:, None], axis=1)[:, 0]


def token_log_prob(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """log softmax(logits)[token] per row, at temperature 1: a sample's log-likelihood under
    the model, summed step by step by both engines (a baseline re-ranker, diagnostics.py)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


def sample_keys(seed: jax.Array, sample_ids: jax.Array) -> jax.Array:
    """Per-sample keys: fold_in(key(seed), global sample id)."""
    return jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), sample_ids)


def generate_tokens(params, prompts, lengths, sample_ids, seed, temperature, top_p, *,
                    cfg: DecoderConfig, sp: DecodeStatic):
    """The jit-able sampler: prompts [B, P] right-padded, lengths [B] >= 1, sample_ids [B*N]
    (global ids, prompt-major), seed int32, temperature and top_p float32 scalars
    -> (tokens [B*N, L], num_tokens [B*N], logprob [B*N]: sum of the model's log-probability
    of each sampled token, at temperature 1; with sp.token_logprobs, then each token's
    [B*N, L])."""
    params, cfg = unroll_layers(params, cfg)
    n, max_len = sp.num_samples, sp.max_decode_len
    cache_len = cache_length(prompts.shape[1], max_len)
    if sp.share_prefill:
        cache = repeat_cache(prefill(params, cfg, prompts, cache_len), cfg, n)
    else:
        cache = prefill(params, cfg, jnp.repeat(prompts, n, axis=0), cache_len)
    first_input = jnp.repeat(last_tokens(prompts, lengths), n)
    lengths = jnp.repeat(lengths, n)
    keys = sample_keys(seed, sample_ids)
    # Room left in the model's context; a prompt that fills it gets no tokens.
    budget = jnp.minimum(max_len, cfg.max_seq_len - lengths)
    rows = lengths.shape[0]
    batch_axes = ("batch", "length")

    def cond(state):
        step, _, _, _, done, _, _, _ = state
        return (step < max_len) & ~jnp.all(done)

    def body(state):
        step, token, cache, out, done, count, logprob, token_lp = state
        logits, cache = extend(params, cfg, token[:, None], cache, lengths - 1 + step)
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, step)
        new = sample_logits(logits[:, 0], step_keys, temperature, top_p, top_k=sp.top_k,
                            greedy=sp.greedy, nucleus=sp.nucleus)
        new = jnp.where(done, PAD_ID, new)
        out = jax.lax.dynamic_update_slice(out, new[:, None], (0, step))
        count = count + (~done).astype(jnp.int32)
        new_lp = jnp.where(done, 0.0, token_log_prob(logits[:, 0], new))
        logprob = logprob + new_lp
        if token_lp is not None:
            token_lp = jax.lax.dynamic_update_slice(token_lp, new_lp[:, None], (0, step))
        done = done | ends_sample(new, sp) | (step + 1 >= budget)
        return step + 1, new, cache, out, done, count, logprob, token_lp

    out = nn.with_logical_constraint(jnp.full((rows, max_len), PAD_ID, jnp.int32), batch_axes)
    token_lp = jnp.zeros((rows, max_len), jnp.float32) if sp.token_logprobs else None
    state = (jnp.int32(0), first_input, cache, out, budget <= 0, jnp.zeros((rows,), jnp.int32),
             jnp.zeros((rows,), jnp.float32), token_lp)
    _, _, _, out, _, count, logprob, token_lp = jax.lax.while_loop(cond, body, state)
    return (out, count, logprob) + ((token_lp,) if sp.token_logprobs else ())


# ----------------------------------------------------------------------------- generate


@functools.lru_cache(maxsize=None)
def compiled_generate(cfg: DecoderConfig, sp: DecodeStatic):
    return jax.jit(functools.partial(generate_tokens, cfg=cfg, sp=sp))


def generate(params, cfg: DecoderConfig, prompts: Sequence[Sequence[int]], sampling: SamplingParams,
             *, seed: int = 0, prompt_ids: Optional[Sequence[int]] = None,
             partitioner: Partitioner = NO_MESH, truncate_prompts: bool = False,
             pad_to: int = 0, decode=None) -> Samples:
    """N samples for each prompt (token lists, e.g. [start id] + encode(text)).

    prompt_ids: each prompt's global index (default 0..B-1); sample j of prompt i uses the
    rng stream i * N + j, so pass the same ids to get the same samples in any batch.
    partitioner: decode data-parallel on its mesh (params already sharded on it, e.g. with
    `partitioner.param_shardings`); default: no mesh, one device.
    pad_to: run at least this many prompt rows (dummies, dropped), so a short last batch
    reuses the full batches' compiled program.
    truncate_prompts: a prompt longer than max_seq_len - max_decode_len keeps its first
    (start) token and its tail, so that its samples may run max_decode_len tokens; without
    it, a prompt longer than max_seq_len raises.
    decode: the vocabulary's decode (token ids -> text), needed for `sampling.stop_strings`:
    a batch decodes until its rows end on device, then samples holding a stop string are
    cut after the token that completes it (`stops.py`).
    """
    sampling.validate()
    matcher = sampling.stop_matcher(decode)
    # Truncating cuts a prompt to leave every sample its whole max_decode_len; cut only to
    # max_seq_len, a long prompt would fill the context and get no tokens at all.
    limit = cfg.max_seq_len - sampling.max_decode_len if truncate_prompts else cfg.max_seq_len
    prompts = check_prompts(prompts, max(1, limit), truncate_prompts)
    n = sampling.num_samples
    ids = np.arange(len(prompts)) if prompt_ids is None else np.asarray(prompt_ids, np.int64)
    if ids.shape != (len(prompts),):
        raise ValueError(f"prompt_ids must have one id per prompt ({len(prompts)}), got {ids.shape}")
    rows = rows_for(max(len(prompts), pad_to), partitioner.batch_shards, per_row=n)
    # Prompts that do not split over the shards are replicated: each device prefills them
    # all (few rows), then keeps its share of the N samples (repeat_cache's constraint).
    split = rows % partitioner.batch_shards == 0
    tokens, lengths = pad_prompts(prompts, rows)
    padded_ids = np.concatenate([ids, np.zeros(rows - len(ids), np.int64)])
    sample_ids = (padded_ids[:, None] * n + np.arange(n)[None, :]).reshape(-1)
    if sample_ids.max() >= 2 ** 31:
        raise ValueError("prompt_ids * num_samples must stay below 2**31")
    with partitioner.context():
        outputs = compiled_generate(cfg, sampling.static())(
            params, partitioner.to_global(tokens, split), partitioner.to_global(lengths, split),
            partitioner.to_global(sample_ids.astype(np.int32)), jnp.int32(seed),
            jnp.float32(sampling.temperature), jnp.float32(sampling.top_p))
    out, count, logprob, *token_lp = (
        np.array(partitioner.to_host(x)).reshape(rows, n, *x.shape[1:])[:len(prompts)]
        for x in outputs)
    samples = Samples(tokens=out, lengths=count, logprobs=logprob)
    if matcher is not None:
        cut_at_stop_strings(samples, token_lp[0], matcher)
    return samples


def cut_at_stop_strings(samples: Samples, token_lp: np.ndarray, matcher: stops.StopStrings):
    """End each sample (in place) after the token that completes its first stop string, its
    log-likelihood summed over the tokens kept (`stops.sum_logprobs`, as the engine sums)."""
    for index in np.ndindex(samples.lengths.shape):
        n = int(samples.lengths[index])
        end = matcher.first_stop(samples.tokens[index][:n].tolist())
        if end is not None:
            samples.tokens[index][end:] = PAD_ID
            samples.lengths[index] = n = end
        samples.logprobs[index] = stops.sum_logprobs(token_lp[index][:n])

"""Evaluator scoring: S(X|P) = p(" correct") / (p(" correct") + p(" incorrect")), or a
model's own likelihood of the candidate (`score_records(method='likelihood')`).

The evaluator reads `[start] + encode(evaluator_prompt(problem, solution))` and each label is
tokenised on its own (as the seqio tasks tokenise inputs and targets); a label of several
tokens counts with its whole-sequence log-probability. The context is prefilled once into a
KV cache that both labels continue from, so a candidate costs one pass over its context.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from mathft_jax.sampling import decoding
from mathft_jax.sampling.batching import check_prompts, pad_prompts, rows_for
from mathft_jax.data.formats import evaluator_prompt, evaluator_target, solution_prefixes
from mathft_jax.data.prompts import sampled_format
from mathft_jax.models.config import DecoderConfig
from mathft_jax.models.partitioning import NO_MESH, Partitioner


def label_logprobs(params, contexts, lengths, *, cfg: DecoderConfig, labels: tuple):
    """log p(label | context) for each label (static tuple of token tuples): [b, len(labels)].

    contexts [b, C] right-padded, lengths [b] >= 1. Each label pass feeds the context's last
    token then the label's tokens but its last, from the context's last slot.
    """
    params, cfg = decoding.unroll_layers(params, cfg)
    cache = decoding.prefill(params, cfg, contexts, contexts.shape[1] + max(map(len, labels)))
    last = decoding.last_tokens(contexts, lengths)
    out = []
    for label in labels:
        target = jnp.asarray(label, jnp.int32)
        inputs = jnp.concatenate(
            [last[:, None], jnp.broadcast_to(target[None, :-1], (last.shape[0], len(label) - 1))], 1)
        logits, _ = decoding.extend(params, cfg, inputs, cache, lengths - 1)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        out.append(jnp.sum(logp[:, jnp.arange(len(label)), target], axis=-1))
    return jnp.stack(out, axis=-1)


@functools.lru_cache(maxsize=None)
def compiled_label_logprobs(cfg: DecoderConfig, labels: tuple):
    return jax.jit(functools.partial(label_logprobs, cfg=cfg, labels=labels))


def decoder_start_id(vocab) -> int:
    # Imported here: mathft_jax.data.vocab pulls in TensorFlow.
    from mathft_jax.data.vocab import decoder_start_id as start_id
    return start_id(vocab)


def encode_label(vocab, text: str) -> tuple:
    ids = tuple(int(t) for t in vocab.encode(text))
    if not ids:
        raise ValueError(f"label {text!r} encodes to no tokens")
    return ids


def score_solutions(params, cfg: DecoderConfig, vocab, problems: Sequence[str],
                    solutions: Sequence[str], *, batch_size: int = 32,
                    partitioner: Partitioner = NO_MESH,
                    start_id: Optional[int] = None, truncate: bool = True,
                    labels: Optional[tuple] = None) -> np.ndarray:
    """S(X|P) for each (problem, solution) pair: float64 [n] in [0, 1].

    start_id: the decoder's start token (default: `data.vocab.decoder_start_id(vocab)`).
    truncate: contexts too long for the model keep their start token and their end (where
    the template's question is), else they raise. Candidates are scored in batches of
    `batch_size` sorted by length (less padding), data-parallel on the partitioner's mesh.
    """
    if len(problems) != len(solutions):
        raise ValueError(f"problems ({len(problems)}) and solutions ({len(solutions)}) "
                         "differ in length")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not len(problems):
        return np.zeros((0,), np.float64)
    start = decoder_start_id(vocab) if start_id is None else int(start_id)
    if labels is None:  # the labels the evaluator was trained on (gin: evaluator_target)
        labels = (evaluator_target(True), evaluator_target(False))
    label_ids = tuple(encode_label(vocab, text) for text in labels)
    room = cfg.max_seq_len - max(map(len, label_ids))
    contexts = check_prompts(
        [[start] + list(vocab.encode(evaluator_prompt(p, s))) for p, s in zip(problems, solutions)],
        room, truncate, what="evaluator contexts")
    rows = rows_for(batch_size, partitioner.batch_shards)
    order = np.argsort([len(c) for c in contexts], kind="stable")
    logps = np.zeros((len(contexts), len(labels)), np.float64)
    fn = compiled_label_logprobs(cfg, label_ids)
    for begin in range(0, len(order), batch_size):
        index = order[begin:begin + batch_size]
        batch = [contexts[i] for i in index]
        tokens, lengths = pad_prompts(batch, rows)
        with partitioner.context():
            out = fn(params, partitioner.to_global(tokens), partitioner.to_global(lengths))
        logps[index] = partitioner.to_host(out)[:len(batch)]
    # p_c / (p_c + p_i) = sigmoid(log p_c - log p_i), stable for very unlikely labels.
    return 1.0 / (1.0 + np.exp(logps[:, 1] - logps[:, 0]))


def score_groups(params, cfg: DecoderConfig, vocab, problems: Sequence[str],
                 solutions: Sequence[Sequence[str]], **kwargs) -> list[np.ndarray]:
    """S(X|P) of each problem's solutions: solutions[i] holds the texts of problems[i].

    Returns, per problem, float64 [len(solutions[i])]. Every pair goes to one
    `score_solutions` call (its keyword arguments pass through), so batches mix problems.
    """
    if len(problems) != len(solutions):
        raise ValueError(f"problems ({len(problems)}) and solution groups ({len(solutions)}) "
                         "differ in length")
    flat = score_solutions(params, cfg, vocab,
                           [p for p, group in zip(problems, solutions) for _ in group],
                           [s for group in solutions for s in group], **kwargs)
    ends = np.cumsum([len(group) for group in solutions], dtype=np.int64)
    return [flat[end - len(group):end] for group, end in zip(solutions, ends)]


@gin.configurable(denylist=["params", "cfg", "vocab", "records"])
def score_records(params, cfg: DecoderConfig, vocab, records: Sequence[dict],
                  batch_size: int = 64, steps: bool = False, method: str = "label",
                  loss_chunk: int = 0, **kwargs) -> int:
    """Set every sample's `score`, in place, for candidates records (docs/formats.md);
    returns how many were scored. `batch_size` is gin `score_records.batch_size`, the one
    setting for infer's and the pipeline's scoring.

    method (gin `score_records.method`):
      label       S(X|P) of an SCR evaluator, the paper's; the keyword arguments as
                  `score_solutions`
      likelihood  exp(mean token log-probability of X + EOS given the generation prompt),
                  the geometric-mean token probability, in (0, 1], for a checkpoint in
                  generation format: the generator itself (then it ranks as the RR.LL
                  baseline, up to the EOS it appends to a sample cut at the decode limit) or
                  one trained on sequence pairs (`sequence_objective`, `dpo_objective`).
                  Keyword arguments: `partitioner`, `start_id`; `loss_chunk` as the
                  objectives' (every position's logits are needed here, not the last one's:
                  set it for large vocabularies)
    steps (label only): score = the least S over the candidate's line prefixes
    (formats.solution_prefixes), for an evaluator trained on them (task
    scr_steps_pairwise): a solution is as good as its worst step."""
    from mathft_jax.results.candidates import SCORE_METHODS  # noqa: PLC0415 (the format's home)
    if method not in SCORE_METHODS:
        raise ValueError(f"score_records.method={method!r}: choose from {SCORE_METHODS}")
    if method == "label" and loss_chunk:
        raise ValueError("score_records.loss_chunk applies to method='likelihood' only (the "
                         "label path reads the last position's logits alone)")
    if method == "likelihood" and steps:
        raise ValueError("score_records.steps=True scores line prefixes with an evaluator's "
                         "label; it does not combine with method='likelihood'")
    for record in records:  # evaluate reads calibration only from probabilities ('label')
        record["score_method"] = method
    if method == "likelihood":
        return _score_by_likelihood(params, cfg, vocab, records, batch_size, loss_chunk, **kwargs)
    # Per record, per sample: the texts to score (the sample, or each of its line prefixes).
    parts = [[solution_prefixes(s["text"]) if steps else [s["text"]] for s in r["samples"]]
             for r in records]
    groups = score_groups(params, cfg, vocab, [r["problem"] for r in records],
                          [[text for sample in record for text in sample] for record in parts],
                          batch_size=batch_size, **kwargs)
    for record, sample_parts, group in zip(records, parts, groups):
        # Back to samples: a sample's score is the least over its parts (its only one, or
        # the minimum over its prefixes).
        ends = np.cumsum([len(texts) for texts in sample_parts])[:-1]
        group = [part.min() for part in np.split(group, ends)] if len(group) else group
        for sample, score in zip(record["samples"], group):
            sample["score"] = float(score)
    return sum(len(r["samples"]) for r in records)


def _score_by_likelihood(params, cfg: DecoderConfig, vocab, records: Sequence[dict],
                         batch_size: int, loss_chunk: int, partitioner: Partitioner = NO_MESH,
                         start_id: Optional[int] = None) -> int:
    from mathft_jax.scoring.likelihood import completion_log_likelihoods  # noqa: PLC0415
    # Each record in the format it was sampled with (plain where it names none)
    formats_by_record = [sampled_format(record, vocab) for record in records]
    samples = [(fmt, record["problem"], sample) for fmt, record in zip(formats_by_record, records)
               for sample in record["samples"]]
    ll, tokens = completion_log_likelihoods(
        params, cfg, vocab, [fmt.prompt_text(p) for fmt, p, _ in samples],
        [fmt.continuation(s["text"]) for fmt, _, s in samples],
        batch_size=rows_for(batch_size, partitioner.batch_shards),
        partitioner=partitioner, start_id=start_id, loss_chunk=loss_chunk)
    for (_, _, sample), value in zip(samples, np.exp(ll / np.maximum(tokens, 1))):
        sample["score"] = float(value)
    return len(samples)

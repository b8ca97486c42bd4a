"""Sample N solutions per problem and write the candidates file (docs/formats.md).

    python -m mathft_jax.infer --gin_file=gin_configs/models/tiny.gin \\
        --gin_file=gin_configs/infer/synthetic.gin \\
        --gin_bindings="infer.checkpoint='runs/tiny'" --gin_bindings="infer.output_path='c.jsonl'"

Resumable: each batch of problems goes to its own chunk file in `<output_path>.parts/`
(written to a temporary file, then renamed), a restarted run skips the problems found there,
and the final file is merged from the chunks the same way, so a crash never leaves a
truncated file. SIGTERM stops it after the chunk it is sampling (exit 75). Sample j of
problem i always draws from rng stream i * N + j: a resumed run writes what an
uninterrupted one would. Every process runs this (multi-host); process 0 alone writes.
"""
from __future__ import annotations

if __name__ == "__main__":  # run the package module once (see mathft_jax/core/entry.py)
    from mathft_jax.core import preemption as _preemption
    _preemption.install()  # first: SIGTERM stops between chunks, keeping what is written
    from mathft_jax.core.entry import run_module
    run_module("mathft_jax.infer")


import dataclasses
import functools
import logging
import math
import time
from typing import Iterator, Optional, Sequence

import gin
import jax
import numpy as np
from tqdm import tqdm

from mathft_jax.convert import lora_checkpoints
from mathft_jax.core import distributed, preemption, provenance, settings, storage
from mathft_jax.models import lora, partitioning, quantization
from mathft_jax.results import candidates
from mathft_jax.sampling import decoding
from mathft_jax.scoring import evaluator
from mathft_jax.sampling import engine as engine_lib
from mathft_jax.data import formats, sources
from mathft_jax.grading import POLICIES, extract_answer
from mathft_jax.models.config import DecoderConfig

PARTS_SUFFIX = ".parts"


# ----------------------------------------------------------------------------- problems


def load_problems(task: str, split: str, problems_file: Optional[str] = None) -> list[dict]:
    """[{"problem_id", "problem", "gold"}] of a problem source (`sources.problem_records`)."""
    return sources.problem_records(task, split, problems_file, setting="infer")


# ----------------------------------------------------------------------------- chunked output


def parts_dir(output_path: str) -> str:
    return output_path + PARTS_SUFFIX


def read_done(output_path: str) -> dict[str, dict]:
    """Records already written: the final file if any, plus every complete chunk. A chunk
    that cannot be read (never from a crash: chunks are renamed into place) is removed
    and its problems are redone; a final file that cannot be read is an error."""
    done = {}
    sources = [output_path] if storage.exists(output_path) else []
    parts = storage.path(parts_dir(output_path))
    if parts.is_dir():
        sources += sorted(str(p) for p in parts.glob("*.jsonl"))
    for path in sources:
        try:
            records = candidates.read_candidates(path)
        except candidates.CandidatesError as e:
            if path == output_path:
                raise
            logging.warning("discarding unreadable chunk %s: %s", path, e)
            storage.path(path).unlink()
            continue
        done.update((r["problem_id"], r) for r in records)
    return done


def write_chunk(output_path: str, first_index: int, records: list[dict]) -> None:
    candidates.write_candidates(storage.join(parts_dir(output_path), f"{first_index:08d}.jsonl"),
                                records)


def merge(output_path: str, problems: list[dict], done: dict[str, dict]) -> None:
    """The final file in problem order (atomic), then the chunks go."""
    candidates.write_candidates(output_path, [done[p["problem_id"]] for p in problems])
    parts = storage.path(parts_dir(output_path))
    if parts.exists():
        parts.rmtree()


def done_mask(problems: list[dict], output_path: str) -> np.ndarray:
    """Which problems are done, as process 0 sees it, on every process (hosts need not
    share a file system)."""
    mask = np.zeros((len(problems),), np.int32)
    if distributed.is_main_process():
        done = read_done(output_path)
        mask[:] = [p["problem_id"] in done for p in problems]
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        mask = np.asarray(multihost_utils.broadcast_one_to_all(mask))
    return mask.astype(bool)


# ----------------------------------------------------------------------------- sampling


def make_records(batch: list[dict], samples: decoding.Samples, vocab, eos_id: int,
                 policy: str = "strict") -> list[dict]:
    """Candidates records; each sample's answer extracted under `policy`, which the record
    keeps (`extraction_policy`) so a later grading knows how its answers were read."""
    records = []
    for i, problem in enumerate(batch):
        texts = [vocab.decode(seq) for seq in samples.sequences(i, eos_id)]
        # logprob to 1e-4 nats: the engines agree token for token, but a sum computed in
        # another batch shape (a resumed run's drain) can differ in float32's last bits
        entries = [{"text": text, "answer": extract_answer(text, policy=policy),
                    "logprob": round(float(logprob), 4), "num_tokens": int(n)}
                   for text, logprob, n in zip(texts, samples.logprobs[i], samples.lengths[i])]
        records.append({**problem, "extraction_policy": policy, "samples": entries})
    return records


def batches_of(todo: list[int], batch_size: int,
               stream) -> Iterator[tuple[list[int], decoding.Samples]]:
    """The engine's per-prompt stream (positions in `todo`), regrouped into infer's batches
    of `batch_size` consecutive todo problems, in order: the same chunk files as static
    batching, so resume works the same. Prompts finishing early wait for their batch."""
    finished: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    begin = 0
    for k, tokens, lengths, logprobs in stream:
        finished[k] = (tokens, lengths, logprobs)
        while begin < len(todo):
            ks = range(begin, min(begin + batch_size, len(todo)))
            if not all(k in finished for k in ks):
                break
            rows = [finished.pop(k) for k in ks]
            yield ([todo[k] for k in ks], decoding.Samples(*(np.stack([r[f] for r in rows])
                                                             for f in range(3))))
            begin += batch_size


@gin.configurable("infer")
@dataclasses.dataclass(frozen=True)
class InferConfig:
    """One sampling run's settings, bound in gin as `infer.<field>` (scoped per pipeline
    stage: `sample_eval/infer.max_problems`).

    batch_size: problems per step (batch_size * num_samples sequences). The mesh is the one
    every entry point builds (`make_mesh.*` in gin); decoding splits the sequences over its
    data and fsdp axes. evaluator_checkpoint (same DecoderConfig) fills each sample's
    `score` with its S(X|P) (`score_records`: batch size, method).
    engine: "continuous" (`mathft_jax.sampling.engine`: `slots` sequences decoded together, default
    batch_size * num_samples, refilled every `chunk` steps from a queue of every problem to
    do, prefilled in groups of batch_size; it always shares prefill) or "static"
    (`decoding.generate`, a batch at a time, each until its longest sample ends). Both write
    the same file, sample for sample (docs/ARCHITECTURE.md, "Continuous batching");
    continuous decoded 2.1-2.9x the useful tokens/s at MATH's spread of lengths
    (bench/decode.py, docs/PERFORMANCE.md). model: the checkpoint's `DecoderConfig`, made
    from gin (`DecoderConfig.*`) in the scope the InferConfig is made in.
    """

    checkpoint: Optional[str] = None
    output_path: Optional[str] = None
    task: str = "math500"  # a problem source (mathft_jax.data.sources)
    split: str = "test"
    problems_file: Optional[str] = None  # MATH-style JSON lines or folder; wins over task
    max_problems: Optional[int] = None
    num_samples: int = 64
    max_decode_len: int = 512
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8
    share_prefill: bool = True
    truncate_prompts: bool = False
    evaluator_checkpoint: Optional[str] = None
    # How a sample's answer is read: strict (\boxed{}, models trained to box) or lenient
    # (answer sentences, closing math, units...: few-shot and instruct models); docs/grading.md
    extraction_policy: str = "strict"
    engine: str = "continuous"
    slots: int = 0  # 0: batch_size * num_samples, static batching's rows
    chunk: int = engine_lib.DEFAULT_CHUNK
    # A LoRA checkpoint's adapters: merged into its base once (faster steps), or applied
    # unmerged (one base serves the generator's and the evaluator's adapter sets).
    merge_adapters: bool = True
    model: DecoderConfig = dataclasses.field(default_factory=DecoderConfig)
    # the generator's base stored and computed quantized (QLoRA's; `quantize_base.*`)
    quantize: quantization.QuantConfig = dataclasses.field(
        default_factory=quantization.QuantConfig)

    def validate(self) -> "InferConfig":
        """Raise SettingError naming the binding; needs no model, mesh or data."""
        settings.check("infer", num_samples=self.num_samples, max_decode_len=self.max_decode_len,
                       top_k=(self.top_k, 0), batch_size=self.batch_size,
                       max_problems=self.max_problems, seed=(self.seed, 0),
                       slots=(self.slots, 0), chunk=self.chunk)
        if self.engine not in ("static", "continuous"):
            raise settings.SettingError(f"infer.engine={self.engine!r} must be 'static' or "
                                        "'continuous'")
        settings.check_real("infer", "temperature", self.temperature, 0.0, math.inf)
        settings.check_real("infer", "top_p", self.top_p, 0.0, 1.0, low_open=True)
        if self.extraction_policy not in POLICIES:
            raise settings.SettingError(f"infer.extraction_policy={self.extraction_policy!r}: "
                                        f"expected one of {', '.join(POLICIES)}")
        for name in ("checkpoint", "output_path"):
            if not getattr(self, name):
                raise settings.SettingError(f"infer.{name} is not set")
        self.model.validate()
        self.quantize.validate()
        return self


def quantized_base(params, model: DecoderConfig, quant: quantization.QuantConfig):
    """The generator with its base quantized as `quant` says (QLoRA's: unmerged adapters
    stay float; merged ones are quantized with the base they were merged into)."""
    if isinstance(params, lora.Adapted):
        return params.replace(base=quantization.quantize_base(params.base, model, quant))
    return quantization.quantize_base(params, model, quant)


def infer(config: Optional[InferConfig] = None, *, vocabulary=None, progress: bool = True,
          **fields) -> str:
    """Sample `num_samples` solutions for each problem of `task`/`split`; returns output_path.

    config: the run's settings (default: `InferConfig()` from gin, in the current gin scope);
    `fields` replace some of them. vocabulary (default gin's `get_vocabulary()`) and the
    progress bar are hooks, not configuration.
    """
    config = settings.resolve(InferConfig, config, **fields)
    from mathft_jax.data import vocab as vocab_lib
    model, batch_size = config.model, config.batch_size
    vocab = vocabulary or vocab_lib.get_vocabulary()
    start_id = vocab_lib.decoder_start_id(vocab)
    sampling = decoding.SamplingParams(config.num_samples, config.max_decode_len,
                                       config.temperature, config.top_k, config.top_p,
                                       int(vocab.eos_id), config.share_prefill).validate()
    partitioner = partitioning.Partitioner.create(model)
    partitioner.check_batch_divisible(batch_size, "infer.batch_size")
    slots = config.slots or batch_size * config.num_samples
    partitioner.check_batch_divisible(slots, "infer.slots")
    problems = sources.first(load_problems(config.task, config.split, config.problems_file),
                             config.max_problems, "infer.max_problems")
    output_path = config.output_path
    todo = [i for i, done in enumerate(done_mask(problems, output_path)) if not done]
    logging.info("infer: %d problems, %d to do, N=%d", len(problems), len(todo),
                 config.num_samples)

    bases: dict = {}  # LoRA checkpoints on one base load it once (unmerged)
    load = functools.partial(lora_checkpoints.load_model, cfg=model, partitioner=partitioner,
                             merge=config.merge_adapters, bases=bases)
    params = quantized_base(load(config.checkpoint), model, config.quantize) if todo else None
    evaluator_params = (load(config.evaluator_checkpoint)
                        if todo and config.evaluator_checkpoint else None)
    writer = distributed.is_main_process()
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), unit="problem",
               disable=not (progress and writer), dynamic_ncols=True)
    tokens, sampled, started = 0, 0, time.perf_counter()
    prompts = [[start_id] + list(vocab.encode(formats.generation_prompt(problems[i]["problem"])))
               for i in todo]
    common = dict(seed=config.seed, partitioner=partitioner,
                  truncate_prompts=config.truncate_prompts)
    if not todo:  # all written already (a rerun): the engine refuses an empty prompt list
        batches = iter(())
    elif config.engine == "continuous":
        batches = batches_of(todo, batch_size, engine_lib.stream(
            params, model, prompts, sampling, prompt_ids=todo, slots=slots, chunk=config.chunk,
            prefill_group=batch_size, **common))
    else:
        batches = ((todo[b:b + batch_size], decoding.generate(
            params, model, prompts[b:b + batch_size], sampling,
            prompt_ids=todo[b:b + batch_size], pad_to=batch_size, **common))
            for b in range(0, len(todo), batch_size))
    if todo:
        _stop_if_preempted(len(problems) - len(todo), len(problems), output_path, bar)
    for index, samples in batches:
        batch = [problems[i] for i in index]
        records = make_records(batch, samples, vocab, sampling.eos_id, config.extraction_policy)
        if evaluator_params is not None:  # every process: scoring is collective on a mesh
            evaluator.score_records(evaluator_params, model, vocab, records,
                                    partitioner=partitioner, start_id=start_id)
        if writer:
            write_chunk(output_path, index[0], records)
        tokens, sampled = tokens + int(samples.lengths.sum()), sampled + len(batch)
        bar.update(len(batch))
        bar.set_postfix(samples=sampled * config.num_samples,
                        tok_s=f"{tokens / (time.perf_counter() - started):.0f}")
        if sampled < len(todo):  # after the last chunk: merge, as if no SIGTERM came
            _stop_if_preempted(len(problems) - len(todo) + sampled, len(problems), output_path,
                               bar)
    bar.close()
    if writer:
        merge(output_path, problems, read_done(output_path))
        provenance.write_operative(output_path + ".config.gin")  # the run's operative config
        logging.info("infer: wrote %s (and its operative config, .config.gin)", output_path)
    return output_path


def _stop_if_preempted(done: int, total: int, output_path: str, bar) -> None:
    """After a SIGTERM (the handler of `preemption.install`), stop between chunks: what is
    written stays, and a rerun resumes there. A collective, as every process samples every
    chunk."""
    if distributed.any_process(preemption.requested()):
        bar.close()
        raise preemption.Preempted(f"infer preempted after {done} of {total} problems "
                                   f"({output_path}); rerun to resume")


# ----------------------------------------------------------------------------- entry point


def main(argv: Sequence[str]) -> None:
    del argv
    from mathft_jax.core import entry
    entry.parse_gin_flags()
    infer(InferConfig())

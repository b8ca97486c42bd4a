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

from mathft_jax.convert import lora_checkpoints, model_files
from mathft_jax.core import distributed, preemption, provenance, settings, storage
from mathft_jax.models import lora, partitioning, quantization
from mathft_jax.results import candidates
from mathft_jax.sampling import decoding
from mathft_jax.scoring import evaluator
from mathft_jax.sampling import engine as engine_lib
from mathft_jax.sampling import stops
from mathft_jax.data import prompts as prompts_lib, sources
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


def make_records(batch: list[dict], samples: decoding.Samples, vocab,
                 sampling: decoding.SamplingParams, policy: str = "strict",
                 prompt_fields: Optional[dict] = None) -> list[dict]:
    """Candidates records; each sample's answer extracted under `policy`, which the record
    keeps (`extraction_policy`) so a later grading knows how its answers were read, and
    `prompt_fields`, the prompt format's (`PromptFormat.record`: none for plain). A
    sample's text stops before its first stop string; the stops in force beyond the
    vocabulary's EOS are kept in the record (`stop`)."""
    records = []
    stop = stop_record(sampling)
    for i, problem in enumerate(batch):
        texts = [stops.cut_text(vocab.decode(seq), sampling.stop_strings)
                 for seq in samples.sequences(i, sampling.end_ids)]
        # logprob to 1e-4 nats: the engines agree token for token, but a sum computed in
        # another batch shape (a resumed run's drain) can differ in float32's last bits
        entries = [{"text": text, "answer": extract_answer(text, policy=policy),
                    "logprob": round(float(logprob), 4), "num_tokens": int(n)}
                   for text, logprob, n in zip(texts, samples.logprobs[i], samples.lengths[i])]
        records.append({**problem, "extraction_policy": policy, **(prompt_fields or {}),
                        **stop, "samples": entries})
    return records


def stop_record(sampling: decoding.SamplingParams) -> dict:
    """{"stop": {"strings", "ids"}} where a sample may end on more than the EOS, else {} (a
    run without stops writes the records it always did)."""
    ids = list(sampling.end_ids[1:])
    if not (sampling.stop_strings or ids):
        return {}
    return {"stop": {"strings": list(sampling.stop_strings), "ids": ids}}


def stop_strings(config: "InferConfig", prompt_format) -> tuple[str, ...]:
    """infer.stop_strings, then those the prompt format implies (a chat template's end of
    turn, a few-shot prompt's next "Problem:"), each once."""
    return tuple(dict.fromkeys(tuple(config.stop_strings) + tuple(prompt_format.stop_strings)))


def stop_ids(config: "InferConfig", vocab, strings: Sequence[str] = ()) -> tuple[int, ...]:
    """The token ids that end a sample besides the EOS: infer.stop_ids; the EOS ids the
    checkpoint's generation config lists (with infer.generation_eos,
    `model_files.generation_eos_ids`); and each stop string the vocabulary encodes as one
    token, matched on device (a special token such as <|im_end|> never reaches the decoded
    text the strings are searched in)."""
    found = model_files.generation_eos_ids(config.checkpoint) if config.generation_eos else ()
    single = tuple(ids[0] for ids in (list(vocab.encode(s)) for s in strings) if len(ids) == 1)
    return tuple(int(i) for i in dict.fromkeys(tuple(config.stop_ids) + found + single))


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
    from gin (`DecoderConfig.*`) in the scope the InferConfig is made in; prompt: the
    prompt format (`prompt_format.*`, data/prompts.py), made the same way.
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
    # What ends a sample besides the vocabulary's EOS (sampling/stops.py: the sample's
    # tokens run to the one completing a string, its text stops before the string; the
    # record keeps them as `stop`). stop_strings, e.g. ("\n\nProblem:",) or a chat
    # format's end of turn; stop_ids, token ids; generation_eos adds the EOS ids the
    # checkpoint's generation_config.json lists (import_hf keeps it in hf/).
    stop_strings: tuple = ()
    stop_ids: tuple = ()
    generation_eos: bool = True
    # A LoRA checkpoint's adapters: merged into its base once (faster steps), or applied
    # unmerged (one base serves the generator's and the evaluator's adapter sets).
    merge_adapters: bool = True
    model: DecoderConfig = dataclasses.field(default_factory=DecoderConfig)
    # the generator's base stored and computed quantized (QLoRA's; `quantize_base.*`)
    quantize: quantization.QuantConfig = dataclasses.field(
        default_factory=quantization.QuantConfig)
    prompt: prompts_lib.PromptConfig = dataclasses.field(default_factory=prompts_lib.PromptConfig)

    def __post_init__(self):  # gin gives lists; keep the config hashable and its repr stable
        for name in ("stop_strings", "stop_ids"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))

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
        try:
            stops.check_strings(self.stop_strings, "infer.stop_strings")
        except ValueError as e:
            raise settings.SettingError(str(e)) from None
        if not isinstance(self.stop_ids, tuple) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.stop_ids):
            raise settings.SettingError(f"infer.stop_ids={self.stop_ids!r} must be a tuple of "
                                        "token ids >= 0")
        if self.extraction_policy not in POLICIES:
            raise settings.SettingError(f"infer.extraction_policy={self.extraction_policy!r}: "
                                        f"expected one of {', '.join(POLICIES)}")
        for name in ("checkpoint", "output_path"):
            if not getattr(self, name):
                raise settings.SettingError(f"infer.{name} is not set")
        self.model.validate()
        self.prompt.validate()
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
    prompt_format = config.prompt.build(vocab)
    strings = stop_strings(config, prompt_format)
    sampling = decoding.SamplingParams(config.num_samples, config.max_decode_len,
                                       config.temperature, config.top_k, config.top_p,
                                       int(vocab.eos_id), config.share_prefill,
                                       stop_ids(config, vocab, strings), strings).validate()
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
    prompts = [prompt_format.tokens(problems[i]["problem"], vocab, start_id) for i in todo]
    common = dict(seed=config.seed, partitioner=partitioner,
                  truncate_prompts=config.truncate_prompts, decode=vocab.decode)
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
        records = make_records(batch, samples, vocab, sampling, config.extraction_policy,
                               prompt_format.record)
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

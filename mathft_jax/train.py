"""Training entry point: `python -m mathft_jax.train --gin_file=... --gin_bindings=...`.

`train(config)`: build the mesh and data first (bad configs fail before anything
compiles), then run the supervised learner (one step of the task's batches a unit, with
`config.objective`: SFT, the evaluator's, DPO's) in the shared training harness
(`training/harness.py`): restore the latest checkpoint of `model_dir` (parameters,
optimizer state and the input pipeline's position) or start fresh / from
`init_checkpoint` (parameters only); save every `checkpoint_every` steps (async, keep the
last K), on SIGTERM (then exit cleanly) and always at the end. A non-finite loss stops the
run with an error naming the step; nothing after the last good step is saved.
"""
from __future__ import annotations

if __name__ == "__main__":  # run the package module once (see mathft_jax/core/entry.py)
    from mathft_jax.core import preemption as _preemption
    _preemption.install()  # first: a SIGTERM during the slow imports below still ends cleanly
    from mathft_jax.core.entry import run_module
    run_module("mathft_jax.train")


import dataclasses
from typing import Callable, Iterator, Optional

import gin
import jax
from absl import logging

from mathft_jax.convert import model_files
from mathft_jax.core import entry, settings
from mathft_jax.models import partitioning, sizes
from mathft_jax.models.config import DecoderConfig
from mathft_jax.models.lora import LoraConfig
from mathft_jax.models.quantization import QuantConfig
from mathft_jax.training.harness import Harness, Learner, NonFiniteLossError  # noqa: F401
from mathft_jax.training.objectives import lm_objective, rows_per_group
from mathft_jax.training.optim import OptimizerConfig
from mathft_jax.training.trainer import make_eval_step


@dataclasses.dataclass
class TrainResult:
    model_dir: str
    start_step: int
    final_step: int
    preempted: bool
    last_metrics: dict


def global_batch(local: dict, partitioner: partitioning.Partitioner) -> dict:
    """Host batch -> global jax.Arrays, rows split over (data, fsdp). Every process holds
    the same global batch (the data iterator is deterministic)."""
    return {k: partitioner.to_global(v) for k, v in local.items()}


@gin.configurable("train")
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run's settings, bound in gin as `train.<field>` (scoped per pipeline
    stage: `ssft/train.total_steps`).

    lora: LoRA's settings (`lora.*`, models/lora.py); with a rank, only adapters train, on
    the frozen base of `init_checkpoint` (training/harness.py). quantize: that base stored
    and computed in int8 or nf4 (QLoRA; `quantize_base.*`, models/quantization.py).

    model and optimizer are typed configs made from gin (`DecoderConfig.*`,
    `make_optimizer.*`, `learning_rate_schedule.*`) in the scope the TrainConfig is made
    in, so a stage's `ssft/learning_rate_schedule.peak` is part of its TrainConfig and
    `train(config)` reads neither from gin again. The schedule's length defaults to
    `total_steps`. data_file: the file a task built from a run's own outputs reads (the
    scr_* tasks: a graded candidates file; dpo_pairs: a preference file), in place of the
    gin-bound `scr_candidates_file.path` / `preference_file.path`.
    """

    model_dir: Optional[str] = None
    task: Optional[str] = None  # a seqio task or mixture
    total_steps: int = 100
    batch_size: int = 8
    sequence_length: int = 256
    init_checkpoint: Optional[str] = None  # parameters only; a fresh optimizer
    eval_every: int = 0
    eval_steps: int = 4
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 1
    seed: int = 0
    pack: bool = True
    micro_batches: int = 1
    train_split: str = "train"
    eval_split: str = "validation"
    objective: Callable = lm_objective
    async_checkpoints: bool = True
    preemption_check_every: int = 10
    data_file: Optional[str] = None
    model: DecoderConfig = dataclasses.field(default_factory=DecoderConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)  # rank 0: full FT
    # QLoRA: the frozen base stored and computed quantized (`quantize_base.*`)
    quantize: QuantConfig = dataclasses.field(default_factory=QuantConfig)

    def validate(self) -> "TrainConfig":
        """Raise SettingError naming the binding; needs no mesh or data."""
        settings.check("train", total_steps=(self.total_steps, 0), batch_size=self.batch_size,
                       sequence_length=self.sequence_length, checkpoint_every=self.checkpoint_every,
                       keep_checkpoints=self.keep_checkpoints, log_every=self.log_every,
                       micro_batches=self.micro_batches, eval_every=(self.eval_every, 0),
                       eval_steps=self.eval_steps,
                       preemption_check_every=self.preemption_check_every)
        if not self.model_dir:
            raise settings.SettingError("train.model_dir is not set")
        if self.batch_size % (self.micro_batches * self.rows_per_group):
            raise settings.SettingError(
                f"train.micro_batches={self.micro_batches} must split train.batch_size="
                f"{self.batch_size} into micro-batches of whole {self.rows_per_group}-row groups "
                "(the objective's unit)")
        self.lora.validate(self.model)
        self.quantize.validate().check_frozen(self.lora)
        if self.sequence_length > self.model.max_seq_len:
            raise settings.SettingError(f"train.sequence_length={self.sequence_length} exceeds "
                                        f"DecoderConfig.max_seq_len={self.model.max_seq_len}")
        return self

    @property
    def rows_per_group(self) -> int:
        return rows_per_group(self.objective)


def train(config: Optional[TrainConfig] = None, *,
          mesh_fn: Callable = partitioning.make_mesh,
          data_iterator: Optional[Iterator] = None,
          eval_iterator_fn: Optional[Callable[[], Iterator]] = None,
          progress: bool = True, **fields) -> TrainResult:
    """Train (or resume) a model in `config.model_dir`. See the module docstring.

    config: the run's settings (default: `TrainConfig()` from gin, in the current gin scope);
    `fields` replace some of them (`train(model_dir=..., task=...)`, `model=DecoderConfig(...)`).
    The keyword-only arguments are hooks, not configuration: the mesh, a data iterator in
    place of the task's, the progress bar.
    """
    config = settings.resolve(TrainConfig, config, **fields)
    partitioner = partitioning.Partitioner.create(config.model, mesh_fn())
    partitioner.check_batch_divisible(config.batch_size, "train.batch_size")
    micro_rows = config.batch_size // config.micro_batches
    if micro_rows % partitioner.batch_shards:
        raise settings.SettingError(
            f"train.micro_batches={config.micro_batches}: micro-batches of {micro_rows} "
            f"rows do not divide the mesh's {partitioner.batch_shards} data shards")
    # Data before compilation: a missing task fails here, in seconds.
    if data_iterator is None:
        if config.task is None:
            raise settings.SettingError("train.task is not set (a seqio task or mixture name)")
        data_iterator = _task_batches(config, config.train_split)
        if config.eval_every and eval_iterator_fn is None:
            eval_iterator_fn = lambda: _task_batches(config, config.eval_split,  # noqa: E731
                                                     shuffle=False, num_epochs=1)

    harness = Harness(model_dir=config.model_dir, model=config.model,
                      optimizer=config.optimizer, optimizer_steps=config.total_steps,
                      partitioner=partitioner, seed=config.seed,
                      init_checkpoint=config.init_checkpoint,
                      keep_checkpoints=config.keep_checkpoints,
                      async_checkpoints=config.async_checkpoints, lora=config.lora,
                      quantize=config.quantize)
    # model.gin, vocab.gin, tokenizer/ (and an import's hf/): export needs nothing else
    model_files.write_model_files(
        config.model_dir, config.model, _task_vocabulary(config) if config.task else None,
        hf_side_dir=model_files.inherited_hf_dir(config.init_checkpoint))
    logging.info("model_dir %s: checkpoints in <step>/, metrics in metrics.jsonl and tb/, "
                 "operative config in config.gin", config.model_dir)
    learner = _SupervisedLearner(config, partitioner, data_iterator, eval_iterator_fn)
    result = harness.run(learner, units=config.total_steps,
                         checkpoint_every=config.checkpoint_every, log_every=config.log_every,
                         micro_batches=config.micro_batches,
                         preemption_check_every=config.preemption_check_every,
                         progress=progress)
    return TrainResult(config.model_dir, result.start, result.final, result.preempted,
                       result.last_metrics)


class _SupervisedLearner(Learner):
    """The trainer's learner: one step a unit, on the next batch of the task's rows, with the
    config's objective; its checkpoints keep the data iterator's position."""

    def __init__(self, config: TrainConfig, partitioner: partitioning.Partitioner,
                 batches: Iterator, eval_batches_fn: Optional[Callable[[], Iterator]]):
        self.config, self.partitioner = config, partitioner
        self.batches, self.eval_batches_fn = batches, eval_batches_fn
        self.objective = config.objective
        self.tokens_per_unit = config.batch_size * config.sequence_length
        self.flops_per_token = sizes.flops_per_token(config.model, config.sequence_length)
        with partitioner.context():
            self.eval_fn = jax.jit(make_eval_step(config.model, config.objective))

    def begin(self, harness, state, start) -> None:
        self.harness = harness

    def advance(self, state, step):
        return step(state, global_batch(next(self.batches), self.partitioner))

    def restore(self, meta: dict) -> None:
        self.batches.set_state(meta["data"])

    def checkpoint_meta(self, unit: int) -> dict:
        return {"data": self.batches.get_state()}

    def after_unit(self, unit, state, writer) -> None:
        every = self.config.eval_every
        if every and self.eval_batches_fn and unit % every == 0:
            writer.write(unit, self._evaluate(self.harness.model_params(state)), prefix="eval")

    def postfix(self, metrics: dict) -> dict:
        return {"loss": f"{metrics['loss']:.4f}", "tok_s": f"{metrics['tokens_per_s']:,.0f}"}

    def _evaluate(self, params) -> dict:
        totals = {}
        for i, batch in enumerate(self.eval_batches_fn()):
            if i >= self.config.eval_steps:
                break
            with self.partitioner.context():
                sums = self.eval_fn(params, global_batch(batch, self.partitioner))
            for k, v in jax.device_get(sums).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        w = max(totals.pop("weight", 0.0), 1.0)
        return {k: v / w for k, v in totals.items()}


def _task_batches(config: TrainConfig, split: str, **options):
    """The task's batches of `split` (the data file, where given, in place of gin's)."""
    from mathft_jax.data.dataset import task_batches  # noqa: PLC0415 (seqio)
    return task_batches(config.task, split, config.sequence_length, config.batch_size,
                        config.seed, config.pack, data_file=config.data_file, **options)


def _task_vocabulary(config: TrainConfig):
    from mathft_jax.data import dataset  # noqa: PLC0415 (seqio)
    provider = dataset.get_provider(config.task, data_file=config.data_file)
    return provider.output_features["targets"].vocabulary


def main(argv):
    del argv
    entry.parse_gin_flags()
    result = train(TrainConfig())
    if result.preempted:
        logging.warning("preempted at step %d; rerun the same command to resume", result.final_step)

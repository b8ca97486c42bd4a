"""Training entry point: `python -m mathft_jax.train --gin_file=... --gin_bindings=...`.

The loop: build the mesh and data first (bad configs fail before anything compiles),
restore the latest checkpoint of `model_dir` (parameters, optimizer state and the input
pipeline's position) or start fresh / from `init_checkpoint` (parameters only), then run
the jitted `train_step`. It saves every `checkpoint_every` steps (async, keep the last K),
on SIGTERM (then exits cleanly) and always at the end. A non-finite loss stops the run
with an error naming the step; nothing after the last good step is saved.
"""
from __future__ import annotations

if __name__ == "__main__":  # run the package module once (see mathft_jax/core/entry.py)
    from mathft_jax.core import preemption as _preemption
    _preemption.install()  # first: a SIGTERM during the slow imports below still ends cleanly
    from mathft_jax.core.entry import run_module
    run_module("mathft_jax.train")


import dataclasses
import math
import operator
import time
from typing import Callable, Iterator, Optional

import gin
import jax
import numpy as np
from absl import logging

from mathft_jax.convert import checkpoints, model_files
from mathft_jax.core import distributed, entry, preemption, provenance, settings
from mathft_jax.models import partitioning
from mathft_jax.training import hardware
from mathft_jax.core.metrics_writer import MetricsWriter
from mathft_jax.models import sizes
from mathft_jax.models.config import DecoderConfig
from mathft_jax.training.optim import learning_rate_schedule, make_optimizer
from mathft_jax.training.objectives import lm_objective, rows_per_group
from mathft_jax.training.trainer import abstract_state, init_state, jit_train_step, make_eval_step


class NonFiniteLossError(FloatingPointError):
    pass


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
    stage: `ssft/train.total_steps`). The learning-rate schedule and optimizer are their own
    configurables (optim.py); the schedule's length defaults to `total_steps`."""

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

    def validate(self) -> "TrainConfig":
        """Raise SettingError naming the binding; needs no model, mesh or data."""
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
        return self

    @property
    def rows_per_group(self) -> int:
        return rows_per_group(self.objective)


def train(config: Optional[TrainConfig] = None, *, model: Optional[DecoderConfig] = None,
          mesh_fn: Callable = partitioning.make_mesh,
          data_iterator: Optional[Iterator] = None,
          eval_iterator_fn: Optional[Callable[[], Iterator]] = None,
          progress: bool = True, **fields) -> TrainResult:
    """Train (or resume) a model in `config.model_dir`. See the module docstring.

    config: the run's settings (default: `TrainConfig()` from gin, in the current gin scope);
    `fields` replace some of them (`train(model_dir=..., task=...)`). The keyword-only
    arguments are hooks, not configuration: the model config (default `DecoderConfig()`),
    the mesh, a data iterator in place of the task's, the progress bar.
    """
    run = settings.resolve(TrainConfig, config, **fields)
    (model_dir, task, total_steps, batch_size, sequence_length, init_checkpoint, eval_every,
     eval_steps, checkpoint_every, keep_checkpoints, log_every, seed, pack, micro_batches,
     train_split, eval_split, objective, async_checkpoints, preemption_check_every) = \
        operator.attrgetter(
            "model_dir", "task", "total_steps", "batch_size", "sequence_length",
            "init_checkpoint", "eval_every", "eval_steps", "checkpoint_every", "keep_checkpoints",
            "log_every", "seed", "pack", "micro_batches", "train_split", "eval_split",
            "objective", "async_checkpoints", "preemption_check_every")(run)
    cfg = model or DecoderConfig()
    partitioner = partitioning.Partitioner.create(cfg, mesh_fn())
    partitioner.check_batch_divisible(batch_size, "train.batch_size")
    if (batch_size // micro_batches) % partitioner.batch_shards:
        raise settings.SettingError(
            f"train.micro_batches={micro_batches}: micro-batches of {batch_size // micro_batches} "
            f"rows do not divide the mesh's {partitioner.batch_shards} data shards")
    if sequence_length > cfg.max_seq_len:
        raise settings.SettingError(f"train.sequence_length={sequence_length} exceeds "
                                    f"DecoderConfig.max_seq_len={cfg.max_seq_len}")
    # Data before compilation: a missing task fails here, in seconds.
    if data_iterator is None:
        if task is None:
            raise settings.SettingError("train.task is not set (a seqio task or mixture name)")
        from mathft_jax.data.dataset import task_batches  # noqa: PLC0415 (seqio)
        data_iterator = task_batches(task, train_split, sequence_length, batch_size, seed, pack)
        if eval_every and eval_iterator_fn is None:
            eval_iterator_fn = lambda: task_batches(  # noqa: E731
                task, eval_split, sequence_length, batch_size, seed, pack, shuffle=False,
                num_epochs=1)

    schedule = learning_rate_schedule(train_steps=total_steps)
    optimizer = make_optimizer(schedule=schedule)
    abstract, shardings = abstract_state(cfg, optimizer, partitioner)
    mngr = checkpoints.manager(model_dir, keep_checkpoints, async_checkpoints)
    writer = MetricsWriter(model_dir)
    provenance.record(model_dir)  # config.gin: the operative config, as T5X keeps it
    # model.gin, vocab.gin, tokenizer/ (and an import's hf/): export needs nothing else
    model_files.write_model_files(model_dir, cfg, _task_vocabulary(task) if task else None,
                                  hf_side_dir=model_files.inherited_hf_dir(init_checkpoint))
    logging.info("model_dir %s: checkpoints in <step>/, metrics in metrics.jsonl and tb/, "
                 "operative config in config.gin", model_dir)

    flops = sizes.flops_per_token(cfg, sequence_length)
    peak = hardware.peak_flops_per_device() * jax.device_count()
    # Restore/init outside the mesh context: eval_shape and init trace the model eagerly,
    # where logical sharding constraints have nothing to constrain.
    state = _restore_or_init(mngr, cfg, optimizer, abstract, shardings, init_checkpoint,
                             seed, data_iterator, partitioner)
    start = int(state.step)
    with partitioner.context():
        step_fn = jit_train_step(cfg, optimizer, schedule, objective, micro_batches,
                                 partitioner, shardings)
        eval_fn = jax.jit(make_eval_step(cfg, objective))
        preemption.install()
        bar = distributed.progress_bar(progress, start, total_steps, "train", "step")
        last, preempted, step, pending = {}, False, start, None
        if _poll_preemption(start, 1):  # SIGTERM during start-up: no step ran, none to save
            logging.warning("SIGTERM before the first step: exiting at step %d", start)
            preempted, total_steps = True, start
        t_last = time.perf_counter()

        def report(step: int, metrics) -> dict:
            """Fetch one step's metrics (waiting for that step only), check them, log them."""
            nonlocal t_last
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not all(math.isfinite(v) for v in metrics.values()):
                raise NonFiniteLossError(
                    f"non-finite training metrics at step {step}: {metrics}; last good "
                    f"checkpoint: step {mngr.latest_step()} in {model_dir}")
            now = time.perf_counter()
            tokens_per_s = batch_size * sequence_length / max(now - t_last, 1e-9)
            t_last = now
            metrics.update(tokens_per_s=tokens_per_s, mfu=tokens_per_s * flops / peak)
            if step % log_every == 0 or step == total_steps:
                writer.write(step, metrics)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{tokens_per_s:,.0f}")
            return metrics

        try:
            for step in range(start + 1, total_steps + 1):
                batch = global_batch(next(data_iterator), partitioner)
                state, metrics = step_fn(state, batch)
                # Step `step` is queued; report the one before it meanwhile, so the host never
                # stalls the device. A step's own metrics are checked before its state is saved.
                if pending is not None:
                    last = report(*pending)
                pending = (step, metrics)
                saving = step % checkpoint_every == 0 and step != total_steps
                if eval_every and eval_iterator_fn and step % eval_every == 0:
                    writer.write(step, _evaluate(eval_fn, state.params, eval_iterator_fn(),
                                                 eval_steps, partitioner), prefix="eval")
                if _poll_preemption(step, preemption_check_every):
                    logging.warning("SIGTERM: saving a checkpoint at step %d and exiting", step)
                    preempted = saving = True
                if saving:
                    last, pending = report(*pending), None
                    _save(mngr, step, state, data_iterator)
                    writer.flush()
                if preempted:
                    break
            if pending is not None:
                last = report(*pending)
            if last or (start == total_steps and not preempted):
                _save(mngr, step, state, data_iterator)
        finally:
            mngr.wait_until_finished()
            mngr.close()
            writer.close()
            if bar is not None:
                bar.close()
    logging.info("finished at step %d (preempted=%s); checkpoints in %s", step, preempted, model_dir)
    return TrainResult(model_dir, start, step, preempted, last)


def _task_vocabulary(task: str):
    from mathft_jax.data import dataset
    return dataset.get_provider(task).output_features["targets"].vocabulary


def _poll_preemption(step: int, every: int) -> bool:
    """Whether any process got SIGTERM. One process checks every step (a flag read); several
    check every `every` steps, all at the same steps, since agreeing is a collective that
    waits for the device to drain."""
    if jax.process_count() > 1 and step % max(every, 1):
        return False
    return distributed.any_process(preemption.requested())


def _save(mngr, step, state, data_iterator) -> None:
    if mngr.latest_step() == step:
        return
    meta = {"step": int(step), "data": data_iterator.get_state()}
    checkpoints.save(mngr, step, state.params, state.opt_state, meta)


def _restore_or_init(mngr, cfg, optimizer, abstract, shardings, init_checkpoint, seed,
                     data_iterator, partitioner):
    from mathft_jax.training.trainer import TrainState
    latest = mngr.latest_step()
    if latest is not None:
        logging.info("resuming from step %d in %s", latest, mngr.directory)
        params, opt_state, meta = checkpoints.restore(mngr, latest, abstract.params, abstract.opt_state)
        data_iterator.set_state(meta["data"])
        step = jax.device_put(np.int32(meta["step"]), shardings.step)
        return TrainState(step=step, params=params, opt_state=opt_state)
    if init_checkpoint:
        logging.info("initialising parameters from %s (fresh optimizer)", init_checkpoint)
        params = checkpoints.load_params(init_checkpoint, cfg, partitioner)
        return init_state(cfg, optimizer, shardings, seed, params=params)
    return init_state(cfg, optimizer, shardings, seed)


def _evaluate(eval_fn, params, iterator, max_batches: int, partitioner) -> dict:
    totals = {}
    for i, batch in enumerate(iterator):
        if i >= max_batches:
            break
        sums = jax.device_get(eval_fn(params, global_batch(batch, partitioner)))
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    w = max(totals.pop("weight", 0.0), 1.0)
    return {k: v / w for k, v in totals.items()}


def main(argv):
    del argv
    entry.parse_gin_flags()
    result = train(TrainConfig())
    if result.preempted:
        logging.warning("preempted at step %d; rerun the same command to resume", result.final_step)

"""The training harness every learner runs in: SFT and DPO (`train.py`) and GRPO (`rl/loop.py`).

A learner (Tunix's word) supplies only what is its own: the objective, and `advance`, one
unit of work (a step of the trainer's batches; an iteration of GRPO's rollouts and steps)
given the harness's jitted step; plus the data position its checkpoints keep. The harness
owns the rest, identically for all of them:

- restore the latest checkpoint of `model_dir` (parameters, optimizer state, the learner's
  data position), else start fresh or from `init_checkpoint` (parameters only);
- with LoRA (`lora.rank` > 0): the state's parameters are the adapters; the base, loaded
  once from `init_checkpoint` (or lora.json on a resume, its content hash checked), is the
  step's third argument, frozen and never donated (models/lora.py, convert/lora_checkpoints.py);
- the jitted `trainer.make_train_step` with the state's shardings (the state donated);
- metrics: one unit's are fetched while the next one runs, checked (a non-finite value
  stops the run naming the unit; nothing after the last good unit is saved), written to
  metrics.jsonl / TensorBoard every `log_every` units and shown on the progress bar;
- SIGTERM (polled every unit, or every `preemption_check_every` on several processes):
  save and stop; a checkpoint every `checkpoint_every` units (async, the last K kept), and
  always at the end;
- the `finally` block that waits for pending saves and closes what it opened.

A checkpoint's step is the unit count; its meta is the learner's (`checkpoint_meta`) plus
`"step"`, the optimizer's step count.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mathft_jax.convert import checkpoints, lora_checkpoints
from mathft_jax.core import distributed, preemption, provenance, storage
from mathft_jax.core.metrics_writer import MetricsWriter
from mathft_jax.models import lora as lora_lib
from mathft_jax.models import partitioning, quantization
from mathft_jax.models.config import DecoderConfig
from mathft_jax.models.decoder import init_params
from mathft_jax.models.lora import LoraConfig
from mathft_jax.models.quantization import QuantConfig
from mathft_jax.training import hardware
from mathft_jax.training.optim import OptimizerConfig
from mathft_jax.training.trainer import (Objective, TrainState, abstract_state, init_state,
                                         jit_train_step)

Step = Callable[[TrainState, dict], tuple]  # (state, global batch) -> (state, metrics)


class NonFiniteLossError(FloatingPointError):
    pass


class Learner:
    """What a learner supplies; the defaults suit one that keeps no data position."""

    objective: Objective
    metrics_prefix: str = "train"  # metrics.jsonl keys are "<prefix>/<name>"
    # advance's metrics are device arrays: fetched while the next unit runs. False (host
    # floats already): reported as soon as the unit ends, so rows are stamped then.
    metrics_on_device: bool = True
    tokens_per_unit: int = 0  # > 0: tokens_per_s and mfu are reported
    flops_per_token: float = 0.0

    def advance(self, state: TrainState, step: Step) -> tuple[TrainState, dict]:
        """One unit of work: (new state, its metrics, on device or host)."""
        raise NotImplementedError

    def restore(self, meta: dict) -> None:
        """Resume: take the data position of a checkpoint's meta."""

    def checkpoint_meta(self, unit: int) -> dict:
        """What a checkpoint after `unit` keeps beside the state: the data position."""
        return {}

    def begin(self, harness: "Harness", state: TrainState, start: int) -> None:
        """Called once, after restore or init and before the first unit."""

    def after_unit(self, unit: int, state: TrainState, writer: MetricsWriter) -> None:
        """Called after each unit is queued (evaluation)."""

    def postfix(self, metrics: dict) -> dict:
        """The progress bar's figures of one unit."""
        return {"loss": f"{metrics['loss']:.4f}"}


@dataclasses.dataclass
class HarnessResult:
    start: int
    final: int
    preempted: bool
    last_metrics: dict


class Harness:
    """One run's model, optimizer, state layout and checkpoint directory (see the module
    docstring). `optimizer_steps`: the optimizer steps the whole run takes (the schedule's
    length unless bound apart)."""

    def __init__(self, *, model_dir: str, model: DecoderConfig, optimizer: OptimizerConfig,
                 optimizer_steps: int, partitioner: partitioning.Partitioner, seed: int,
                 init_checkpoint: Optional[str], keep_checkpoints: int,
                 async_checkpoints: bool, lora: LoraConfig = LoraConfig(),
                 quantize: QuantConfig = QuantConfig()):
        self.model_dir, self.model, self.partitioner = model_dir, model, partitioner
        self.seed, self.init_checkpoint = seed, init_checkpoint
        self.keep_checkpoints, self.async_checkpoints = keep_checkpoints, async_checkpoints
        self.optimizer, self.schedule = optimizer.build(optimizer_steps)
        self.lora = lora if lora.enabled else None
        self.quantize = quantize
        self.abstract, self.shardings = abstract_state(model, self.optimizer, partitioner,
                                                       self.lora)
        # LoRA: the frozen base (one copy, never donated) and the adapters a run goes on
        # training (lora.start='continue'); set by `_load_base` when the run starts.
        self.base, self._continued_adapters = None, None

    # ------------------------------------------------------------------ LoRA

    def _load_base(self) -> None:
        """The frozen base of a LoRA run: lora.json's on a resume (its hash checked), else
        from init_checkpoint, recorded in lora.json (convert/lora_checkpoints.py)."""
        init = self.init_checkpoint or self._seed_base()
        fresh, continued = lora_checkpoints.base_for(init, self.lora)
        base = lora_checkpoints.record_run(self.model_dir, self.lora, fresh)
        self._continued_adapters = continued
        self.base = quantization.quantize_base(
            lora_checkpoints.load_base(base, self.model, self.partitioner), self.model,
            self.quantize)

    def _base_shardings(self):
        """Where the step takes the base from: the parameters' shardings, or a quantized
        base's own (its quantized values and scales, placed where quantizing left them)."""
        if quantization.is_quantized(self.base):
            return jax.tree_util.tree_map(lambda x: x.sharding, self.base)
        return self.partitioner.param_shardings(self.model)

    def _seed_base(self) -> str:
        """Without init_checkpoint (tests, the smoke run's SSFT): the seed's fresh init,
        saved once as `<model_dir>/base`, is the base."""
        path = storage.join(self.model_dir, lora_checkpoints.SEED_BASE)
        if checkpoints.any_complete(path) is None:
            init = lambda rng: nn.unbox(init_params(self.model, rng))  # noqa: E731
            params = jax.jit(init, out_shardings=self.partitioner.param_shardings(self.model))(
                jax.random.PRNGKey(self.seed))
            checkpoints.save_params(path, params)
        return path

    def model_params(self, state: TrainState):
        """What the model samples and evaluates with: the state's parameters, or with LoRA
        the base with the state's adapters applied unmerged."""
        if self.lora is None:
            return state.params
        return lora_lib.adapted(self.base, state.params, self.lora, self.model)

    # ------------------------------------------------------------------ states

    def initial_state(self) -> TrainState:
        """The run's start: the seed's fresh init, or `init_checkpoint`'s parameters with a
        fresh optimizer."""
        if self.lora is not None:
            adapters = None
            if self._continued_adapters:
                logging.info("training the adapters of %s further", self._continued_adapters)
                adapters = lora_checkpoints.load_adapters(self._continued_adapters, self.lora,
                                                          self.model, self.partitioner)
            return init_state(self.model, self.optimizer, self.shardings, self.seed,
                              params=adapters, lora=self.lora)
        if not self.init_checkpoint:
            return init_state(self.model, self.optimizer, self.shardings, self.seed)
        logging.info("initialising parameters from %s (fresh optimizer)", self.init_checkpoint)
        params = checkpoints.load_params(self.init_checkpoint, self.model, self.partitioner)
        return init_state(self.model, self.optimizer, self.shardings, self.seed, params=params)

    def start_params(self, state: TrainState, start: int):
        """The parameters the run started from: a copy of `state`'s when it is the initial
        state (start 0; the step donates its buffers), else made or loaded again. With LoRA,
        the base itself (the adapters off), not a copy: memory holds one base."""
        if self.lora is not None:
            return self.base
        if start == 0:
            return jax.tree_util.tree_map(jnp.copy, state.params)
        if self.init_checkpoint:
            return checkpoints.load_params(self.init_checkpoint, self.model, self.partitioner)
        return init_state(self.model, self.optimizer, self.shardings, self.seed).params

    def _restore_or_init(self, mngr, learner: Learner) -> tuple[TrainState, int]:
        """(state, units done): the latest checkpoint's (the learner takes its meta), else
        the initial state's. Outside the mesh context: init traces the model eagerly."""
        latest = mngr.latest_step()
        if latest is None:
            return self.initial_state(), 0
        logging.info("resuming after unit %d in %s", latest, mngr.directory)
        params, opt_state, meta = checkpoints.restore(mngr, latest, self.abstract.params,
                                                      self.abstract.opt_state)
        learner.restore(meta)
        step = jax.device_put(np.int32(meta["step"]), self.shardings.step)
        return TrainState(step=step, params=params, opt_state=opt_state), latest

    # ------------------------------------------------------------------ the loop

    def run(self, learner: Learner, *, units: int, checkpoint_every: int, log_every: int,
            micro_batches: int = 1, preemption_check_every: int = 1, progress: bool = True,
            desc: str = "train", unit_name: str = "step") -> HarnessResult:
        """Run (or resume) `units` units of `learner` in model_dir."""
        mngr = checkpoints.manager(self.model_dir, self.keep_checkpoints, self.async_checkpoints)
        writer = MetricsWriter(self.model_dir)
        provenance.record(self.model_dir)  # config.gin: the operative config, as T5X keeps it
        peak = (hardware.peak_flops_per_device() * jax.device_count()
                if learner.tokens_per_unit else 0.0)
        bar = None
        try:
            if self.lora is not None:
                self._load_base()
            state, start = self._restore_or_init(mngr, learner)
            learner.begin(self, state, start)
            with self.partitioner.context():  # the program the planner compiles
                step_fn = jit_train_step(
                    self.model, self.optimizer, self.schedule, learner.objective,
                    micro_batches, self.partitioner, self.shardings, self.lora,
                    None if self.lora is None else self._base_shardings(),
                    self.seed)
            frozen = () if self.lora is None else (self.base,)

            def step(state: TrainState, batch: dict):
                with self.partitioner.context():
                    return step_fn(state, batch, *frozen)

            preemption.install()
            bar = distributed.progress_bar(progress, start, units, desc, unit_name)
            end, preempted = units, False
            if _poll_preemption(start, 1):  # SIGTERM during start-up: no unit ran, none to save
                logging.warning("SIGTERM before the first %s: exiting at %d", unit_name, start)
                end, preempted = start, True
            report = _Reporter(learner, writer, bar, units, log_every, peak, unit_name,
                               lambda: f"{mngr.latest_step()} in {self.model_dir}")
            last, unit, pending = {}, start, None
            for unit in range(start + 1, end + 1):
                state, metrics = learner.advance(state, step)
                # Unit `unit` is queued; report the one before it meanwhile, so the host never
                # stalls the device. A unit's own metrics are checked before its state is saved.
                if pending is not None:
                    last = report(*pending)
                pending = (unit, metrics)
                if not learner.metrics_on_device:
                    last, pending = report(*pending), None
                saving = unit % checkpoint_every == 0 and unit != units
                learner.after_unit(unit, state, writer)
                if _poll_preemption(unit, preemption_check_every):
                    logging.warning("SIGTERM: saving a checkpoint at %s %d and exiting",
                                    unit_name, unit)
                    preempted = saving = True
                if saving:
                    if pending is not None:
                        last, pending = report(*pending), None
                    _save(mngr, unit, state, learner)
                    writer.flush()
                if preempted:
                    break
            if pending is not None:
                last = report(*pending)
            if last or (start == units and not preempted):
                _save(mngr, unit, state, learner)
        finally:
            mngr.wait_until_finished()
            mngr.close()
            writer.close()
            if bar is not None:
                bar.close()
        logging.info("finished at %s %d (preempted=%s); checkpoints in %s", unit_name, unit,
                     preempted, self.model_dir)
        return HarnessResult(start, unit, preempted, last)


class _Reporter:
    """Fetch one unit's metrics (waiting for that unit only), check them, log them."""

    def __init__(self, learner: Learner, writer: MetricsWriter, bar, units: int,
                 log_every: int, peak_flops: float, unit_name: str, last_good: Callable):
        self.learner, self.writer, self.bar = learner, writer, bar
        self.units, self.log_every, self.peak_flops = units, log_every, peak_flops
        self.unit_name, self.last_good = unit_name, last_good
        self.t_last = time.perf_counter()

    def __call__(self, unit: int, metrics) -> dict:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not all(math.isfinite(v) for v in metrics.values()):
            raise NonFiniteLossError(
                f"non-finite training metrics at {self.unit_name} {unit}: {metrics}; last good "
                f"checkpoint: {self.unit_name} {self.last_good()}")
        now = time.perf_counter()
        if self.learner.tokens_per_unit:
            tokens_per_s = self.learner.tokens_per_unit / max(now - self.t_last, 1e-9)
            metrics.update(tokens_per_s=tokens_per_s,
                           mfu=tokens_per_s * self.learner.flops_per_token / self.peak_flops)
        self.t_last = now
        if unit % self.log_every == 0 or unit == self.units:
            self.writer.write(unit, metrics, prefix=self.learner.metrics_prefix)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(**self.learner.postfix(metrics))
        return metrics


def _poll_preemption(unit: int, every: int) -> bool:
    """Whether any process got SIGTERM. One process checks every unit (a flag read); several
    check every `every` units, all at the same units, since agreeing is a collective that
    waits for the device to drain."""
    if jax.process_count() > 1 and unit % max(every, 1):
        return False
    return distributed.any_process(preemption.requested())


def _save(mngr, unit: int, state: TrainState, learner: Learner) -> None:
    if mngr.latest_step() == unit:
        return
    meta = {**learner.checkpoint_meta(unit), "step": int(state.step)}
    checkpoints.save(mngr, unit, state.params, state.opt_state, meta)

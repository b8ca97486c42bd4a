"""The GRPO loop: `python -m mathft_jax.rl --gin_file=gin_configs/runs/grpo.gin ...`.

Each iteration k (1, 2, ...):
  1 rollout   the next P problems from the data position (epoch-seeded permutations of
              the problems), G completions each from `decoding.generate` (sample streams
              of those positions)
  2 reward    `rewards.compute_rewards` (grader correctness, format, custom; gin weights),
              plus evaluator_weight * S(X|P) of an SCR evaluator checkpoint where given.
              With `max_sampling_rounds` > 1 (DAPO's dynamic sampling), groups whose G
              rewards are all equal carry no gradient: steps 1-2 repeat on the next P
              problems until P groups with signal are found or the rounds run out
              (`choose_groups`; the rest of the batch is all-equal groups)
  3 advantage `grpo.group_advantages` over each prompt's G rewards
  4 old/ref   teacher-forced token log-probs of the rows under the policy that sampled
              (= pi_old) and, when kl_coef > 0, under the frozen reference
  5 update    `steps_per_iteration` steps of `trainer.make_train_step` with `grpo_objective`
              (micro-batches, sharding and optimizer as the trainer's); with `sft_weight`
              > 0 each step also takes the MLE of the next batch of reference solutions
              (`grpo.with_supervised`)
  6 log       reward, accuracy, KL, clip fraction, response length, entropy, ... to
              metrics.jsonl and TensorBoard (`MetricsWriter`, prefix `grpo/`)
  7 save      every `checkpoint_every` iterations and at the end: policy, optimizer state
              and {"iteration", "step", "seed", "position"} (checkpoint step = iteration;
              position: prompts consumed so far), and the solution batches' data position

Steps 1-6 are `_GrpoLearner.advance`, one unit of the training harness
(`training/harness.py`, shared with `train`), which restores, steps, logs, polls SIGTERM
and saves.

Exactly resumable: the prompts, the sampler's streams and everything after them are pure
functions of (seed, iteration, data position, state), so a run killed anywhere (SIGKILL
included) and rerun continues from its last checkpoint as if never stopped. The reference
is reloaded from its checkpoint (or re-created from the seed) and never saved. SIGTERM
saves and exits.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from typing import Callable, Optional, Sequence

import gin
import jax
import numpy as np
from absl import logging

from mathft_jax import grading
from mathft_jax.convert import lora_checkpoints
from mathft_jax.core import settings
from mathft_jax.models import partitioning
from mathft_jax.models.config import DecoderConfig
from mathft_jax.models.decoder import Decoder
from mathft_jax.models.lora import LoraConfig
from mathft_jax.models.quantization import QuantConfig
from mathft_jax.rl import grpo as grpo_lib, rewards as rewards_lib, rollout as rollout_lib
from mathft_jax.scoring import evaluator
from mathft_jax.training.harness import Harness, Learner
from mathft_jax.training.optim import OptimizerConfig


@dataclasses.dataclass
class GrpoResult:
    model_dir: str
    start_iteration: int
    final_iteration: int
    preempted: bool
    last_metrics: dict


def iteration_seed(seed: int, iteration: int) -> int:
    """The sampler's seed for an iteration (its streams are further split by prompt position)."""
    return int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0] % (2 ** 31))


@gin.configurable("grpo")
@dataclasses.dataclass(frozen=True)
class GrpoConfig:
    """One GRPO run's settings, bound in gin as `grpo.<field>` (the pipeline's grpo stage and
    `python -m mathft_jax.rl` make it in gin scope `grpo`, so `grpo/learning_rate_schedule.*`
    and `grpo/make_optimizer.*` set its optimizer). model and optimizer are typed configs
    made from gin in the scope the GrpoConfig is made in (`DecoderConfig.*`,
    `make_optimizer.*`, `learning_rate_schedule.*`); `grpo(config)` reads neither again.
    The schedule's length defaults to iterations * steps_per_iteration.

    init_checkpoint: the policy's start (the SSFT checkpoint); reference_checkpoint: the KL
    anchor (default: init_checkpoint; with neither, both are the seed's fresh init, for tests).
    Problems: `sources.problem_records(task, split, problems_file)`, those with a gold answer,
    the first `max_problems`. Log-probs, ratios, KL and entropy are those of
    softmax(logits / temperature), the distribution sampled; top_k / top_p truncate it
    unmodelled (keep them off). grader: who judges the `correct` reward (grading.GRADERS;
    the pipeline's grpo stage sets it to `pipeline.grader`). Dr. GRPO: scale_std=False and
    `grpo_objective.normalization = 'constant'`. max_sampling_rounds: rollouts of
    prompts_per_iteration problems an iteration may take to fill its batch with groups whose
    rewards differ (1: no dynamic sampling). sft_weight > 0: every policy step also
    minimises sft_weight x the mean token loss (`lm_objective`'s) of the next
    `sft_batch_size` packed `sequence_length` rows of reference solutions of `sft_task`
    (default: `task`; the pipeline's grpo stage sets its SSFT task), split `split`
    (single-stage SFT + RL, `grpo.with_supervised`); one micro-batch. length_bucket: the
    rollout rows are trained cut to their longest row, rounded up to a multiple of this
    (`rollout.trim_rows`; metric `row_length`); 0 trains whole `sequence_length` rows.
    """

    model_dir: Optional[str] = None
    init_checkpoint: Optional[str] = None
    reference_checkpoint: Optional[str] = None
    task: str = "synthetic_arith_steps"
    split: str = "train"
    problems_file: Optional[str] = None
    max_problems: Optional[int] = None
    iterations: int = 100
    prompts_per_iteration: int = 8
    num_generations: int = 8
    max_decode_len: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    sequence_length: int = 512
    steps_per_iteration: int = 1
    max_sampling_rounds: int = 1
    micro_batches: int = 1
    kl_coef: float = 0.04
    scale_std: bool = True
    evaluator_checkpoint: Optional[str] = None
    evaluator_weight: float = 0.0
    grader: str = "mathft"
    objective: Callable = grpo_lib.grpo_objective
    seed: int = 0
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    async_checkpoints: bool = True
    log_every: int = 1
    sft_weight: float = 0.0
    sft_task: Optional[str] = None
    sft_batch_size: int = 16
    length_bucket: int = 64
    model: DecoderConfig = dataclasses.field(default_factory=DecoderConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)  # rank 0: full FT
    # QLoRA: the frozen base stored and computed quantized (`quantize_base.*`)
    quantize: QuantConfig = dataclasses.field(default_factory=QuantConfig)

    def validate(self) -> "GrpoConfig":
        """Raise SettingError naming the binding; needs no model, mesh or data."""
        settings.check("grpo", iterations=(self.iterations, 0),
                       prompts_per_iteration=self.prompts_per_iteration,
                       num_generations=self.num_generations, max_decode_len=self.max_decode_len,
                       sequence_length=self.sequence_length,
                       steps_per_iteration=self.steps_per_iteration,
                       max_sampling_rounds=self.max_sampling_rounds,
                       micro_batches=self.micro_batches, checkpoint_every=self.checkpoint_every,
                       keep_checkpoints=self.keep_checkpoints, log_every=self.log_every,
                       top_k=(self.top_k, 0), max_problems=self.max_problems,
                       sft_batch_size=self.sft_batch_size,
                       length_bucket=(self.length_bucket, 0))
        settings.check_real("grpo", "kl_coef", self.kl_coef, 0.0, math.inf)
        settings.check_real("grpo", "temperature", self.temperature, 0.0, math.inf,
                            low_open=True)
        settings.check_real("grpo", "evaluator_weight", self.evaluator_weight, -math.inf,
                            math.inf)
        settings.check_real("grpo", "sft_weight", self.sft_weight, 0.0, math.inf)
        if self.sft_weight and self.micro_batches > 1:
            raise settings.SettingError(
                f"grpo.sft_weight={self.sft_weight} takes one micro-batch (the solution rows "
                f"are normalised over the whole batch); grpo.micro_batches={self.micro_batches}")
        if not self.model_dir:
            raise settings.SettingError("grpo.model_dir is not set")
        try:
            grading.get_grader(self.grader)
        except ValueError as error:
            raise settings.SettingError(f"grpo.grader: {error}") from None
        if self.sequence_length <= self.max_decode_len:
            raise settings.SettingError(
                f"grpo.sequence_length={self.sequence_length} leaves no room for a prompt "
                f"beside grpo.max_decode_len={self.max_decode_len}")
        self.model.validate()
        self.lora.validate(self.model)
        self.quantize.validate().check_frozen(self.lora)
        if self.sequence_length > self.model.max_seq_len:
            raise settings.SettingError(f"grpo.sequence_length={self.sequence_length} exceeds "
                                        f"DecoderConfig.max_seq_len={self.model.max_seq_len}")
        return self


def grpo(config: Optional[GrpoConfig] = None, *, mesh_fn: Callable = partitioning.make_mesh,
         vocabulary=None, problems: Optional[Sequence[dict]] = None, solutions=None,
         progress: bool = True, **fields) -> GrpoResult:
    """Run (or resume) GRPO in `config.model_dir`; see the module docstring.

    config: the run's settings (default: `GrpoConfig()` from gin, in the current gin scope);
    `fields` replace some of them (`model=DecoderConfig(...)`). The keyword-only arguments
    are hooks, not configuration: the mesh, the vocabulary (default gin's
    `get_vocabulary()`), the problems in place of the task's, the solution batches in place
    of `sft_task`'s (an iterator of row dicts with `get_state`/`set_state`), the progress bar.
    """
    config = settings.resolve(GrpoConfig, config, **fields)
    partitioner = partitioning.Partitioner.create(config.model, mesh_fn())
    rows = config.prompts_per_iteration * config.num_generations
    if rows % (config.micro_batches * partitioner.batch_shards):
        raise settings.SettingError(
            f"grpo: prompts_per_iteration * num_generations = {rows} rows must split into "
            f"micro_batches={config.micro_batches} of rows divisible by the mesh's data*fsdp="
            f"{partitioner.batch_shards}")
    if config.sft_weight and config.sft_batch_size % partitioner.batch_shards:
        raise settings.SettingError(
            f"grpo.sft_batch_size={config.sft_batch_size} must be divisible by the mesh's "
            f"data*fsdp={partitioner.batch_shards}")
    if problems is None:
        from mathft_jax.data import sources  # noqa: PLC0415
        problems = sources.problem_records(config.task, config.split, config.problems_file,
                                           setting="grpo")
        problems = sources.first(problems, config.max_problems, "grpo.max_problems")
    if not problems:
        raise settings.SettingError("grpo: no problems to train on (grpo.task, grpo.split, "
                                    "grpo.problems_file)")
    if vocabulary is None:
        from mathft_jax.data import vocab as vocab_lib  # noqa: PLC0415
        vocabulary = vocab_lib.get_vocabulary()
    if not config.sft_weight:
        solutions = None
    elif solutions is None:
        solutions = _solution_batches(config)
    harness = Harness(model_dir=config.model_dir, model=config.model,
                      optimizer=config.optimizer,
                      optimizer_steps=config.iterations * config.steps_per_iteration,
                      partitioner=partitioner, seed=config.seed,
                      init_checkpoint=config.init_checkpoint,
                      keep_checkpoints=config.keep_checkpoints,
                      async_checkpoints=config.async_checkpoints, lora=config.lora,
                      quantize=config.quantize)
    learner = _GrpoLearner(config, partitioner, vocabulary, problems, solutions)
    result = harness.run(learner, units=config.iterations,
                         checkpoint_every=config.checkpoint_every, log_every=config.log_every,
                         micro_batches=config.micro_batches, progress=progress, desc="grpo",
                         unit_name="iteration")
    return GrpoResult(config.model_dir, result.start, result.final, result.preempted,
                      result.last_metrics)


class _GrpoLearner(Learner):
    """GRPO as a learner of the harness: a unit is an iteration (rollouts, rewards, then
    `steps_per_iteration` steps of `grpo_objective`); its checkpoints keep the data position
    (prompts consumed), the seed and the solution batches' position."""

    metrics_prefix = "grpo"
    metrics_on_device = False  # an iteration's metrics come back to the host to be combined

    def __init__(self, config: GrpoConfig, partitioner: partitioning.Partitioner, vocabulary,
                 problems: Sequence[dict], solutions):
        self.config, self.partitioner, self.vocabulary = config, partitioner, vocabulary
        self.problems, self.solutions = problems, solutions
        self.weights = rewards_lib.reward_weights()
        self.start_id = evaluator.decoder_start_id(vocabulary)
        self.sampling = rollout_lib.sampling_params(
            config.num_generations, config.max_decode_len, config.temperature, config.top_k,
            config.top_p, vocabulary.eos_id)
        self.evaluator_params = (
            lora_checkpoints.load_model(config.evaluator_checkpoint, config.model, partitioner)
            if config.evaluator_checkpoint and config.evaluator_weight else None)
        loss = functools.partial(config.objective, kl_coef=config.kl_coef,
                                 temperature=config.temperature)
        self.objective = (grpo_lib.with_supervised(loss, config.sft_weight)
                          if config.sft_weight else loss)
        with partitioner.context():
            self.stats_fn = jax.jit(functools.partial(
                grpo_lib.policy_token_stats, Decoder(config.model),
                temperature=config.temperature))
        self.position, self.iteration, self.reference = 0, 0, None

    # ------------------------------------------------------------------ the harness's hooks

    def restore(self, meta: dict) -> None:
        """The data position of a checkpoint, checked against this run's settings."""
        config, directory = self.config, self.config.model_dir
        if meta.get("seed") is not None and meta["seed"] != config.seed:
            raise settings.SettingError(f"grpo.seed={config.seed} but {directory} was run with "
                                        f"seed {meta['seed']}")
        # checkpoints from before dynamic sampling hold no position: P prompts an iteration
        self.position = int(meta.get("position",
                                     int(meta["iteration"]) * config.prompts_per_iteration))
        if self.solutions is not None:
            if "sft_data" not in meta:
                raise settings.SettingError(
                    f"grpo.sft_weight > 0 but {directory} was run without it (its "
                    "checkpoint holds no solution data position)")
            self.solutions.set_state(meta["sft_data"])
        elif "sft_data" in meta:
            raise settings.SettingError(
                f"grpo.sft_weight=0 but {directory} was run with a supervised term (its "
                "checkpoint holds a solution data position): set grpo.sft_weight as it was")

    def checkpoint_meta(self, unit: int) -> dict:
        meta = {"iteration": unit, "seed": self.config.seed, "position": self.position}
        if self.solutions is not None:
            meta["sft_data"] = self.solutions.get_state()
        return meta

    def begin(self, harness: Harness, state, start: int) -> None:
        """The frozen KL anchor: reference_checkpoint, else the policy's start (with LoRA the
        base itself, the adapters off: one base in memory)."""
        self.iteration, self.harness = start, harness
        if not self.config.kl_coef:
            return
        if self.config.reference_checkpoint:
            self.reference = lora_checkpoints.load_model(self.config.reference_checkpoint,
                                                         self.config.model, self.partitioner)
        else:
            self.reference = harness.start_params(state, start)

    def postfix(self, metrics: dict) -> dict:
        return {"reward": f"{metrics['reward']:.3f}", "acc": f"{metrics['accuracy']:.3f}"}

    def advance(self, state, step):
        """One iteration: rollouts until the batch is full (dynamic sampling), then steps."""
        config, partitioner = self.config, self.partitioner
        self.iteration += 1
        timer = _Timer()
        rounds, with_signal = [], 0
        for _ in range(config.max_sampling_rounds):
            rounds.append(self._sample_round(self.harness.model_params(state), timer))
            self.position += config.prompts_per_iteration
            with_signal += int(_has_signal(rounds[-1].reward).sum())
            if with_signal >= config.prompts_per_iteration:
                break
        chosen = choose_groups([r.reward for r in rounds], config.prompts_per_iteration)
        rows = rollout_lib.trim_rows(
            _stack_groups([r.rows for r in rounds], chosen, config.num_generations),
            config.length_bucket)
        reward = np.concatenate([r.reward for r in rounds])
        parts = {k: np.concatenate([r.parts[k] for r in rounds]) for k in rounds[0].parts}
        batch_reward = np.stack([rounds[r].reward[i] for r, i in chosen])
        with timer("train"):
            batch = _training_batch(rows, batch_reward, config.scale_std,
                                    self.harness.model_params(state),
                                    self.reference, self.stats_fn, partitioner,
                                    config.sequence_length)
            entropy = float(batch.pop("entropy_mean"))
            batch = {k: partitioner.to_global(v) for k, v in batch.items()}
            step_metrics = []
            for _ in range(config.steps_per_iteration):
                state, m = step(state, _with_solutions(batch, self.solutions, partitioner))
                step_metrics.append(m)
            step_metrics = [{k: float(v) for k, v in jax.device_get(m).items()}
                            for m in step_metrics]
        metrics = _iteration_metrics(reward, batch_reward, parts,
                                     np.concatenate([r.lengths for r in rounds]),
                                     entropy, step_metrics, timer.seconds)
        metrics["row_length"] = float(rows["decoder_segment_ids"].shape[1])  # after trimming
        return state, metrics

    # ------------------------------------------------------------------ one rollout

    def _sample_round(self, params, timer) -> "_Round":
        """Rollouts and rewards of the P problems at data positions position .. + P - 1."""
        config, first = self.config, self.position
        count = config.prompts_per_iteration
        index = rollout_lib.problem_indices(len(self.problems), config.seed, first, count)
        batch_problems = [self.problems[i] for i in index]
        with timer("sample"):
            roll = rollout_lib.rollout_batch(
                params, config.model, self.vocabulary, batch_problems, self.sampling,
                seed=iteration_seed(config.seed, self.iteration),
                prompt_ids=np.arange(first, first + count),
                sequence_length=config.sequence_length, start_id=self.start_id,
                partitioner=self.partitioner)
        with timer("reward"):
            reward, parts = rewards_lib.compute_rewards(batch_problems, roll.texts, self.weights,
                                                        config.grader)
            if self.evaluator_params is not None:
                parts["evaluator"] = np.stack(evaluator.score_groups(
                    self.evaluator_params, config.model, self.vocabulary,
                    [p["problem"] for p in batch_problems], roll.texts,
                    partitioner=self.partitioner, start_id=self.start_id))
                reward = reward + config.evaluator_weight * parts["evaluator"]
        return _Round(roll.batch, reward, parts, roll.lengths)


@dataclasses.dataclass
class _Round:
    """One rollout of P problems: rows [P * G, L] (prompt-major), rewards [P, G], the reward
    parts by name [P, G], completion lengths [P, G]."""
    rows: dict
    reward: np.ndarray
    parts: dict
    lengths: np.ndarray


def _has_signal(reward: np.ndarray) -> np.ndarray:
    """[groups, G] -> [groups]: whether a group's rewards differ (zero advantages if not)."""
    return reward.max(axis=-1) > reward.min(axis=-1)


def choose_groups(rewards: Sequence[np.ndarray], count: int) -> list:
    """The (round, group) pairs of an iteration's batch of `count` groups, from its rounds of
    rewards [groups, G]: groups whose rewards differ first, all-equal groups filling the
    rest, in the order they were sampled. One round of `count` groups is all of it, in order
    (no dynamic sampling); surplus groups of a last round are dropped (as DAPO's)."""
    order = [(r, i) for r, reward in enumerate(rewards) for i in range(len(reward))]
    if len(order) < count:
        raise ValueError(f"{len(order)} groups sampled, {count} needed")
    signal = {(r, int(i)) for r, reward in enumerate(rewards)
              for i in np.flatnonzero(_has_signal(reward))}
    keep = [g for g in order if g in signal][:count]
    keep += [g for g in order if g not in signal][:count - len(keep)]
    return sorted(keep)


def _stack_groups(rows: Sequence[dict], chosen: list, g: int) -> dict:
    """The training rows of the chosen (round, group) pairs, G rows a group, in order."""
    return {k: np.concatenate([rows[r][k][i * g:(i + 1) * g] for r, i in chosen])
            for k in rows[0]}


def _solution_batches(config: GrpoConfig):
    """The reference solutions' packed rows (`sft_task`, default `task`), read as the
    trainer reads its task."""
    from mathft_jax.data.dataset import task_batches  # noqa: PLC0415 (seqio)
    return task_batches(config.sft_task or config.task, config.split, config.sequence_length,
                        config.sft_batch_size, config.seed, pack=True, setting="grpo.sft_task")


def _with_solutions(batch: dict, solutions, partitioner: partitioning.Partitioner) -> dict:
    """The step's batch: the rollout's rows, plus the next solution rows under `sft/` keys."""
    if solutions is None:
        return batch
    rows = next(solutions)
    return {**batch, **{grpo_lib.SUPERVISED + k: partitioner.to_global(v)
                        for k, v in rows.items()}}


def _training_batch(rows: dict, reward: np.ndarray, scale_std: bool, params, reference,
                    stats_fn, partitioner: partitioning.Partitioner, full_length: int) -> dict:
    """The rollout rows plus advantages, the sampling policy's token log-probs (teacher
    forced: one pass) and the reference's, and the rows' length before trimming
    (`full_length`, Dr. GRPO's constant); `entropy_mean` rides along for the metrics."""
    batch = dict(rows)
    batch["advantages"] = np.asarray(
        grpo_lib.group_advantages(reward, scale_std), np.float32).reshape(-1)
    batch["full_length"] = np.full(len(batch["advantages"]), full_length, np.float32)
    device_rows = {k: partitioner.to_global(v) for k, v in rows.items()}
    with partitioner.context():
        old, entropy = stats_fn(params, device_rows)
        batch["old_log_probs"] = partitioner.to_host(old)
        if reference is not None:
            batch["ref_log_probs"] = partitioner.to_host(stats_fn(reference, device_rows)[0])
    mask = rows["decoder_loss_weights"]
    batch["entropy_mean"] = float(partitioner.to_host(entropy).sum() / max(mask.sum(), 1))
    return batch


def _iteration_metrics(reward, batch_reward, parts, lengths, entropy, steps: list,
                       seconds: dict) -> dict:
    """reward, parts, lengths: of every group sampled; batch_reward: of the batch trained on."""
    first, tokens = steps[0], max(steps[0]["tokens"], 1e-9)
    out = {"reward": float(reward.mean()),
           "reward_std": float(reward.std(axis=-1).mean()),
           "accuracy": float(parts["correct"].mean()),
           "groups_all_same": float(1.0 - _has_signal(reward).mean()),
           "prompts_sampled": float(reward.shape[0]),
           "batch_groups_with_signal": float(_has_signal(batch_reward).mean()),
           "response_length": float(lengths.mean()),
           "entropy": entropy,
           # KL to the reference under the policy before this iteration's update
           "kl": first["token_kl"] / tokens,
           "clip_fraction": float(np.mean([m["token_clipped"] / max(m["tokens"], 1e-9)
                                           for m in steps])),
           "loss": float(np.mean([m["loss"] for m in steps])),
           "grad_norm": float(np.mean([m["grad_norm"] for m in steps])),
           "learning_rate": steps[-1]["learning_rate"]}
    if "sft_xent" in first:
        out["sft_xent"] = float(np.mean([m["sft_xent"] for m in steps]))
    out.update({f"reward_{k}": float(v.mean()) for k, v in parts.items()})
    out.update({f"seconds_{k}": v for k, v in seconds.items()})
    return out


class _Timer:
    """Wall seconds per phase of one iteration (sampling, grading, training)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def main(argv):
    del argv
    from mathft_jax.core import entry  # noqa: PLC0415
    entry.parse_gin_flags()
    with gin.config_scope("grpo"):  # the scope the pipeline's grpo stage runs in
        result = grpo()
    if result.preempted:
        logging.warning("preempted at iteration %d; rerun the same command to resume",
                        result.final_iteration)

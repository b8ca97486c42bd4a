"""Each pipeline stage's device programs, lowered as the run lowers them, on abstract inputs.

A stage's settings are the pipeline's own (`pipeline.STAGES[stage].configs`: the TrainConfig,
GrpoConfig or InferConfig built in the stage's gin scope), and each program is the
project's function jitted as its loop jits it, lowered inside the stage's gin scope (the
objective, optimizer and schedule read their bindings there) and the partitioner's context:

  ssft, scr, mtsf, dpo   trainer.jit_train_step with the stage's objective, micro_batches,
                         optimizer and schedule, on batch_size x sequence_length rows
  grpo                   the same with GRPO's objective on prompts x G rollout rows; the
                         rollout (decoding.generate_tokens); the policy's teacher-forced
                         token log-probs (rl.grpo.policy_token_stats)
  sample_train/_eval     the engine's prefill into its pool and decode chunk, at infer's
                         slots, N and max_decode_len, with its KV cache (continuous); or
                         decoding.generate_tokens (static)
  score                  scoring.evaluator.label_logprobs (an evaluator's label) or the likelihood
                         scorer's row log-likelihoods, at score_records.batch_size
  dpo_data               the reference's row log-likelihoods (likelihood.py) of DPO's rows

Prompts are `prompt_len` tokens (MATH's problems fit in 512 at 4 characters a token);
a scored context is a prompt and a whole sample. Host-only stages (scr_data, evaluate)
have no program.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import gin
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mathft_jax.data import packing
from mathft_jax.models import sizes
from mathft_jax.models.config import DecoderConfig
from mathft_jax.models.decoder import Decoder, init_cache
from mathft_jax.models.layers import CACHE_BLOCK
from mathft_jax.models.partitioning import BATCH_AXES, Partitioner
from mathft_jax.rl import grpo as grpo_lib
from mathft_jax.sampling import decoding, engine
from mathft_jax.sampling.batching import bucket_length, rows_for
from mathft_jax.scoring import evaluator, likelihood
from mathft_jax.training.optim import learning_rate_schedule, make_optimizer
from mathft_jax.models.lora import LoraConfig
from mathft_jax.training.trainer import abstract_state, jit_train_step

HOST_ONLY = ("scr_data", "evaluate")


@dataclasses.dataclass
class Program:
    """One device program of a stage: how to lower it, and its analytic size per call."""
    stage: str
    name: str
    lower: Lowering  # () -> jax.stages.Lowered
    tokens: int  # tokens it processes per call, all chips
    model_flops: float  # analytic FLOPs per call, all chips (models.sizes)
    training: bool  # forward and backward (else forward only)
    # Trip counts of loops that depend on the data, by a piece of their op name
    # (hlo.Module.multiplicities): a decode loop's steps, the cache blocks attention reads.
    loop_trips: dict = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.stage}/{self.name}"


def abstract_batch(partitioner: Partitioner, rows: int, length: int, row_features=None,
                   float_features=()) -> dict:
    """ShapeDtypeStructs of a batch as `Partitioner.to_global` lays it out: packing's int32
    [rows, length] features, per-row features ({name: dtype}, [rows]) and float32
    [rows, length] ones, rows split over (data, fsdp)."""
    batch = {k: _sharded(partitioner, (rows, length), jnp.int32) for k in packing.FEATURES}
    for k, dtype in (row_features or {}).items():
        batch[k] = _sharded(partitioner, (rows,), dtype)
    for k in float_features:
        batch[k] = _sharded(partitioner, (rows, length), jnp.float32)
    return batch


def unpacked_row_features() -> dict:
    """The per-row features of unpacked rows (evaluator and preference tasks), as
    `data.dataset` adds them: int32, float32 where the padding is a float."""
    return {k: jnp.float32 if isinstance(pad, float) else jnp.int32
            for k, pad in packing.ROW_FEATURES.items()}


@dataclasses.dataclass
class Lowering:
    """A jitted function and the abstract arguments it is called with; calling it lowers
    in the stage's gin scope (objectives, optimizer and schedule read their bindings there)
    and the partitioner's context."""
    partitioner: Partitioner
    scope: str
    jitted: Callable
    args: tuple

    def __call__(self):
        with gin.config_scope(self.scope), self.partitioner.context():
            return self.jitted.lower(*self.args)

    @property
    def input_bytes(self) -> int:
        """Bytes of the arguments on one device, as the run places them: every argument,
        those the compiled program leaves unused included (it allocates them all); one
        given without a sharding is whole on every device (jit replicates it)."""
        def shard_shape(x):
            return x.shape if x.sharding is None else x.sharding.shard_shape(x.shape)
        return sum(int(np.prod(shard_shape(x))) * np.dtype(x.dtype).itemsize
                   for x in jax.tree_util.tree_leaves(self.args))


def _lowering(partitioner: Partitioner, scope: str, jitted, *args) -> Lowering:
    return Lowering(partitioner, scope, jitted, args)


def train_program(stage: str, cfg: DecoderConfig, partitioner: Partitioner, objective,
                  micro_batches: int, train_steps: int, rows: int, length: int,
                  row_features=None, float_features=(), name: str = "train_step") -> Program:
    """A training step as `train.train` (or the GRPO loop) compiles it."""
    with gin.config_scope(stage):
        schedule = learning_rate_schedule(train_steps=train_steps)
        optimizer = make_optimizer(schedule=schedule)
        lora = LoraConfig()  # with a rank: the adapters train, the base is a frozen argument
        abstract, shardings = abstract_state(cfg, optimizer, partitioner, lora)
    frozen = (partitioner.param_targets(cfg),) if lora.enabled else ()
    step = jit_train_step(cfg, optimizer, schedule, objective, micro_batches, partitioner,
                          shardings, lora,
                          partitioner.param_shardings(cfg) if lora.enabled else None)
    lower = _lowering(partitioner, stage, step, abstract,
                      abstract_batch(partitioner, rows, length, row_features, float_features),
                      *frozen)
    tokens = rows * length
    return Program(stage, name, lower, tokens, sizes.flops_per_token(cfg, length) * tokens, True)


def abstract_params(cfg: DecoderConfig, partitioner: Partitioner):
    """The parameters as a sampling or scoring stage loads them (`load_params` places them
    at `param_targets`)."""
    return partitioner.param_targets(cfg)


def _forward_flops(cfg: DecoderConfig, context: int) -> float:
    """Forward FLOPs of one token with `context` keys: a third of training's (models.sizes)."""
    return sizes.flops_per_token(cfg, context) / 3


def _replicated(partitioner: Partitioner, shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=partitioner.replicated)


def _sharded(partitioner: Partitioner, shape, dtype):
    spec = P(BATCH_AXES, *([None] * (len(shape) - 1)))
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(partitioner.mesh, spec))


def _scalars(partitioner: Partitioner):
    """seed int32, temperature and top_p float32: the samplers' traced scalars."""
    return (_replicated(partitioner, (), jnp.int32), _replicated(partitioner, (), jnp.float32),
            _replicated(partitioner, (), jnp.float32))


@dataclasses.dataclass(frozen=True)
class Sampling:
    """What shapes a sampler's programs: `InferConfig`'s fields of the same names, or a GRPO
    rollout's (`decoding.generate` on prompts_per_iteration prompts, G samples each)."""
    engine: str
    batch_size: int
    num_samples: int
    max_decode_len: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    slots: int = 0
    chunk: int = engine.DEFAULT_CHUNK

    @classmethod
    def of(cls, infer) -> "Sampling":
        return cls(**{f.name: getattr(infer, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def rollout(cls, grpo) -> "Sampling":
        return cls("static", grpo.prompts_per_iteration, grpo.num_generations,
                   grpo.max_decode_len, grpo.temperature, grpo.top_k, grpo.top_p)


def sampling_programs(stage: str, cfg: DecoderConfig, partitioner: Partitioner,
                      infer: Sampling, prompt_len: int) -> list[Program]:
    """A sampling stage's programs at its settings."""
    sp = decoding.SamplingParams(infer.num_samples, infer.max_decode_len, infer.temperature,
                                 infer.top_k, infer.top_p).validate().static()
    n, width = infer.num_samples, bucket_length(prompt_len)
    params = abstract_params(cfg, partitioner)
    shards = partitioner.batch_shards
    context = width + infer.max_decode_len
    if infer.engine == "static":
        rows = rows_for(infer.batch_size, shards, per_row=n)
        split = (_sharded if rows % shards == 0 else _replicated)
        fn = jax.jit(functools.partial(decoding.generate_tokens, cfg=cfg, sp=sp))
        args = (params, split(partitioner, (rows, width), jnp.int32),
                split(partitioner, (rows,), jnp.int32),
                _sharded(partitioner, (rows * n,), jnp.int32), *_scalars(partitioner))
        tokens = rows * n * infer.max_decode_len
        trips = {"_cache_attention": _cache_blocks(context), "": infer.max_decode_len}
        return [Program(stage, "generate", _lowering(partitioner, stage, fn, *args), tokens,
                        _forward_flops(cfg, context) * (tokens + rows * width), False, trips)]
    slots = infer.slots or infer.batch_size * n
    engine.check_slots(slots, partitioner)
    capacity = decoding.cache_length(width, infer.max_decode_len)
    group_rows = rows_for(infer.batch_size, shards, per_row=n)
    pool_groups = -(-slots // (infer.batch_size * n)) + 2  # as engine.stream, many problems
    ucfg = cfg.replace(scan_layers=False)
    cache_structs = functools.partial(_cache_structs, ucfg, partitioner)
    split = _sharded if group_rows % shards == 0 else _replicated
    prefill = engine.compiled("prefill", cfg)
    prefill_args = (params, cache_structs(pool_groups * group_rows, width, sharded=False),
                    split(partitioner, (group_rows, width), jnp.int32),
                    _replicated(partitioner, (group_rows,), jnp.int32))
    chunk = engine.compiled("chunk", cfg, sp=sp, chunk=infer.chunk)
    per_slot = [_sharded(partitioner, (slots,), dtype) for dtype in
                (jnp.int32, jnp.int32, jnp.int32, jnp.int32, jnp.int32, jnp.bool_, jnp.float32)]
    chunk_args = (params, cache_structs(slots, capacity, sharded=True), *per_slot,
                  *_scalars(partitioner))
    decode_tokens = slots * infer.chunk
    return [Program(stage, "prefill", _lowering(partitioner, stage, prefill, *prefill_args),
                    group_rows * width, _forward_flops(cfg, width) * group_rows * width, False),
            Program(stage, "decode_chunk", _lowering(partitioner, stage, chunk, *chunk_args),
                    decode_tokens, _forward_flops(cfg, context) * decode_tokens, False,
                    {"_cache_attention": _cache_blocks(capacity), "": infer.chunk})]


def _cache_blocks(length: int) -> int:
    """Blocks of a KV cache attention reads at most (layers.CACHE_BLOCK slots each): the
    data-dependent loop's trip count when the cache is full, an upper bound."""
    return -(-length // CACHE_BLOCK)


def _cache_structs(cfg: DecoderConfig, partitioner: Partitioner, rows: int, length: int,
                   sharded: bool):
    """A KV cache's ShapeDtypeStructs (`init_cache`'s structure), laid out by the cache's
    logical axes (sharded) or whole on every chip (the engine's prefill pool)."""
    shapes = jax.eval_shape(lambda: init_cache(cfg, rows, length))
    if not sharded:
        return jax.tree_util.tree_map(lambda x: _replicated(partitioner, x.shape, x.dtype), shapes)
    with partitioner.context():
        shardings = jax.tree_util.tree_map(
            lambda x: x.sharding, jax.eval_shape(
                jax.jit(lambda: decoding.constrain_cache(init_cache(cfg, rows, length), cfg))))
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


def score_programs(cfg: DecoderConfig, partitioner: Partitioner, infer: Sampling,
                   prompt_len: int) -> list[Program]:
    """The score stage: an evaluator's labels, or the likelihood scorer, over contexts of a
    prompt and a whole sample."""
    with gin.config_scope("score"):
        batch_size = _binding("score_records.batch_size", 64)
        method = _binding("score_records.method", "label")
        loss_chunk = _binding("score_records.loss_chunk", 0)
    context = bucket_length(bucket_length(prompt_len) + infer.max_decode_len)
    params = abstract_params(cfg, partitioner)
    rows = rows_for(batch_size, partitioner.batch_shards)
    if method == "likelihood":
        fn = likelihood.compiled(cfg, loss_chunk)
        args = (params, abstract_batch(partitioner, rows, context))
        name = "row_log_likelihoods"
    else:
        # The labels' token ids do not shape the program, their lengths do: " correct" and
        # " incorrect" are a token or two in the shipped vocabularies.
        fn = evaluator.compiled_label_logprobs(cfg, ((1,), (1, 2)))
        args = (params, _sharded(partitioner, (rows, context), jnp.int32),
                _sharded(partitioner, (rows,), jnp.int32))
        name = "label_logprobs"
    return [Program("score", name, _lowering(partitioner, "score", fn, *args), rows * context,
                    _forward_flops(cfg, context) * rows * context, False,
                    {"_cache_attention": _cache_blocks(context + 2)})]


def dpo_reference_program(cfg: DecoderConfig, partitioner: Partitioner, dpo_train) -> Program:
    """The reference log-likelihoods of DPO's rows (`preferences.make_preferences`, at the dpo
    stage's sequence_length, make_preferences.batch_size rows a call)."""
    batch_size = _binding("make_preferences.batch_size", 16)
    length = dpo_train.sequence_length
    fn = likelihood.compiled(cfg, 0)
    args = (abstract_params(cfg, partitioner), abstract_batch(partitioner, batch_size, length))
    return Program("dpo_data", "reference_log_likelihoods",
                   _lowering(partitioner, "dpo_data", fn, *args), batch_size * length,
                   _forward_flops(cfg, length) * batch_size * length, False)


def _binding(name: str, default):
    try:
        return gin.query_parameter(name)
    except ValueError:
        return default


def grpo_programs(cfg: DecoderConfig, partitioner: Partitioner, config) -> list[Program]:
    """The GRPO loop's programs (rl/loop.py) at its GrpoConfig: the rollout, the policy's
    token statistics and the policy step, on prompts_per_iteration x num_generations rows of
    sequence_length (the most `rollout.trim_rows` leaves)."""
    rows, length = config.prompts_per_iteration * config.num_generations, config.sequence_length
    loss = functools.partial(config.objective, kl_coef=config.kl_coef,
                             temperature=config.temperature)
    if config.sft_weight:
        loss = grpo_lib.with_supervised(loss, config.sft_weight)
    floats = ("old_log_probs",) + (("ref_log_probs",) if config.kl_coef else ())
    step = train_program("grpo", cfg, partitioner, loss, config.micro_batches,
                         config.iterations * config.steps_per_iteration, rows, length,
                         {"advantages": jnp.float32, "full_length": jnp.float32}, floats)
    # as rl/loop.py jits it
    stats = jax.jit(functools.partial(grpo_lib.policy_token_stats, Decoder(cfg),
                                      temperature=config.temperature))
    stats_program = Program("grpo", "policy_stats", _lowering(
        partitioner, "grpo", stats, abstract_params(cfg, partitioner),
        abstract_batch(partitioner, rows, length)),
        rows * length, _forward_flops(cfg, length) * rows * length, False)
    rollout = sampling_programs("grpo", cfg, partitioner, Sampling.rollout(config),
                                length - config.max_decode_len)
    for program in rollout:
        program.name = "rollout_" + program.name
    return [*rollout, stats_program, step]


def stage_programs(stage: str, run_configs: dict, cfg: DecoderConfig, partitioner: Partitioner,
                   prompt_len: int) -> list[Program]:
    """A stage's programs from the run's typed configs ({stage: `pipeline.STAGES[stage].configs`})."""
    if stage in HOST_ONLY:
        return []
    configs = run_configs[stage]
    if "train" in configs:
        train = configs["train"]
        rows_extra = None if train.pack else unpacked_row_features()
        return [train_program(stage, cfg, partitioner, train.objective, train.micro_batches,
                              train.total_steps, train.batch_size, train.sequence_length,
                              rows_extra)]
    if "grpo" in configs:
        return grpo_programs(cfg, partitioner, configs["grpo"])
    infers = [c for name, c in configs.items() if name.startswith("infer")]
    if infers:  # every generator samples with the same shapes
        return sampling_programs(stage, cfg, partitioner, Sampling.of(infers[0]), prompt_len)
    if stage == "score":  # contexts of the evaluation samples
        infer = next(c for name, c in run_configs["sample_eval"].items()
                     if name.startswith("infer"))
        return score_programs(cfg, partitioner, Sampling.of(infer), prompt_len)
    if stage == "dpo_data":  # DPO's rows
        return [dpo_reference_program(cfg, partitioner, run_configs["dpo"]["train"])]
    raise ValueError(f"stage {stage!r} has no program the planner knows")

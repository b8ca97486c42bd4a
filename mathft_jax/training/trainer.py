"""The train step (pure, jit-able) and the state it updates.

`TrainState` is a plain pytree (step, params, opt_state). `make_train_step` returns
`train_step(state, batch) -> (state, metrics)`: forward, backward, optional gradient
accumulation over micro-batches, optimizer update. Objectives return *sums* and a
`weight` normaliser, so accumulating micro-batches and then dividing equals one large
batch up to float round-off. The loop around it lives in `train.py`.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mathft_jax.models import lora as lora_lib
from mathft_jax.models.config import DecoderConfig
from mathft_jax.models.lora import LoraConfig
from mathft_jax.models.decoder import Decoder, init_params
from mathft_jax.training.objectives import lm_objective, rows_per_group
from mathft_jax.models.partitioning import BATCH_AXES, NO_MESH, Partitioner, with_shardings

Batch = Dict[str, jax.Array]
Objective = Callable[[Decoder, dict, Batch], Dict[str, jax.Array]]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    opt_state: optax.OptState


def _split_micro_batches(batch: Batch, n: int, partitioner: Partitioner, group: int = 1) -> Batch:
    """[B, ...] -> [n, B/n, ...] taking row groups i, i+n, ... (groups of `group` consecutive
    rows, the objective's unit) into micro-batch i, so every device keeps contributing its
    local rows to every micro-batch (no resharding) and no unit is split."""
    def split(x):
        y = x.reshape((x.shape[0] // (n * group), n, group) + x.shape[1:]).swapaxes(0, 1)
        y = y.reshape((n, x.shape[0] // n) + x.shape[1:])
        if partitioner.mesh is not None:
            spec = jax.sharding.PartitionSpec(None, BATCH_AXES)
            y = jax.lax.with_sharding_constraint(
                y, jax.sharding.NamedSharding(partitioner.mesh, spec))
        return y
    return jax.tree_util.tree_map(split, batch)


def make_train_step(cfg: DecoderConfig, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, objective: Objective = lm_objective,
                    micro_batches: int = 1, partitioner: Partitioner = NO_MESH,
                    lora: Optional[LoraConfig] = None, seed: int = 0):
    """With `lora` (enabled), `state.params` are the adapters and the step takes the frozen
    base as a third argument, `train_step(state, batch, base)`: the objective sees the base
    with the adapters applied unmerged, and only the adapters are differentiated, so the
    base has no gradients, no accumulators and no optimizer state. LoRA dropout draws from
    `fold_in(key(seed), step)` (and the micro-batch), so a resumed run draws the same."""
    lora = lora if lora is not None and lora.enabled else None
    model = Decoder(cfg) if lora is None else Decoder(cfg, lora_dropout=lora.dropout)
    dropout = lora is not None and lora.dropout > 0

    def model_params(trained, base, key):
        return trained if lora is None else lora_lib.adapted(base, trained, lora, cfg, key)

    def sums_and_grads(params, base, batch, key=None):
        def loss_fn(p):
            sums = objective(model, model_params(p, base, key), batch)
            return sums["loss"], sums
        (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return sums, grads

    def train_step(state: TrainState, batch: Batch, base=None):
        key = jax.random.fold_in(jax.random.PRNGKey(seed), state.step) if dropout else None
        if micro_batches == 1:
            sums, grads = sums_and_grads(state.params, base, batch, key)
        else:
            micro = _split_micro_batches(batch, micro_batches, partitioner,
                                         rows_per_group(objective))
            xs = (micro, jnp.arange(micro_batches)) if dropout else micro

            def body(carry, x):
                mb, mb_key = (x[0], jax.random.fold_in(key, x[1])) if dropout else (x, None)
                s, g = sums_and_grads(state.params, base, mb, mb_key)
                return jax.tree_util.tree_map(jnp.add, carry, (s, g)), None

            # One traced copy of the model (the scan body), from exact zeros: 0 + x == x.
            first = jax.tree_util.tree_map(lambda x: x[0], micro)
            (sums, grads), _ = jax.lax.scan(body, _zero_sums_and_grads(
                trained_boxes(cfg, lora), functools.partial(sums_and_grads, key=key),
                state.params, base, first), xs)
        denom = jnp.maximum(sums["weight"], 1.0)
        grads = jax.tree_util.tree_map(lambda g: g / denom, grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {k: v / denom for k, v in sums.items() if k != "weight"}
        metrics["weight"] = sums["weight"]
        metrics["grad_norm"] = optax.tree.norm(grads) if hasattr(optax, "tree") else optax.global_norm(grads)
        metrics["learning_rate"] = schedule(state.step)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def jit_train_step(cfg: DecoderConfig, optimizer: optax.GradientTransformation,
                   schedule: optax.Schedule, objective: Objective, micro_batches: int,
                   partitioner: Partitioner, shardings: "TrainState",
                   lora: Optional[LoraConfig] = None, base_shardings=None, seed: int = 0):
    """`make_train_step` jitted as every training loop runs it (train, rl, and the planner
    compiles it so): the state in its `shardings` and donated, batches as they arrive
    (global arrays already laid out by `Partitioner.to_global`), metrics replicated. With
    LoRA, the frozen base is a third argument in `base_shardings`, never donated. Lower
    or call it under `partitioner.context()`."""
    step = make_train_step(cfg, optimizer, schedule, objective, micro_batches, partitioner,
                           lora, seed)
    in_shardings = (shardings, None)
    if lora is not None and lora.enabled:
        in_shardings += (base_shardings,)
    return jax.jit(step, in_shardings=in_shardings,
                   out_shardings=(shardings, partitioner.replicated), donate_argnums=0)


def trained_boxes(cfg: DecoderConfig, lora: Optional[LoraConfig] = None):
    """Boxed abstract values of what the optimizer trains: the parameters, or with LoRA the
    adapters (their logical axes shard gradients and optimizer state alike)."""
    boxed = Partitioner.abstract_params(cfg)
    if lora is not None and lora.enabled:
        return lora_lib.adapter_boxes(lora, cfg, boxed)
    return boxed


def _zero_sums_and_grads(boxes, sums_and_grads, params, base, micro_batch):
    """Zeros shaped like sums_and_grads' output; the gradients at the trained values' own
    (logical) shardings, so the accumulator is as sharded as they are."""
    sums, grads = jax.eval_shape(sums_and_grads, params, base, micro_batch)
    zeros = lambda t: jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), t)  # noqa: E731
    specs = nn.get_partition_spec(boxes)
    grads = jax.tree_util.tree_map(nn.with_logical_constraint, zeros(grads), specs)
    return zeros(sums), grads


def make_eval_step(cfg: DecoderConfig, objective: Objective = lm_objective):
    model = Decoder(cfg)

    def eval_step(params, batch: Batch):
        return objective(model, params, batch)

    return eval_step


def abstract_state(cfg: DecoderConfig, optimizer: optax.GradientTransformation,
                   partitioner: Partitioner, lora: Optional[LoraConfig] = None):
    """ShapeDtypeStructs (with shardings) of the TrainState, and the shardings tree. With
    LoRA the state's params are the adapters."""
    boxed = trained_boxes(cfg, lora)
    params = nn.unbox(boxed)
    p_sh = partitioner.shardings(boxed)
    opt = jax.eval_shape(optimizer.init, params)
    o_sh = partitioner.shardings_like_params(opt, p_sh, params)
    shardings = TrainState(step=partitioner.replicated, params=p_sh, opt_state=o_sh)
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=opt)
    return with_shardings(abstract, shardings), shardings


def init_state(cfg: DecoderConfig, optimizer, shardings: TrainState, seed: int,
               params=None, lora: Optional[LoraConfig] = None) -> TrainState:
    """Fresh state, created directly in its sharded layout (nothing replicated first).
    With `params` (a fine-tuning start, or adapters to go on training), only the optimizer
    state is fresh. With LoRA and no `params`, fresh adapters (`a` random, `b` zero)."""
    def make(rng):
        if lora is not None and lora.enabled:
            p = lora_lib.init_adapters(lora, cfg, Partitioner.abstract_params(cfg), rng)
        else:
            p = nn.unbox(init_params(cfg, rng))
        return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p))

    if params is None:
        return jax.jit(make, out_shardings=shardings)(jax.random.PRNGKey(seed))
    opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
    return TrainState(step=step, params=params, opt_state=opt_state)

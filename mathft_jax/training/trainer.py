"""The train step (pure, jit-able) and the state it updates.

`TrainState` is a plain pytree (step, params, opt_state). `make_train_step` returns
`train_step(state, batch) -> (state, metrics)`: forward, backward, optional gradient
accumulation over micro-batches, optimizer update. Objectives return *sums* and a
`weight` normaliser, so accumulating micro-batches and then dividing equals one large
batch up to float round-off. The loop around it lives in `train.py`.
"""
from __future__ import annotations

from typing import Callable, Dict

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mathft_jax.models.config import DecoderConfig
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
                    micro_batches: int = 1, partitioner: Partitioner = NO_MESH):
    model = Decoder(cfg)

    def sums_and_grads(params, batch):
        def loss_fn(p):
            sums = objective(model, p, batch)
            return sums["loss"], sums
        (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return sums, grads

    def train_step(state: TrainState, batch: Batch):
        if micro_batches == 1:
            sums, grads = sums_and_grads(state.params, batch)
        else:
            micro = _split_micro_batches(batch, micro_batches, partitioner,
                                         rows_per_group(objective))

            def body(carry, mb):
                s, g = sums_and_grads(state.params, mb)
                return jax.tree_util.tree_map(jnp.add, carry, (s, g)), None

            # One traced copy of the model (the scan body), from exact zeros: 0 + x == x.
            (sums, grads), _ = jax.lax.scan(body, _zero_sums_and_grads(
                cfg, sums_and_grads, state.params, jax.tree_util.tree_map(lambda x: x[0], micro)),
                micro)
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
                   partitioner: Partitioner, shardings: "TrainState"):
    """`make_train_step` jitted as every training loop runs it (train, rl, and the planner
    compiles it so): the state in its `shardings` and donated, batches as they arrive
    (global arrays already laid out by `Partitioner.to_global`), metrics replicated. Lower
    or call it under `partitioner.context()`."""
    return jax.jit(make_train_step(cfg, optimizer, schedule, objective, micro_batches,
                                   partitioner),
                   in_shardings=(shardings, None),
                   out_shardings=(shardings, partitioner.replicated),
                   donate_argnums=0)


def _zero_sums_and_grads(cfg: DecoderConfig, sums_and_grads, params, micro_batch):
    """Zeros shaped like sums_and_grads' output; the gradients at the parameters' own
    (logical) shardings, so the accumulator is as sharded as the parameters."""
    sums, grads = jax.eval_shape(sums_and_grads, params, micro_batch)
    zeros = lambda t: jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), t)  # noqa: E731
    specs = nn.get_partition_spec(Partitioner.abstract_params(cfg))
    grads = jax.tree_util.tree_map(nn.with_logical_constraint, zeros(grads), specs)
    return zeros(sums), grads


def make_eval_step(cfg: DecoderConfig, objective: Objective = lm_objective):
    model = Decoder(cfg)

    def eval_step(params, batch: Batch):
        return objective(model, params, batch)

    return eval_step


def abstract_state(cfg: DecoderConfig, optimizer: optax.GradientTransformation,
                   partitioner: Partitioner):
    """ShapeDtypeStructs (with shardings) of the TrainState, and the shardings tree."""
    boxed = partitioner.abstract_params(cfg)
    params = nn.unbox(boxed)
    p_sh = partitioner.shardings(boxed)
    opt = jax.eval_shape(optimizer.init, params)
    o_sh = partitioner.shardings_like_params(opt, p_sh, params)
    shardings = TrainState(step=partitioner.replicated, params=p_sh, opt_state=o_sh)
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=opt)
    return with_shardings(abstract, shardings), shardings


def init_state(cfg: DecoderConfig, optimizer, shardings: TrainState, seed: int,
               params=None) -> TrainState:
    """Fresh state, created directly in its sharded layout (nothing replicated first).
    With `params` (a fine-tuning start), only the optimizer state is fresh."""
    def make(rng):
        p = nn.unbox(init_params(cfg, rng))
        return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p))

    if params is None:
        return jax.jit(make, out_shardings=shardings)(jax.random.PRNGKey(seed))
    opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
    return TrainState(step=step, params=params, opt_state=opt_state)

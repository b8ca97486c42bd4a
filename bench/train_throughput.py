"""The full train step (forward, backward, AdamW update, sharded state): tokens/s and MFU.

    python bench/train_throughput.py                 # tiny and small_20m on this CPU
    python bench/train_throughput.py --models=palm_1b --dtype=bfloat16 --batch=16 --seq_len=2048

MFU = model FLOPs per token (6N + attention, `models.flops_per_token`) x tokens/s over the
peak: on CPU the large float32 matmul timed in the same run, on GPU/TPU also the published
bf16 peak. Same flags as bench/model_step.py.
"""
from __future__ import annotations

import common  # noqa: F401  (sys.path)
import jax
import numpy as np

from model_step import parse_args, report, throughput_record
from mathft_jax.models import partitioning
from mathft_jax.training.optim import learning_rate_schedule, make_optimizer
from mathft_jax.training.trainer import abstract_state, init_state, make_train_step


def measure(name: str, args) -> dict:
    overrides = {"dtype": args.dtype} if args.dtype else {}
    cfg = common.model_config([f"gin_configs/models/{name}.gin"], **overrides)
    partitioner = partitioning.Partitioner.create(cfg)
    schedule = learning_rate_schedule(peak=1e-4)
    opt = make_optimizer(schedule=schedule)
    _, shardings = abstract_state(cfg, opt, partitioner)
    state = init_state(cfg, opt, shardings, seed=0)
    rows = np.random.default_rng(0).integers(1, cfg.vocab_size, (args.batch, args.seq_len + 1))
    batch = {"decoder_input_tokens": rows[:, :-1], "decoder_target_tokens": rows[:, 1:],
             "decoder_loss_weights": np.ones((args.batch, args.seq_len))}
    bsh = partitioner.batch_sharding
    batch = {k: jax.device_put(v.astype(np.int32), bsh) for k, v in batch.items()}
    with partitioner.context():
        step = jax.jit(make_train_step(cfg, opt, schedule, partitioner=partitioner),
                       in_shardings=(shardings, bsh), out_shardings=(shardings, None),
                       donate_argnums=0)
        holder = {"state": state}

        def run():
            holder["state"], metrics = step(holder["state"], batch)
            jax.block_until_ready(metrics)
        timing = common.time_call(run, args.runs)
    return throughput_record(name, cfg, args, timing)


def main():
    args = parse_args(__doc__.split("\n")[0])
    report("train_throughput", [measure(m, args) for m in args.models.split(",")], args.out)


if __name__ == "__main__":
    main()

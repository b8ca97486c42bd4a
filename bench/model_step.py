"""Forward + backward of a model: tokens/s and the fraction of this machine's peak.

    python bench/model_step.py                      # tiny and small_20m on this machine
    python bench/model_step.py --models=palm_1b --dtype=bfloat16 --batch=8 --seq_len=2048

The peak is a large matmul timed in the same run (float32 on CPU; on GPU/TPU the
published bf16 peak is reported too), so "fraction of peak" is honest on any machine.
FLOPs per token are the model's training FLOPs (`models.flops_per_token`: 6N + attention).
"""
from __future__ import annotations

import argparse

import common  # noqa: F401  (sys.path)
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mathft_jax.models import partitioning
from mathft_jax.training import hardware, losses
from mathft_jax.models import Decoder, flops_per_token
from mathft_jax.models.decoder import init_params


def step_fn(cfg):
    model = Decoder(cfg)

    def loss(params, tokens):
        logits = model.apply({"params": params}, tokens[:, :-1])
        out = losses.token_cross_entropy(logits, tokens[:, 1:], jnp.ones_like(tokens[:, 1:]))
        return out["loss"] / out["weight"]
    return jax.jit(jax.value_and_grad(loss))


def measure(name: str, args) -> dict:
    overrides = {"dtype": args.dtype} if args.dtype else {}
    cfg = common.model_config([f"gin_configs/models/{name}.gin"], **overrides)
    partitioner = partitioning.Partitioner.create(cfg)
    params = jax.jit(lambda k: nn.unbox(init_params(cfg, k)),
                     out_shardings=partitioner.param_shardings(cfg))(jax.random.PRNGKey(0))
    tokens = jax.device_put(np.random.default_rng(0).integers(
        0, cfg.vocab_size, (args.batch, args.seq_len + 1)).astype(np.int32),
        partitioner.batch_sharding)
    with partitioner.context():
        fn = step_fn(cfg)
        timing = common.time_call(lambda: jax.block_until_ready(fn(params, tokens)), args.runs)
    return throughput_record(name, cfg, args, timing)


def throughput_record(name, cfg, args, timing) -> dict:
    """tokens/s, model FLOP/s and their fraction of the peaks, for one timed step."""
    tokens_per_s = args.batch * args.seq_len / timing["median_s"]
    achieved = tokens_per_s * flops_per_token(cfg, args.seq_len)
    peak_measured = hardware.measured_matmul_flops(args.matmul_n, args.matmul_dtype) * jax.device_count()
    published = hardware.published_peak_flops()
    return {"model": name, "dtype": cfg.dtype, "batch": args.batch, "seq_len": args.seq_len,
            **timing, "tokens_per_s": tokens_per_s, "model_flops_per_s": achieved,
            "measured_matmul_peak_flops": peak_measured,
            "fraction_of_measured_peak": achieved / peak_measured,
            "published_peak_flops": published and published * jax.device_count(),
            "mfu_vs_published": published and achieved / (published * jax.device_count())}


def parse_args(description: str):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--models", default="tiny,small_20m")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=512)
    p.add_argument("--dtype", default="", help="override the compute dtype (e.g. bfloat16)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--matmul_n", type=int, default=2048)
    p.add_argument("--matmul_dtype", default="float32")
    p.add_argument("--out", default="")
    return p.parse_args()


def report(name: str, results: list, out: str) -> None:
    for r in results:
        print(f"{r['model']}: {r['tokens_per_s']:,.0f} tokens/s, "
              f"{100 * r['fraction_of_measured_peak']:.1f}% of the measured matmul peak"
              + (f", MFU {100 * r['mfu_vs_published']:.1f}% of published peak"
                 if r["mfu_vs_published"] else ""))
    common.write_json(name, {"results": results}, out)


def main():
    args = parse_args(__doc__.split("\n")[0])
    report("model_step", [measure(m, args) for m in args.models.split(",")], args.out)


if __name__ == "__main__":
    main()

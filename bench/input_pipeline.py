"""Input pipeline throughput against what the trainer consumes.

    python bench/input_pipeline.py [--task=math_ssft_math] [--batch_size=8] [--seq_len=512]
        [--seconds=10] [--trainer_tokens_per_s=X] [--out=bench/out/input_pipeline.json]

Measures `mathft_jax.data.dataset.get_dataset` (byte vocabulary, packed): the one-time load
(seqio tokenisation of the split) and then examples/s and tokens/s of batch iteration. The
trainer's side is a jitted forward+backward of the `tiny` model (gin_configs/models/tiny.gin)
on the same batches, unless `--trainer_tokens_per_s` gives a figure. The pipeline runs in the
trainer's process, so the figure that matters is its share of a step: data time / step time.
Prints a table and writes JSON with the machine and the command.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    # Load average: the machine may be shared, which slows the trainer side most.
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "load_average_1m": os.getloadavg()[0]}


def measure_pipeline(args) -> tuple[dict, list]:
    from mathft_jax.data import dataset, tasks  # noqa: F401 (registers the tasks)

    start = time.perf_counter()
    iterator = dataset.get_dataset(args.task, args.split, args.seq_len, args.batch_size, seed=0,
                                   pack=True)
    load_s = time.perf_counter() - start
    batches, examples, tokens = 0, 0, 0
    kept = []
    start = time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        batch = next(iterator)
        batches += 1
        segments = batch["decoder_segment_ids"]
        examples += int(sum(len(set(row[row > 0])) for row in segments))
        tokens += int((segments > 0).sum())
        if len(kept) < 4:
            kept.append(batch)
    elapsed = time.perf_counter() - start
    return {
        "load_s": round(load_s, 2), "examples_in_split": iterator.stats["examples"],
        "overlong_truncated": iterator.stats["truncated"], "batches": batches,
        "batches_per_s": batches / elapsed, "examples_per_s": examples / elapsed,
        "tokens_per_s": tokens / elapsed, "slots_per_s": batches * args.batch_size * args.seq_len / elapsed,
        "fill": tokens / (batches * args.batch_size * args.seq_len),
    }, kept


def measure_tiny_trainer(batches: list, steps: int) -> dict:
    """tokens/s (batch x length slots) of a jitted forward+backward of the tiny model."""
    import gin
    import jax
    import jax.numpy as jnp
    import flax.linen as nn

    from mathft_jax.core import gin_utils
    from mathft_jax.models.config import DecoderConfig
    from mathft_jax.training import trainer
    from mathft_jax.models import Decoder, init_params

    gin_utils.parse_gin(["gin_configs/models/tiny.gin"])
    cfg = DecoderConfig()
    model = Decoder(cfg)
    params = nn.unbox(init_params(cfg, jax.random.PRNGKey(0)))
    grad_fn = jax.jit(jax.value_and_grad(lambda p, b: trainer.lm_objective(model, p, b)["loss"]))
    device_batches = [{k: jnp.asarray(v) for k, v in b.items()} for b in batches]
    jax.block_until_ready(grad_fn(params, device_batches[0]))  # compile
    start = time.perf_counter()
    for i in range(steps):
        out = grad_fn(params, device_batches[i % len(device_batches)])
    jax.block_until_ready(out)
    step_s = (time.perf_counter() - start) / steps
    gin.clear_config()
    b, t = batches[0]["decoder_input_tokens"].shape
    return {"step_s": step_s, "tokens_per_s": b * t / step_s, "source": "measured: tiny fwd+bwd"}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="math_ssft_math")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--trainer_steps", type=int, default=10)
    parser.add_argument("--trainer_tokens_per_s", type=float, default=None,
                        help="trainer consumption (batch x length tokens/s); default: measure tiny")
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "input_pipeline.json"))
    args = parser.parse_args(argv)

    pipeline, batches = measure_pipeline(args)
    if args.trainer_tokens_per_s is not None:
        consumer = {"tokens_per_s": args.trainer_tokens_per_s, "source": "--trainer_tokens_per_s"}
    else:
        consumer = measure_tiny_trainer(batches, args.trainer_steps)
    data_s_per_step = 1.0 / pipeline["batches_per_s"]
    step_s = args.batch_size * args.seq_len / consumer["tokens_per_s"]
    result = {
        "command": " ".join([os.path.relpath(sys.executable, REPO), *sys.argv]),
        "machine": machine(),
        "config": {"task": args.task, "split": args.split, "batch_size": args.batch_size,
                   "seq_len": args.seq_len, "vocabulary": "byte", "pack": True},
        "pipeline": pipeline,
        "trainer": consumer,
        "headroom": pipeline["slots_per_s"] / consumer["tokens_per_s"],
        "data_share_of_step": data_s_per_step / (data_s_per_step + step_s),
    }
    print(f"{'':28}{'value':>14}")
    for label, value in [
        ("one-time load (s)", pipeline["load_s"]),
        ("pipeline examples/s", pipeline["examples_per_s"]),
        ("pipeline tokens/s (real)", pipeline["tokens_per_s"]),
        ("pipeline slots/s (B x L)", pipeline["slots_per_s"]),
        ("packing fill", pipeline["fill"]),
        ("trainer tokens/s (tiny)", consumer["tokens_per_s"]),
        ("headroom (x)", result["headroom"]),
        ("data share of a step", result["data_share_of_step"]),
    ]:
        print(f"{label:28}{value:>14,.3f}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()

"""The GRPO loop on this machine (tiny model, synthetic curriculum): samples/s, train steps/s
and the share of each iteration's wall time in sampling, grading and training.

    python bench/rl_throughput.py                     # tiny, 8 prompts x 8 completions
    python bench/rl_throughput.py --iterations=6 --prompts=16 --generations=8 --steps=2
    python bench/rl_throughput.py --gin_bindings="grpo.init_checkpoint='runs/x/ssft/checkpoints'" \
      --gin_bindings=grpo.length_bucket=0    # a trained policy's lengths; whole rows

Runs `mathft_jax.rl.loop.grpo` as `python -m mathft_jax.rl` would (gin_configs/runs/grpo.gin;
random init unless `grpo.init_checkpoint` is bound: the weights set how long completions
are, hence how far `grpo.length_bucket` cuts the rows) and reads its metrics. The first
iteration compiles and is left out. "train" holds the teacher-forced old-policy and
reference passes as well as the policy steps; "other" is logging and checkpointing.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile

import common  # noqa: F401  (sys.path)
import gin

from mathft_jax.core import gin_utils
from mathft_jax.core.metrics_writer import read_metrics
from mathft_jax.rl import loop


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iterations", type=int, default=4, help="including the compiling first")
    p.add_argument("--prompts", type=int, default=8, help="prompts per iteration")
    p.add_argument("--generations", type=int, default=8, help="completions per prompt (G)")
    p.add_argument("--max_decode_len", type=int, default=96)
    p.add_argument("--steps", type=int, default=1, help="policy steps per iteration")
    p.add_argument("--gin_file", default="gin_configs/runs/grpo.gin")
    p.add_argument("--gin_bindings", action="append", default=[], help="repeatable")
    p.add_argument("--out", default="")
    return p.parse_args()


def main():
    args = parse_args()
    if args.iterations < 2:
        raise SystemExit("--iterations must be >= 2: the first one compiles and is not timed")
    gin.clear_config()
    gin_utils.parse_gin([args.gin_file], args.gin_bindings)
    with tempfile.TemporaryDirectory() as model_dir, gin.config_scope("grpo"):
        loop.grpo(model_dir=model_dir, iterations=args.iterations,
                  prompts_per_iteration=args.prompts, num_generations=args.generations,
                  max_decode_len=args.max_decode_len, steps_per_iteration=args.steps,
                  checkpoint_every=args.iterations, async_checkpoints=False, progress=False)
        rows = read_metrics(model_dir)
    timed = rows[1:]
    walls = [b["time"] - a["time"] for a, b in zip(rows, rows[1:])]
    phases = {k: statistics.median(r[f"grpo/seconds_{k}"] for r in timed)
              for k in ("sample", "reward", "train")}
    wall = statistics.median(walls)
    phases["other"] = max(wall - sum(phases.values()), 0.0)
    samples = args.prompts * args.generations
    result = {
        "config": vars(args),
        "iteration_s": wall,
        "samples_per_s": samples / phases["sample"],
        "train_steps_per_s": args.steps / phases["train"],
        "sampled_tokens_per_s": statistics.median(r["grpo/response_length"] for r in timed)
        * samples / phases["sample"],
        "row_length": statistics.median(r["grpo/row_length"] for r in timed),
        "share": {k: v / wall for k, v in phases.items()},
        "seconds": phases,
    }
    path = common.write_json("rl_throughput", result, args.out)
    share = ", ".join(f"{k} {100 * v:.0f}%" for k, v in result["share"].items())
    print(f"\n| {samples} samples/iteration | {result['samples_per_s']:.1f} samples/s | "
          f"{result['train_steps_per_s']:.2f} train steps/s | rows of "
          f"{result['row_length']:.0f} | {share} |  ({path})")


if __name__ == "__main__":
    main()

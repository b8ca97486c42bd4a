"""LoRA (rank 8 and 64) against full fine-tuning, and the quantized base (QLoRA's) against
the float one, on the synthetic curriculum with small_20m on CPU.

    flock /tmp/heavy.lock nice -n 5 .venv/bin/python bench/lora.py --out_dir=runs/lora_bench \
        --base_steps=300 --steps=200 --problems=64 --samples=8

1. base: full SSFT of small_20m from scratch on the terse solutions (`synthetic_arith_terse`)
   for `--base_steps`: the pretrained model every run below starts from.
2. full, lora8, lora64: SSFT from the base on the steps solutions (`synthetic_arith_steps`),
   the same `--steps`, batch and schedule (the `ssft` variant: ssft, sample_eval,
   evaluate); LoRA on every projection of every layer, alpha = 2 x rank.
   Reported per run: optimizer-state bytes (AdamW's state of what trains, from its shapes),
   the final checkpoint's bytes on disk, steady-state steps/s (metrics.jsonl's times),
   Pass@1 and Maj1@N of `--samples` samples per test problem.
3. quantized base: the full run's model as QLoRA would hold it (int8 and nf4 through qwix,
   `quantize_base.weight_dtype`): logits against the float model on test prompts (max and
   mean |difference|), and Pass@1 / Maj1@N sampled from it (`sample_eval` of the same run
   re-done with the quantized base).

Writes `<out_dir>/lora.json` and bench/results/lora.json (command, machine, date, figures).
Every pipeline run resumes, so a rerun skips what is done.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

MODEL = "gin_configs/models/small_20m.gin"  # --model replaces it (tiny: a quick check)
# name -> the LoRA bindings of its SSFT stage (none: full fine-tuning)
RUNS = {"full": [], "lora8": ["ssft/lora.rank=8", "ssft/lora.alpha=16.0"],
        "lora64": ["ssft/lora.rank=64", "ssft/lora.alpha=128.0"]}
QTYPES = ("int8", "nf4")


def pipeline(run_dir: pathlib.Path, args, bindings: list, log) -> None:
    cmd = [sys.executable, "-m", "mathft_jax.pipeline",
           "--gin_file=gin_configs/runs/ssft.gin", f"--gin_file={args.model}",
           f"--gin_bindings=pipeline.run_dir='{run_dir}'"]
    cmd += [f"--gin_bindings={b}" for b in common_bindings(args) + bindings]
    env = {**os.environ, "XLA_FLAGS": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run(cmd + ["--verbosity=-1"], cwd=REPO, env=env, check=True, stdout=log,
                   stderr=log)


def common_bindings(args) -> list:
    return [f"sample_eval/infer.max_problems={args.problems}", f"train.batch_size={args.batch_size}",
            "train.log_every=5",
            f"infer.num_samples={args.samples}", f"pipeline.k={min(4, args.samples - 1)}",
            "pipeline.ssft_task='synthetic_arith_steps'"]


def steps_per_s(checkpoints: pathlib.Path) -> float:
    """Median steps/s between logged steps after the first (compile) interval."""
    rows = [json.loads(line) for line in (checkpoints / "metrics.jsonl").open()
            if '"time"' in line]
    rows = [r for r in rows if any(k.startswith("train/") for k in r)]
    rates = [(b["step"] - a["step"]) / (b["time"] - a["time"]) for a, b in zip(rows[1:], rows[2:])]
    if not rates:
        raise SystemExit(f"{checkpoints}: too few logged steps for a rate (--steps >= 15)")
    return statistics.median(rates)


def dir_bytes(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def final_checkpoint(checkpoints: pathlib.Path) -> pathlib.Path:
    return max((p for p in checkpoints.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def optimizer_state_bytes(model: str, lora_rank: int) -> int:
    """AdamW's state of what trains: every parameter, or the adapters (rank > 0)."""
    import jax
    import optax

    from common import model_config
    from mathft_jax.models import lora as lora_lib
    from mathft_jax.models.decoder import abstract_params
    import flax.linen as nn
    cfg = model_config([model])
    boxed = abstract_params(cfg)
    trainable = nn.unbox(boxed) if lora_rank == 0 else jax.eval_shape(
        lambda: lora_lib.init_adapters(lora_lib.LoraConfig(rank=lora_rank), cfg, boxed,
                                       jax.random.PRNGKey(0)))
    state = jax.eval_shape(optax.adamw(1e-3).init, trainable)
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state)))


def accuracy(run_dir: pathlib.Path) -> dict:
    results = json.loads((run_dir / "evaluate" / "results.json").read_text())
    metrics = next(iter(results.values()))["metrics"]
    return {m: metrics[m]["value"] for m in ("pass_at_1", "maj1_at_n")}


def logits_error(model: str, checkpoint: pathlib.Path, qtype: str, prompts: int) -> dict:
    """max and mean |logits(quantized) - logits(float)| over the first test prompts."""
    import jax.numpy as jnp
    import numpy as np

    from common import model_config
    from mathft_jax.convert import checkpoints
    from mathft_jax.data import formats, sources
    from mathft_jax.data import vocab as vocab_lib
    from mathft_jax.models import Decoder, lora as lora_lib, quantization
    cfg = model_config([model])
    params = checkpoints.load_params(str(checkpoint), cfg)
    qbase = quantization.quantize_base(params, cfg, quantization.QuantConfig(weight_dtype=qtype))
    vocab = vocab_lib.get_vocabulary("byte")
    start = vocab_lib.decoder_start_id(vocab)
    problems = sources.problem_records("synthetic_arith_steps", "test")[:prompts]
    rows = [[start] + list(vocab.encode(formats.generation_prompt(p["problem"])))
            for p in problems]
    width = max(map(len, rows))
    tokens = jnp.asarray([r + [0] * (width - len(r)) for r in rows], jnp.int32)
    mask = np.asarray([[1] * len(r) + [0] * (width - len(r)) for r in rows], bool)
    diff = np.abs(np.asarray(lora_lib.apply(Decoder(cfg), qbase, tokens))
                  - np.asarray(lora_lib.apply(Decoder(cfg), params, tokens)))[mask]
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean())}


def quantized_accuracy(run_dir: pathlib.Path, bindings: list, qtype: str, args, log) -> dict:
    """Pass@1 / Maj1@N of the run's model with its base quantized: the run's sample_eval
    and evaluate stages again (its own `bindings` and the quantization), in a copy of the
    run that links its ssft stage."""
    qdir = run_dir.parent / f"{run_dir.name}_{qtype}"
    qdir.mkdir(exist_ok=True)
    if not (qdir / "ssft").exists():
        (qdir / "ssft").symlink_to(run_dir / "ssft")
    pipeline(qdir, args, bindings + [f"sample_eval/quantize_base.weight_dtype='{qtype}'"], log)
    return accuracy(qdir)


def run_bindings(name: str, args, base_checkpoint: pathlib.Path) -> list:
    return RUNS[name] + [f"ssft/train.total_steps={args.steps}",
                         f"pipeline.init_checkpoint='{base_checkpoint}'"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default="runs/lora_bench")
    parser.add_argument("--base_steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--model", default=MODEL, help="model gin file")
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--quantized", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    out = (REPO / args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "log.txt").open("a")

    base = out / "base"
    pipeline(base, args, [
        f"ssft/train.total_steps={args.base_steps}",
        "pipeline.ssft_task='synthetic_arith_terse'", "pipeline.variant='ssft'"], log)
    base_ckpt = base / "ssft" / "checkpoints"
    figures = {"model": args.model, "batch_size": args.batch_size,
               "base": {"steps": args.base_steps, **accuracy(base)}}
    for name in args.runs.split(","):
        run_dir = out / name
        pipeline(run_dir, args, run_bindings(name, args, base_ckpt), log)
        checkpoints = run_dir / "ssft" / "checkpoints"
        rank = int(name[4:]) if name.startswith("lora") else 0
        figures[name] = {
            "steps": args.steps, "optimizer_state_bytes": optimizer_state_bytes(args.model, rank),
            "checkpoint_bytes": dir_bytes(final_checkpoint(checkpoints)),
            "steps_per_s": steps_per_s(checkpoints), **accuracy(run_dir)}
    if args.quantized and "full" in figures:
        full = out / "full"
        for qtype in QTYPES:
            figures[f"full_{qtype}"] = {
                "logits": logits_error(args.model, full / "ssft" / "checkpoints", qtype,
                                       args.problems),
                **quantized_accuracy(full, run_bindings("full", args, base_ckpt), qtype, args,
                                     log)}
    payload = {"command": " ".join([pathlib.Path(sys.executable).name] + sys.argv),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": _machine(), "figures": figures}
    text = json.dumps(payload, indent=1)
    (out / "lora.json").write_text(text + "\n")
    results = REPO / "bench" / "results"
    results.mkdir(exist_ok=True)
    shutil.copy(out / "lora.json", results / "lora.json")
    print(text)


def _machine() -> dict:
    from common import machine
    return machine()


if __name__ == "__main__":
    main()

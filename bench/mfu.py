"""Train-step MFU and decode tokens/s of PaLM configs on one accelerator, in one run.

    python bench/mfu.py                          # palm_1b, then the largest PaLM that fits
    python bench/mfu.py --budget_s=450 --out=bench/out/mfu.json
    python bench/mfu.py --smoke                  # tiny model on CPU, seconds (the test)
    python bench/mfu.py --profile_dir=DIR        # also trace 2 steps of each palm_1b set-up

Train: bf16 compute, float32 parameters and optimizer state, sequences of --seq_len random
tokens; the largest batch of --batches (tried from the largest down; out-of-memory is
caught) is timed over a few steps. MFU = tokens/s * flops_per_token / (peak * devices),
with PaLM's FLOPs count (models/sizes.py) and the vendor's dense bf16 peak
(hardware.py). Decode: bfloat16 weights, --decode_prompts prompts x --decode_samples
samples, --decode_len new tokens each (no EOS, so every sequence runs to the end);
tokens/s = generated tokens / wall time of the whole generate call (prefill included).

"Largest PaLM that fits": the biggest of palm_8b/62b/540b whose training state (float32
params + gradients, Adafactor's factored statistics) fits in --fit_fraction of device
memory is trained with Adafactor; decoding uses the biggest whose bf16 weights fit.

Budget: everything stops starting new measurements once --budget_s is spent, so the
whole run stays within it plus one measurement; every result is printed as one JSON
line as soon as it is measured, and the summary at the end.

Imports only jax, flax, optax, numpy, absl and gin-config (no seqio/TensorFlow). Without
gin-config installed, put its wheel in .whl/ (`pip download gin-config==0.5.0 --no-deps
-d .whl`): it is pure Python and is imported straight from the wheel.
"""
from __future__ import annotations

import argparse
import functools
import gc
import glob
import json
import os
import platform
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "bench"))  # profile_summary, also when imported


def _import_gin():
    try:
        import gin  # noqa: F401
    except ImportError:
        wheels = sorted(glob.glob(os.path.join(REPO, ".whl", "gin_config-*.whl")))
        if not wheels:
            sys.exit("bench/mfu.py needs gin-config: pip install gin-config, or carry its wheel "
                     "in .whl/ (pip download gin-config==0.5.0 --no-deps -d .whl)")
        sys.path.insert(0, wheels[-1])


_import_gin()
# JAX pre-allocates 75% of GPU memory by default; the largest batch needs nearly all of it.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mathft_jax.models import partitioning  # noqa: E402
from mathft_jax.training import hardware
from mathft_jax.models import sizes  # noqa: E402
from mathft_jax.models.config import DecoderConfig  # noqa: E402
from mathft_jax.training.optim import learning_rate_schedule, make_optimizer  # noqa: E402
from mathft_jax.training.trainer import (abstract_state, init_state, lm_objective,  # noqa: E402
                                         make_train_step)

PALM_LARGER = ("palm_540b", "palm_62b", "palm_8b")  # biggest first
PROFILED_STEPS = 2  # with --profile_dir, traced after the timed steps
SMOKE_TINY = dict(vocab_size=256, num_layers=2, d_model=64, num_heads=4, num_kv_heads=1,
                  head_dim=16, mlp_dim=128, max_seq_len=64, dtype="float32")


def load_config(name: str, **overrides) -> DecoderConfig:
    """DecoderConfig of gin_configs/models/<name>.gin (model files bind DecoderConfig only)."""
    import gin
    gin.clear_config()
    try:
        gin.parse_config_file(os.path.join(REPO, "gin_configs", "models", f"{name}.gin"))
        cfg = DecoderConfig()
    finally:
        gin.clear_config()
    return cfg.replace(**overrides).validate()


def is_oom(e: BaseException) -> bool:
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def device_memory_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def free_device_memory() -> None:
    """Drop the last measurement's arrays and compiled programs before the next one."""
    gc.collect()
    for a in jax.live_arrays():
        a.delete()
    jax.clear_caches()


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def emit(record: dict) -> dict:
    print(json.dumps(record), flush=True)
    return record


# ----------------------------------------------------------------------------- training


def random_batch(batch: int, seq_len: int, vocab: int, sharding) -> dict:
    tokens = jax.random.randint(jax.random.PRNGKey(0), (batch, seq_len + 1), 1, vocab, jnp.int32)
    ones = jnp.ones((batch, seq_len), jnp.int32)
    arrays = {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
              "decoder_loss_weights": ones, "decoder_segment_ids": ones,
              "decoder_positions": jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32),
                                                    (batch, seq_len))}
    return {k: jax.device_put(v, sharding) for k, v in arrays.items()}


def train_bytes_lower_bound(cfg: DecoderConfig, batch: int, seq_len: int, optimizer: str,
                            loss_chunk: int = 0) -> int:
    """Memory a train step needs at the very least: float32 params and gradients (plus
    Adam's two moments), and the [batch, seq, vocab] float32 logits (one chunk of them with
    a fused loss). A batch above the device memory by this bound is not tried."""
    per_param = 4 * (2 + (2 if optimizer == "adamw" else 0))
    logits = batch * min(loss_chunk or seq_len, seq_len) * cfg.vocab_size * 4
    return sizes.count_params(cfg) * per_param + logits


def measure_train(cfg: DecoderConfig, batch: int, seq_len: int, optimizer: str,
                  steps: int, loss_chunk: int = 0, profile_path: str = "") -> dict:
    partitioner = partitioning.Partitioner.create(cfg)
    schedule = learning_rate_schedule(peak=1e-4)
    opt = make_optimizer(optimizer, schedule=schedule)
    _, shardings = abstract_state(cfg, opt, partitioner)
    state = init_state(cfg, opt, shardings, seed=0)
    data = random_batch(batch, seq_len, cfg.vocab_size, partitioner.batch_sharding)
    with partitioner.context():
        objective = functools.partial(lm_objective, loss_chunk=loss_chunk)
        step = jax.jit(make_train_step(cfg, opt, schedule, objective, 1, partitioner),
                       in_shardings=(shardings, partitioner.batch_sharding),
                       out_shardings=(shardings, partitioner.replicated),
                       donate_argnums=0)
        t0 = time.perf_counter()
        state, metrics = step(state, data)
        loss = float(metrics["loss"])
        compile_s = time.perf_counter() - t0

        def run(n: int) -> None:
            nonlocal state, metrics
            for _ in range(n):
                state, metrics = step(state, data)
            jax.block_until_ready((state, metrics))

        run(1)  # one more warm-up
        t0 = time.perf_counter()
        run(steps)
        step_s = (time.perf_counter() - t0) / steps
        profiled = profile(lambda: run(PROFILED_STEPS), profile_path) if profile_path else None
    tokens_per_s = batch * seq_len / step_s
    flops = sizes.flops_per_token(cfg, seq_len)
    peak = hardware.peak_flops_per_device() * jax.device_count()
    result = {"batch": batch, "seq_len": seq_len, "optimizer": optimizer, "step_s": step_s,
              "tokens_per_s": tokens_per_s, "mfu": tokens_per_s * flops / peak,
              "model_tflops_per_s": tokens_per_s * flops / 1e12, "first_step_s": compile_s,
              "loss": loss, "steps_timed": steps}
    if profiled is not None:
        result["profile"] = {"steps": PROFILED_STEPS, **profiled}
    return result


def profile(fn, out_path: str) -> dict:
    """Run fn under jax.profiler; keep its trace at out_path and return where the device
    time went (bench/profile_summary.py). A profiler that fails costs the figure, not the run."""
    from profile_summary import summarize
    tmp = tempfile.mkdtemp()
    try:
        # device kernels only: no Python call stacks or HLO protos, which would make the
        # trace too big to bring back
        options = jax.profiler.ProfileOptions()
        options.python_tracer_level, options.host_tracer_level = 0, 1
        options.enable_hlo_proto = False
        with jax.profiler.trace(tmp, profiler_options=options):
            fn()
        found = glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True)
        if not found:
            return {"error": "the profiler wrote no trace"}
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        shutil.move(found[0], out_path)
        return summarize(out_path, top=15)
    except Exception as e:  # no CUPTI, say
        return {"error": f"{type(e).__name__}: {e}"[:500]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def largest_batch_train(name: str, cfg: DecoderConfig, batches, seq_len: int, optimizer: str,
                        steps: int, budget: Budget, loss_chunk: int = 0,
                        profile_dir: str = "") -> dict:
    """Try batch sizes from the largest down; the first that fits is measured (and, with
    profile_dir, profiled into <profile_dir>/<model>_c<chunk>_<remat>_<attention>.xplane.pb)."""
    profile_path = ""
    if profile_dir:
        tag = f"{name}_c{loss_chunk}_{cfg.remat_policy}_{cfg.attention_impl}"
        profile_path = os.path.join(profile_dir, f"{tag}.xplane.pb")
    attempts = []
    limit = device_memory_bytes()
    setup = {"kind": "train", "model": name, "loss_chunk": loss_chunk,
             "remat_policy": cfg.remat_policy, "attention_impl": cfg.attention_impl}
    for b in sorted(batches, reverse=True):
        if limit and train_bytes_lower_bound(cfg, b, seq_len, optimizer, loss_chunk) > limit:
            attempts.append({"batch": b, "skipped": "needs more than the device memory"})
            continue
        if budget.left() <= 0:
            attempts.append({"batch": b, "skipped": "time budget spent"})
            break
        try:
            result = measure_train(cfg, b, seq_len, optimizer, steps, loss_chunk, profile_path)
        except Exception as e:  # XlaRuntimeError, or a compile-time OOM (ValueError, ...)
            free_device_memory()
            if not is_oom(e):  # a set-up this device can't run: say why, go on to the next
                return emit({**setup, "batch": b, "error": f"{type(e).__name__}: {e}"[:2000],
                             "attempts": attempts})
            attempts.append({"batch": b, "oom": True})
            continue
        free_device_memory()
        return emit({**setup, **result, "attempts": attempts})
    return emit({**setup, "error": "no batch size fit or budget spent", "attempts": attempts})


# ----------------------------------------------------------------------------- decoding


def measure_decode(name: str, cfg: DecoderConfig, prompts: int, samples: int, prompt_len: int,
                   decode_len: int, budget: Budget) -> dict:
    from mathft_jax.sampling import decoding
    from mathft_jax.models.decoder import init_params
    if budget.left() <= 0:
        return emit({"kind": "decode", "model": name, "skipped": "time budget spent"})
    # weights replicated, batch split
    partitioner = partitioning.Partitioner.create(cfg, partitioning.make_mesh(data=-1, fsdp=1))
    shardings = partitioner.param_shardings(cfg)
    bf16 = cfg.replace(param_dtype="bfloat16")  # decoding reads bf16 weights

    def init(rng):
        import flax.linen as nn
        return nn.unbox(init_params(bf16, rng))

    try:
        params = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(0))
        rng = np.random.default_rng(0)
        batch = [[int(t) for t in rng.integers(1, cfg.vocab_size, prompt_len)] for _ in range(prompts)]
        sp = decoding.SamplingParams(num_samples=samples, max_decode_len=decode_len,
                                     temperature=1.0, eos_id=-1)
        run = lambda: decoding.generate(params, cfg, batch, sp, seed=0,  # noqa: E731
                                        partitioner=partitioner)
        t0 = time.perf_counter()
        run()
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = run()
        wall = time.perf_counter() - t0
    except Exception as e:
        if not is_oom(e):
            raise
        free_device_memory()
        return emit({"kind": "decode", "model": name, "prompts": prompts, "samples": samples,
                     "oom": True})
    generated = int(out.lengths.sum())
    free_device_memory()
    return emit({"kind": "decode", "model": name, "prompts": prompts, "samples": samples,
                 "sequences": prompts * samples, "prompt_len": prompt_len,
                 "decode_len": decode_len, "generated_tokens": generated, "wall_s": wall,
                 "tokens_per_s": generated / wall, "first_call_s": first_s,
                 "params_dtype": "bfloat16"})


# ----------------------------------------------------------------------------- sizing


def train_state_bytes(cfg: DecoderConfig) -> int:
    """float32 params + gradients; Adafactor's factored statistics are negligible."""
    return 2 * sizes.param_bytes(cfg, "float32")


def largest_fitting(predicate_bytes, fraction: float, limit: int | None) -> str | None:
    if limit is None:
        return None
    for name in PALM_LARGER:
        if predicate_bytes(load_config(name)) < fraction * limit:
            return name
    return None


# ----------------------------------------------------------------------------- main


def parse_variants(text: str) -> list:
    """'0:dots_no_batch,256:none:cudnn' -> [(0, 'dots_no_batch', 'xla'), (256, 'none', 'cudnn')]:
    LOSS_CHUNK[:REMAT_POLICY[:ATTENTION_IMPL]] per palm_1b training set-up."""
    out = []
    for item in text.split(","):
        chunk, remat, attention = (item.split(":") + ["", ""])[:3]
        out.append((int(chunk), remat or "dots_no_batch", attention or "xla"))
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny model, CPU, seconds")
    p.add_argument("--budget_s", type=float, default=360.0,
                   help="stop starting measurements after this many seconds")
    p.add_argument("--seq_len", type=int, default=2048)
    p.add_argument("--batches", default="64,32,16,8,4", help="train batch sizes to try")
    p.add_argument("--steps", type=int, default=5, help="timed train steps")
    p.add_argument("--train_variants",
                   default="256:dots_no_batch,256:dots_no_batch:cudnn,256:none:cudnn,0:dots_no_batch",
                   help="palm_1b training is measured once per LOSS_CHUNK:REMAT_POLICY:ATTENTION, "
                        "in order: chunk 0 = full logits, n = output projection fused with the "
                        "loss n positions at a time; the remat policies of models/decoder.py; "
                        "attention 'xla' or 'cudnn' (flash attention, DecoderConfig.attention_impl)")
    p.add_argument("--decode_prompts", type=int, default=16)
    p.add_argument("--decode_samples", type=int, default=16)
    p.add_argument("--prompt_len", type=int, default=256)
    p.add_argument("--decode_len", type=int, default=256)
    p.add_argument("--fit_fraction", type=float, default=0.75,
                   help="a larger config is tried if its estimate is below this share of memory")
    p.add_argument("--out", default="", help="also write the summary JSON here")
    p.add_argument("--profile_dir", default="",
                   help="profile 2 steps of each palm_1b set-up after timing it: the traces "
                        "go here, where the device time went goes in the results")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    budget = Budget(a.budget_s)
    started = time.perf_counter()
    dev = jax.devices()[0]
    limit = device_memory_bytes()
    summary = {"device_kind": dev.device_kind, "device_count": jax.device_count(),
               "backend": jax.default_backend(), "jax": jax.__version__,
               "python": platform.python_version(), "memory_bytes_limit": limit,
               "peak_flops_per_device": hardware.peak_flops_per_device(),
               "peak_is_published": hardware.published_peak_flops() is not None}
    emit({"kind": "machine", **summary})
    batches = [int(b) for b in a.batches.split(",")]
    results = []
    if a.smoke:
        cfg = DecoderConfig(**SMOKE_TINY).validate()
        # the cuDNN set-up fails on a CPU: the run records why and goes on
        for chunk, remat, attention in parse_variants("0:none,8:full,8:full:cudnn"):
            variant = cfg.replace(remat_policy=remat, attention_impl=attention)
            results.append(largest_batch_train("smoke_tiny", variant, [8, 4], 32, "adamw", 2,
                                               budget, chunk, a.profile_dir))
        results.append(measure_decode("smoke_tiny", cfg, 2, 2, 8, 8, budget))
    else:
        palm_1b = load_config("palm_1b")
        for chunk, remat, attention in parse_variants(a.train_variants):
            variant = palm_1b.replace(remat_policy=remat, attention_impl=attention)
            results.append(largest_batch_train("palm_1b", variant, batches, a.seq_len, "adamw",
                                               a.steps, budget, chunk, a.profile_dir))
        results.append(measure_decode("palm_1b", palm_1b, a.decode_prompts, a.decode_samples,
                                      a.prompt_len, a.decode_len, budget))
        big_train = largest_fitting(train_state_bytes, a.fit_fraction, limit)
        if big_train:
            results.append(largest_batch_train(big_train, load_config(big_train),
                                               [b for b in batches if b <= 8], a.seq_len,
                                               "adafactor", a.steps, budget))
        else:
            results.append(emit({"kind": "train", "model": "larger PaLM",
                                 "skipped": "no palm_8b/62b/540b training state fits"}))
        big_decode = largest_fitting(lambda c: sizes.param_bytes(c, "bfloat16"), a.fit_fraction,
                                     limit)
        if big_decode:
            results.append(measure_decode(big_decode, load_config(big_decode), a.decode_prompts,
                                          a.decode_samples, a.prompt_len, a.decode_len, budget))
    summary.update(results=results, total_s=time.perf_counter() - started)
    print(json.dumps({"kind": "summary", **summary}), flush=True)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    main()

"""Decode throughput (tokens/s) with and without shared prefill, and the HBM-bandwidth bound.

    python bench/decode.py --gin_file=gin_configs/models/tiny.gin --num_samples=1,16,64
    python bench/decode.py --gin_file=gin_configs/models/palm_1b.gin --batch=64 \\
        --num_samples=64 --prompt_len=256 --decode_len=256 --hbm_bandwidth_gbps=4800

`--batch` is the number of sequences decoded together (prompts = batch / N); without it one
prompt per N. Every sequence decodes exactly --decode_len tokens (no EOS). tokens/s counts
generated tokens over the whole call (prefill included: that is what sharing saves).
The bound: each decode step reads every weight once and every sequence's whole KV cache
(attention reads all allocated slots, masked), so tokens/s <= batch * bandwidth / bytes.
Needs jax, flax and gin-config only (no seqio/TensorFlow). Writes JSON to bench/out/.

`--workload=math_spread`: static batching (`decoding.generate`, --spread_batches batches of
--spread_rows rows = rows / N prompts x N samples) against the continuous-batching engine
(`sampling.engine`, --spread_rows slots, every prompt in one queue, prefilled in the static
batches' groups), on prompts of --prompt_len tokens whose samples end with the lengths of
MATH's reference solutions (../shared/data/math/train.jsonl: characters /
--chars_per_token, + EOS, capped at --decode_len). A random model never chooses its length,
so the bench sets the EOS probability of each step to the hazard of that distribution
(`eos_hazard`); the samples' lengths are then i.i.d. draws from it, the same in both engines
(checked: the two sets of samples are compared token for token). Reports useful tokens/s
(every generated token, EOS included, over the wall time of the whole workload, prefill
included, after a warm-up pass that compiles) and `live_fraction`, the share of slot-steps
(rows x decode steps run) that produced a token; for the engine also `queued_live_fraction`,
the same share over the chunks that began with samples still queued (a long run's steady
state, without the final drain as the last samples finish one by one).

    python bench/decode.py --gin_file=gin_configs/models/tiny.gin --workload=math_spread \
        --num_samples=64,16 --prompt_len=128 --decode_len=384 --spread_rows=128 --spread_batches=8

Measured 2026-12-01 18:10 UTC with that command (jax 0.10.2, CPU, float32) on the 2-core Xeon
VM shared with 4 other sessions (busy: load average 6-10, so seconds are noisy; the
live fractions are exact counts). tiny model (1.0M), 1,024 samples per N, solution lengths
mean 133, p50 104, p90 282, capped at 384 tokens; 128 static rows = 128 engine slots,
chunk 16. Both engines gave the same samples, token for token.

| N | engine | useful tok/s | live slot-steps | steady-state live | speed-up |
| ---: | --- | ---: | ---: | ---: | ---: |
| 64 | static | 2,947 | 34.8% | | 1.00x |
| 64 | continuous | 7,309 | 91.4% | 95.0% | 2.48x |
| 16 | static | 2,432 | 34.5% | | 1.00x |
| 16 | continuous | 7,127 | 91.7% | 95.0% | 2.93x |

small_20m (18.9M), 18:16 UTC, same machine and settings but --spread_rows=64
--spread_batches=4 (256 samples per N, 4 per slot, so the drain weighs more); same samples:

| N | engine | useful tok/s | live slot-steps | steady-state live | speed-up |
| ---: | --- | ---: | ---: | ---: | ---: |
| 64 | static | 585 | 35.7% | | 1.00x |
| 64 | continuous | 1,231 | 89.3% | 95.4% | 2.11x |
| 16 | static | 555 | 35.3% | | 1.00x |
| 16 | continuous | 1,285 | 90.0% | 95.3% | 2.31x |

Attention over the filled part only (`Attention._cache_attention`), against the softmax over
the whole cache before it (commit 91342e7), fixed workload, tiny, N=64, 128 + 384 tokens,
`--shared=yes --runs=2`, same busy machine: 11,656 and 9,973 tok/s before (two runs), 10,027
after: no difference that this machine can resolve on tiny (attention is a third of its
FLOPs at 512 slots and the loop has a per-block cost); the change was made for exactness.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mathft_jax.core import gin_utils  # noqa: E402
from mathft_jax.models.config import DecoderConfig  # noqa: E402
from mathft_jax.sampling import batching, decoding
from mathft_jax.models import count_params, kv_cache_bytes_per_token  # noqa: E402
from mathft_jax.models.decoder import init_params  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gin_file", action="append", default=[], help="model gin file(s)")
    p.add_argument("--gin_bindings", action="append", default=[])
    p.add_argument("--num_samples", default="1,16,64", help="comma-separated N values")
    p.add_argument("--batch", type=int, default=0, help="sequences per call (default: N)")
    p.add_argument("--prompt_len", type=int, default=128)
    p.add_argument("--decode_len", type=int, default=64)
    p.add_argument("--runs", type=int, default=2, help="timed calls after one warm-up")
    p.add_argument("--shared", default="both", choices=("both", "yes", "no"))
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (no sampling cost)")
    p.add_argument("--hbm_bandwidth_gbps", type=float, default=0.0,
                   help="memory bandwidth for the bound (H100 SXM 3350, H200 4800)")
    p.add_argument("--out", default="", help="JSON path (default bench/out/decode_<model>.json)")
    p.add_argument("--workload", default="fixed", choices=("fixed", "math_spread"),
                   help="fixed: every sample decodes --decode_len; math_spread: see above")
    p.add_argument("--spread_rows", type=int, default=128,
                   help="math_spread: rows of a static batch = the engine's slots (N divides it)")
    p.add_argument("--spread_batches", type=int, default=8,
                   help="math_spread: static batches in the workload (prompts = this x rows / N)")
    p.add_argument("--chars_per_token", type=float, default=4.0,
                   help="math_spread: solution characters per token (a subword tokenizer's ~4)")
    p.add_argument("--chunk", type=int, default=16, help="math_spread: engine steps per refill")
    return p.parse_args(argv)


def bound(cfg, rows: int, cache_len: int, bandwidth_gbps: float) -> dict:
    weight_bytes = count_params(cfg) * np.dtype(cfg.param_dtype).itemsize
    cache_bytes = rows * cache_len * kv_cache_bytes_per_token(cfg)
    out = {"weight_bytes": weight_bytes, "kv_cache_bytes_per_step": cache_bytes}
    if bandwidth_gbps:
        out["bound_tokens_per_s"] = rows * bandwidth_gbps * 1e9 / (weight_bytes + cache_bytes)
    return out


def measure(params, cfg, n: int, prompts: int, shared: bool, args) -> dict:
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, cfg.vocab_size, size=(prompts, args.prompt_len)).tolist()
    sp = decoding.SamplingParams(num_samples=n, max_decode_len=args.decode_len,
                                 temperature=args.temperature,
                                 eos_id=-1, share_prefill=shared)
    t0 = time.perf_counter()
    decoding.generate(params, cfg, tokens, sp, seed=0)  # compiles
    compile_s = time.perf_counter() - t0
    times = []
    for run in range(args.runs):
        t0 = time.perf_counter()
        out = decoding.generate(params, cfg, tokens, sp, seed=run + 1)
        times.append(time.perf_counter() - t0)
    generated = int(out.lengths.sum())
    assert generated == prompts * n * args.decode_len
    seconds = statistics.median(times)
    rows = prompts * n
    cache_len = batching.bucket_length(args.prompt_len) + args.decode_len
    result = {"num_samples": n, "prompts": prompts, "sequences": rows, "shared_prefill": shared,
              "seconds": seconds, "tokens_per_s": generated / seconds, "first_call_s": compile_s,
              **bound(cfg, rows, cache_len, args.hbm_bandwidth_gbps)}
    if "bound_tokens_per_s" in result:
        # Decode steps alone: the bound covers them, not the prefill.
        result["fraction_of_bound"] = result["tokens_per_s"] / result["bound_tokens_per_s"]
    return result


# ----------------------------------------------------------------------------- math_spread


EOS = 1


def solution_lengths(decode_len: int, chars_per_token: float):
    """Tokens (EOS included) of MATH's training reference solutions, capped at decode_len;
    None (with a message) where the data is absent."""
    from mathft_jax.data.paths import data_root
    path = data_root() / "math" / "train.jsonl"
    if not path.exists():
        print(f"skipping the math_spread workload: {path} not found (set MATHFT_DATA_DIR)")
        return None
    with open(path) as f:
        chars = np.array([len(json.loads(line)["solution"]) for line in f if line.strip()])
    return np.minimum(np.ceil(chars / chars_per_token).astype(int) + 1, decode_len)


def eos_hazard(lengths: np.ndarray, decode_len: int) -> np.ndarray:
    """h[t] = P(length = t + 1 | length > t): EOS at step t with this probability gives
    lengths distributed as `lengths`."""
    pmf = np.bincount(lengths, minlength=decode_len + 1)[1:decode_len + 1] / len(lengths)
    survival = pmf[::-1].cumsum()[::-1]  # P(length >= t + 1)
    return np.where(survival > 0, pmf / np.maximum(survival, 1e-12), 1.0)


def install_eos_hazard(hazard: np.ndarray, prompt_len: int) -> None:
    """Both engines decode through `decoding.extend`: wrap it so the EOS logit makes EOS's
    probability at sample step t (cache slot prompt_len - 1 + t) hazard[t] under temperature
    1, whatever the model says (its other tokens keep their relative odds)."""
    h = np.clip(hazard, 1e-9, 1 - 1e-6)  # finite log-odds
    table = jnp.asarray(np.log(h) - np.log1p(-h), jnp.float32)
    real = decoding.extend

    def extend(params, cfg, tokens, cache, cache_index):
        logits, cache = real(params, cfg, tokens, cache, cache_index)
        step = jnp.clip(cache_index - (prompt_len - 1), 0, len(hazard) - 1)
        others = jax.nn.logsumexp(logits.at[..., EOS].set(-jnp.inf), axis=-1)  # [b, t]
        return logits.at[..., EOS].set(others + table[step][:, None]), cache

    decoding.extend = extend


def measure_spread(params, cfg, n: int, args) -> list:
    from mathft_jax.sampling import engine
    batch = max(1, args.spread_rows // n)  # prompts per static batch
    rng = np.random.default_rng(0)
    size = (args.spread_batches * batch, args.prompt_len)
    prompts = rng.integers(3, cfg.vocab_size, size=size).tolist()
    sp = decoding.SamplingParams(num_samples=n, max_decode_len=args.decode_len, temperature=1.0,
                                 eos_id=EOS)

    def static():
        out, slot_steps = [], 0
        for b in range(0, len(prompts), batch):
            s = decoding.generate(params, cfg, prompts[b:b + batch], sp, seed=0,
                                  prompt_ids=list(range(b, b + batch)))
            out.append(s)
            slot_steps += s.lengths.size * int(s.lengths.max())  # the loop runs to the longest
        tokens = np.concatenate([s.tokens for s in out])
        lengths = np.concatenate([s.lengths for s in out])
        return decoding.Samples(tokens, lengths), slot_steps

    def continuous():
        stats = engine.Stats()
        s = engine.generate(params, cfg, prompts, sp, seed=0, slots=batch * n, chunk=args.chunk,
                            prefill_group=batch, stats=stats)
        extra["queued_live_fraction"] = stats.queued_live_fraction
        return s, stats.slot_steps

    extra = {}

    results, reference = [], None
    for name, fn in (("static", static), ("continuous", continuous)):
        t0 = time.perf_counter()
        fn()  # compiles
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        samples, slot_steps = fn()
        seconds = time.perf_counter() - t0
        if reference is None:
            reference = samples
        same = (np.array_equal(samples.tokens, reference.tokens)
                and np.array_equal(samples.lengths, reference.lengths))
        tokens = int(samples.lengths.sum())
        results.append({
            "workload": "math_spread", "engine": name, "num_samples": n, "prompts": len(prompts),
            "rows_or_slots": batch * n, "chunk": args.chunk if name != "static" else None,
            "useful_tokens": tokens, "slot_steps": slot_steps, "live_fraction": tokens / slot_steps,
            "seconds": seconds, "useful_tokens_per_s": tokens / seconds, "first_call_s": first,
            "same_samples_as_static": same, **(extra if name == "continuous" else {}),
            "mean_length": float(samples.lengths.mean()), "max_length": int(samples.lengths.max())})
        results[-1]["speedup_vs_static"] = (results[-1]["useful_tokens_per_s"]
                                            / results[0]["useful_tokens_per_s"])
    return results


def machine() -> dict:
    dev = jax.devices()[0]
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "device_kind": dev.device_kind, "backend": jax.default_backend(),
            "device_count": jax.device_count(), "jax": jax.__version__, "python": platform.python_version()}


def main(argv=None) -> None:
    args = parse_args(argv)
    gin_utils.parse_gin(args.gin_file, args.gin_bindings)
    cfg = DecoderConfig().validate()
    params = nn.unbox(jax.jit(init_params, static_argnums=0)(cfg, jax.random.PRNGKey(0)))
    shared_opts = {"both": (True, False), "yes": (True,), "no": (False,)}[args.shared]
    results = []
    if args.workload == "math_spread":
        lengths = solution_lengths(args.decode_len, args.chars_per_token)
        if lengths is None:
            return
        print(json.dumps({"solution_tokens": {"mean": float(lengths.mean()),
                                              "p50": float(np.percentile(lengths, 50)),
                                              "p90": float(np.percentile(lengths, 90)),
                                              "max": int(lengths.max())}}), flush=True)
        install_eos_hazard(eos_hazard(lengths, args.decode_len), args.prompt_len)
    for n in [int(x) for x in args.num_samples.split(",")]:
        if args.workload == "math_spread":
            for r in measure_spread(params, cfg, n, args):
                print(json.dumps(r), flush=True)
                results.append(r)
            continue
        prompts = max(1, args.batch // n) if args.batch else 1
        for shared in shared_opts:
            r = measure(params, cfg, n, prompts, shared, args)
            print(json.dumps(r), flush=True)
            results.append(r)
    model = os.path.splitext(os.path.basename(args.gin_file[-1]))[0] if args.gin_file else "default"
    report = {"model": model, "params": count_params(cfg), "prompt_len": args.prompt_len,
              "decode_len": args.decode_len, "temperature": args.temperature,
              "dtype": cfg.dtype, "param_dtype": cfg.param_dtype,
              "command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
              "machine": machine(), "results": results}
    suffix = "" if args.workload == "fixed" else f"_{args.workload}"
    out = args.out or os.path.join(gin_utils.REPO_ROOT, "bench", "out",
                                   f"decode_{model}{suffix}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

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
import numpy as np  # noqa: E402

from mathft_jax import decoding, gin_utils  # noqa: E402
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
    cache_len = decoding.bucket_length(args.prompt_len) + args.decode_len
    result = {"num_samples": n, "prompts": prompts, "sequences": rows, "shared_prefill": shared,
              "seconds": seconds, "tokens_per_s": generated / seconds, "first_call_s": compile_s,
              **bound(cfg, rows, cache_len, args.hbm_bandwidth_gbps)}
    if "bound_tokens_per_s" in result:
        # Decode steps alone: the bound covers them, not the prefill.
        result["fraction_of_bound"] = result["tokens_per_s"] / result["bound_tokens_per_s"]
    return result


def machine() -> dict:
    dev = jax.devices()[0]
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "device_kind": dev.device_kind, "backend": jax.default_backend(),
            "device_count": jax.device_count(), "jax": jax.__version__, "python": platform.python_version()}


def main(argv=None) -> None:
    args = parse_args(argv)
    gin_utils.parse_gin(args.gin_file, args.gin_bindings)
    cfg = gin_utils.model_config().validate()
    params = nn.unbox(jax.jit(init_params, static_argnums=0)(cfg, jax.random.PRNGKey(0)))
    shared_opts = {"both": (True, False), "yes": (True,), "no": (False,)}[args.shared]
    results = []
    for n in [int(x) for x in args.num_samples.split(",")]:
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
    out = args.out or os.path.join(gin_utils.REPO_ROOT, "bench", "out", f"decode_{model}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""The sampler's per-step draw: ours against JAX's built-ins, on this machine.

    .venv/bin/python bench/sampler.py [--rows=64] [--vocabs=256,4096,32000,256000] [--runs=200]

Times, for logits [rows, V] float32 under jit: `decoding.categorical` (inverse CDF, one
uniform per row) against `jax.vmap(jax.random.categorical)` (V Gumbel draws per row), and
`jnp.argmax` (greedy decoding) for scale. Each figure is the mean over --runs calls
after two warm-up calls. Writes bench/out/sampler.json with the machine and the command.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from mathft_jax.sampling import decoding  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parent / "out" / "sampler.json"


def mean_ms(fn, *args, runs: int) -> float:
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(runs):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / runs * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--vocabs", default="256,4096,32000,256000")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    keys = decoding.sample_keys(jnp.int32(0), jnp.arange(args.rows))
    gumbel = jax.jit(jax.vmap(jax.random.categorical))
    ours = jax.jit(decoding.categorical)
    argmax = jax.jit(lambda x: jnp.argmax(x, axis=-1))
    rows = []
    for vocab in map(int, args.vocabs.split(",")):
        logits = jnp.asarray(np.random.RandomState(0).randn(args.rows, vocab), jnp.float32)
        runs = max(5, args.runs * 4096 // max(vocab, 4096))  # fewer calls for large V
        row = {"vocab": vocab, "rows": args.rows,
               "gumbel_ms": mean_ms(gumbel, keys, logits, runs=runs),
               "inverse_cdf_ms": mean_ms(ours, keys, logits, runs=runs),
               "argmax_ms": mean_ms(argmax, logits, runs=runs)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"command": " ".join([sys.executable] + sys.argv), "rows": rows,
              "machine": {"platform": platform.platform(), "cores": os.cpu_count(),
                          "load_average_at_end": os.getloadavg(), "jax": jax.__version__,
                          "devices": str(jax.devices())}}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("| rows x V | jax.random.categorical | decoding.categorical | jnp.argmax (greedy) |\n"
          "| --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['rows']} x {r['vocab']:,} | {r['gumbel_ms']:.3f} ms | {r['inverse_cdf_ms']:.3f} ms "
              f"| {r['argmax_ms']:.3f} ms |")


if __name__ == "__main__":
    main()

"""Ours against transformers on identical weights, in one run on this machine's CPU.

    .venv/bin/python bench/vs_transformers.py [--models=tiny,small] [--repeats=5] [--cores=1]

For each model (a tiny and a ~20M-parameter Llama-shaped model, built with transformers
and imported with `mathft_jax.convert.hf.load_hf`):
  - decoding: tokens/s of `mathft_jax.sampling.decoding.generate` against transformers'
    `generate` (KV cache on), greedy and sampled (temperature 1, no top-k/top-p), N = 1, 16
    and 64 sequences of one prompt, fixed-length generation (our EOS id is -1, theirs is
    None with min_new_tokens = max_new_tokens), so both produce exactly N * G tokens;
  - training: one step (forward, backward, AdamW update) of ours (jit(value_and_grad) +
    optax.adamw) against torch (loss.backward + torch.optim.AdamW), same batch.
Compile time is excluded (reported separately); each figure is the median of --repeats
timed runs, alternating ours and theirs, after two warm-up runs each. Prints a table with
ratios (ours' speed / theirs) and writes bench/out/vs_transformers.json with the machine
and the command.

--matmuls (or --models= to run only them) also times the 20M model's matmul shapes alone,
float32 `a @ b` under jax.jit against torch, as GFLOP/s (bench/out/vs_transformers_matmuls*.json):
what each library's kernels give where both sides are matmul-bound.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import transformers

from mathft_jax.sampling import decoding
from mathft_jax.convert import hf
from mathft_jax.models import Decoder

OUT = pathlib.Path(__file__).resolve().parent / "out" / "vs_transformers.json"
MODELS = {  # Llama-shaped: GQA, SwiGLU, RMSNorm, untied
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
    "small": dict(vocab_size=4096, hidden_size=384, intermediate_size=1024, num_hidden_layers=10,
                  num_attention_heads=6, num_key_value_heads=2),
}
PROMPT_LEN, GEN_LEN = 16, 32
# The small model's matmuls: M = 64 decode rows, or 8 x 64 training tokens; d 384, mlp 1024,
# vocab 4096.
MATMULS = [(64, 384, 1024), (64, 1024, 384), (64, 384, 4096), (512, 384, 1024),
           (512, 1024, 384), (512, 384, 4096)]
TRAIN_BATCH, TRAIN_LEN = 8, 64


def compare(ours, theirs, repeats: int):
    """(ours' compile seconds, ours' median seconds, theirs' median seconds).

    Two warm-up calls each (a jitted step's outputs may carry other shardings than its
    first inputs, which compiles once more), then `repeats` timed calls alternating
    ours/theirs, so a load change on a shared CPU hits both sides alike."""
    start = time.perf_counter()
    ours()
    first = time.perf_counter() - start
    ours()
    theirs()
    theirs()
    times = {ours: [], theirs: []}
    for _ in range(repeats):
        for fn in (ours, theirs):
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    ours_s, theirs_s = statistics.median(times[ours]), statistics.median(times[theirs])
    return max(first - ours_s, 0.0), ours_s, theirs_s


def build(name: str, tmp: pathlib.Path):
    config = transformers.LlamaConfig(**MODELS[name], max_position_embeddings=256)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp / name)
    cfg, params = hf.load_hf(tmp / name, dtype="float32")
    return model, cfg, params


def bench_decode(model, cfg, params, n: int, greedy: bool, repeats: int) -> dict:
    prompt = np.random.RandomState(0).randint(3, cfg.vocab_size, PROMPT_LEN).tolist()
    sampling = decoding.SamplingParams(num_samples=n, max_decode_len=GEN_LEN,
                                       temperature=0.0 if greedy else 1.0, eos_id=-1)

    def ours():
        out = decoding.generate(params, cfg, [prompt], sampling, seed=0)
        assert out.tokens.shape == (1, n, GEN_LEN) and (out.lengths == GEN_LEN).all()

    input_ids = torch.tensor([prompt] * n)
    kwargs = dict(max_new_tokens=GEN_LEN, min_new_tokens=GEN_LEN, do_sample=not greedy,
                  use_cache=True, eos_token_id=None, pad_token_id=0)
    if not greedy:
        kwargs.update(temperature=1.0, top_k=0, top_p=1.0)

    def theirs():
        with torch.no_grad():
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        assert out.shape == (n, PROMPT_LEN + GEN_LEN)

    compile_s, ours_s, theirs_s = compare(ours, theirs, repeats)
    tokens = n * GEN_LEN
    return {"ours_tok_s": tokens / ours_s, "transformers_tok_s": tokens / theirs_s,
            "ratio": theirs_s / ours_s, "ours_compile_s": compile_s}


def bench_train(model, cfg, params, repeats: int) -> dict:
    rng = np.random.RandomState(1)
    tokens = rng.randint(0, cfg.vocab_size, (TRAIN_BATCH, TRAIN_LEN + 1))
    inputs, targets = jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])
    tx = optax.adamw(1e-4, weight_decay=0.01)

    def loss_fn(p):
        logits = Decoder(cfg).apply({"params": p}, inputs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    @jax.jit
    def step(p, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    state = [params, tx.init(params)]

    def ours():
        state[0], state[1], loss = step(*state)
        loss.block_until_ready()

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    t_in, t_out = torch.tensor(tokens[:, :-1]), torch.tensor(tokens[:, 1:])

    def theirs():
        logits = model(t_in).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), t_out.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    compile_s, ours_s, theirs_s = compare(ours, theirs, repeats)
    model.eval()
    return {"ours_step_s": ours_s, "transformers_step_s": theirs_s, "ratio": theirs_s / ours_s,
            "ours_compile_s": compile_s, "tokens_per_step": TRAIN_BATCH * TRAIN_LEN}


def bench_matmul(m: int, k: int, n: int, repeats: int, calls: int = 50) -> dict:
    """GFLOP/s of one float32 [m, k] @ [k, n], ours (jit) and torch's, median of repeats."""
    rng = np.random.RandomState(0)
    a, b = rng.randn(m, k).astype(np.float32), rng.randn(k, n).astype(np.float32)
    ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
    matmul = jax.jit(jnp.matmul)

    def ours():
        for _ in range(calls):
            out = matmul(ja, jb)
        out.block_until_ready()

    def theirs():
        for _ in range(calls):
            torch.matmul(ta, tb)

    _, ours_s, theirs_s = compare(ours, theirs, repeats)
    flops = 2 * m * k * n * calls
    return {"shape": [m, k, n], "ours_gflop_s": flops / ours_s / 1e9,
            "torch_gflop_s": flops / theirs_s / 1e9}


def limit_cores(n: int) -> None:
    """Before JAX's backend starts: this process (and every thread either library starts)
    may run on n cores only, and torch uses n threads. Pinning is what binds XLA:CPU: its
    flags (--xla_cpu_multi_thread_eigen=false) left it at ~155% CPU on 2 cores."""
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:n])
    torch.set_num_threads(n)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor()) if os.path.exists(
        "/proc/cpuinfo") else platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "cores_allowed": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": os.getloadavg(), "xla_flags": os.environ.get("XLA_FLAGS", ""),  # the CPU may be shared: read with care
            "platform": platform.platform(), "python": platform.python_version(),
            "jax": jax.__version__, "jax_devices": str(jax.devices()), "torch": torch.__version__,
            "transformers": transformers.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,small", help="'' to skip the models")
    parser.add_argument("--matmuls", action="store_true", help="also time MATMULS alone")
    parser.add_argument("--out", default="", help="the JSON's path (default: bench/out/...)")
    parser.add_argument("--samples", default="1,16,64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cores", type=int, default=0,
                        help="cores for both sides, by CPU affinity (0: all, each library's "
                             "default threads)")
    args = parser.parse_args()
    if args.cores:
        limit_cores(args.cores)
    result = {"command": " ".join([sys.executable] + sys.argv), "machine": machine(),
              "prompt_len": PROMPT_LEN, "gen_len": GEN_LEN, "train_batch": TRAIN_BATCH,
              "train_len": TRAIN_LEN, "models": {}}
    rows = []
    if args.matmuls or not args.models:
        result["matmuls"] = [bench_matmul(*shape, args.repeats) for shape in MATMULS]
        for r in result["matmuls"]:
            print(r, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in filter(None, args.models.split(",")):
            model, cfg, params = build(name, pathlib.Path(tmp))
            n_params = sum(p.numel() for p in model.parameters())
            entry = result["models"][name] = {"params": n_params, "decode": {}}
            for n in map(int, args.samples.split(",")):
                for mode in ("greedy", "sampled"):
                    r = bench_decode(model, cfg, params, n, mode == "greedy", args.repeats)
                    entry["decode"][f"{mode}_N{n}"] = r
                    rows.append((name, f"decode {mode} N={n} (tok/s)", r["ours_tok_s"],
                                 r["transformers_tok_s"], r["ratio"]))
                    print(rows[-1], flush=True)
            r = entry["train_step"] = bench_train(model, cfg, params, args.repeats)
            rows.append((name, f"train step B={TRAIN_BATCH} T={TRAIN_LEN} (steps/s)",
                         1 / r["ours_step_s"], 1 / r["transformers_step_s"], r["ratio"]))
            print(rows[-1], flush=True)
    stem = OUT.stem + ("" if args.models else "_matmuls") + (f"_cores{args.cores}" if args.cores else "")
    out = pathlib.Path(args.out) if args.out else OUT.with_name(stem + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nmachine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
          f"{result['machine']['cores_allowed']} allowed, torch threads "
          f"{result['machine']['torch_threads']}; wrote {out}")
    print("| model | what | ours | transformers | ours / transformers |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, what, ours, theirs, ratio in rows:
        print(f"| {name} ({result['models'][name]['params'] / 1e6:.1f}M) | {what} | "
              f"{ours:,.1f} | {theirs:,.1f} | {ratio:.2f}x |")
    for r in result.get("matmuls", []):
        m, k, n = r["shape"]
        print(f"| matmul | [{m}, {k}] @ [{k}, {n}] (GFLOP/s) | {r['ours_gflop_s']:,.1f} | "
              f"{r['torch_gflop_s']:,.1f} | {r['ours_gflop_s'] / r['torch_gflop_s']:.2f}x |")


if __name__ == "__main__":
    main()

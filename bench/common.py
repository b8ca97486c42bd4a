"""Shared by the bench scripts: model configs from gin files, machine facts, timing, JSON."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402


def model_config(gin_files, bindings=(), **overrides):
    """The DecoderConfig of these model gin files (plus field overrides), validated."""
    import gin
    from mathft_jax.core import gin_utils
    from mathft_jax.models.config import DecoderConfig
    gin.clear_config()
    gin_utils.parse_gin(gin_files, bindings)
    cfg = DecoderConfig().replace(**overrides).validate()
    gin.clear_config()
    return cfg


def machine() -> dict:
    dev = jax.devices()[0]
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "device_kind": dev.device_kind, "device_count": jax.device_count()}


def time_call(fn, runs: int, warmup: int = 1) -> dict:
    """Median and best wall time of fn() (which must block until done) after warm-ups."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "best_s": min(times), "runs": runs}


def write_json(name: str, payload: dict, out: str = "") -> str:
    path = out or os.path.join(REPO, "bench", "out", f"{name}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    payload = {"command": " ".join([sys.executable.split("/")[-1]] + sys.argv), "machine": machine(),
               **payload}
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
    print(json.dumps(payload))
    return path

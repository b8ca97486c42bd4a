"""Peak FLOP/s of the accelerator, for MFU: published figures, or measured on CPU.

MFU = achieved model FLOP/s / peak FLOP/s. For TPUs and GPUs the peak is the vendor's
dense bf16 figure; for CPUs there is no honest published figure, so the peak is the
FLOP/s of a large float32 matmul measured on this machine (memoised per process).
"""
from __future__ import annotations

import functools
import re
import time

import jax
import jax.numpy as jnp

# Dense bf16 peak per chip (vendor spec sheets).
PEAK_BF16_FLOPS = {
    "h100": 989e12, "h200": 989e12, "a100": 312e12, "l4": 121e12, "a10": 125e12,
    "l40": 181e12, "l40s": 362e12,
    "tpu v4": 275e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5p": 459e12,
    "tpu v6 lite": 918e12, "tpu v6e": 918e12,
}


def device_kind() -> str:
    return jax.devices()[0].device_kind


def published_peak_flops(kind: str | None = None) -> float | None:
    kind = (kind or device_kind()).lower()
    for name, flops in PEAK_BF16_FLOPS.items():
        # whole words only: "l4" must not match "nvidia l40s"
        if re.search(rf"(?<![a-z0-9]){re.escape(name)}(?![a-z0-9])", kind):
            return flops
    return None


@functools.lru_cache(maxsize=None)
def measured_matmul_flops(n: int = 2048, dtype: str = "float32", repeats: int = 5) -> float:
    """FLOP/s of an n x n x n matmul on device 0 (best of `repeats`, after a warm-up)."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def peak_flops_per_device() -> float:
    """Published bf16 peak for known accelerators; else this machine's measured matmul."""
    return published_peak_flops() or measured_matmul_flops()

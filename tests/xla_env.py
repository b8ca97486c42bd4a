"""XLA flags for the tests and for the command lines they start.

Tests compile hundreds of tiny programs and run each a few times, so compiling is most of
their time on a fresh checkout (an empty compilation cache). At LLVM optimisation level 0
the CPU backend compiles them faster and runs them correctly, only slower: cold,
tests/test_model.py took 34 s instead of 49, test_grpo.py 120 instead of 147 and a smoke
pipeline 40 instead of 44 (2-core machine, 2026-12-06).
"""
import os

EIGHT_DEVICES = "--xla_force_host_platform_device_count=8"  # for the sharding tests
FAST_COMPILE = "--xla_backend_optimization_level=0"


def with_flags(flags: str, *wanted: str) -> str:
    """`flags` with each of `wanted` appended unless already there."""
    return " ".join([flags.strip(), *(w for w in wanted if w not in flags)]).strip()


def one_device_env(**extra: str) -> dict:
    """os.environ for a command line a test starts: one CPU device (the CLIs' own default,
    not the tests' 8) and fast compiles."""
    return {**os.environ, "XLA_FLAGS": FAST_COMPILE, **extra}

"""Shared plumbing of the `python -m mathft_jax.<tool>` entry points.

Running `python -m mathft_jax.train` executes train.py as `__main__`, a second copy of the
module beside the `mathft_jax.train` that other modules import; gin configurables and absl
flags defined in both copies would clash. Each entry module therefore starts with

    if __name__ == "__main__":
        from mathft_jax.core.entry import run_module; run_module("mathft_jax.train")

which runs the package copy's `main` under absl and exits before the `__main__` copy
defines anything.
"""
from __future__ import annotations

import importlib
import sys

from absl import flags

GIN_FILES = flags.DEFINE_multi_string("gin_file", [], "Gin config files (model, data, stages).")
GIN_BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings", [], "Gin bindings, e.g. train.total_steps=10 or ssft/train.total_steps=10.")
GIN_SEARCH_PATHS = flags.DEFINE_multi_string(
    "gin_search_paths", [], "Folders where --gin_file and gin `include`s are looked up "
    "(after the working directory; gin_configs/ is always searched).")


def run_module(name: str) -> None:
    from mathft_jax.core import cli_errors  # one-line usage (exit 2) and data (exit 1) errors
    module = importlib.import_module(name)
    cli_errors.run(module.main, prog=name.rsplit(".", 1)[-1])
    sys.exit(0)


def parse_gin_flags() -> None:
    """Bring up jax.distributed (multi-host), then parse --gin_file / --gin_bindings."""
    from mathft_jax.core import distributed, gin_utils
    distributed.initialize()
    gin_utils.parse_gin(GIN_FILES.value, GIN_BINDINGS.value, GIN_SEARCH_PATHS.value)

"""Gin helpers shared by every entry point: parse files and bindings, fail early."""
from __future__ import annotations

import os
from typing import Sequence

import gin

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Every module that defines gin configurables; imported before parsing so that a gin file
# may bind any of them, and an unknown name is an error rather than silently ignored.
CONFIGURABLE_MODULES = (
    "mathft_jax.models.config", "mathft_jax.partitioning", "mathft_jax.optim",
    "mathft_jax.objectives", "mathft_jax.train", "mathft_jax.infer", "mathft_jax.scoring",
    "mathft_jax.pipeline",
)
# These need seqio/TensorFlow, which accelerator images may lack: skipped when absent.
DATA_MODULES = ("mathft_jax.data.vocab", "mathft_jax.data.tasks", "mathft_jax.data.formats",
                "mathft_jax.data.synthetic", "mathft_jax.data.paths", "mathft_jax.data.dataset")


def register_configurables() -> None:
    import importlib
    for name in CONFIGURABLE_MODULES + DATA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as e:
            if name not in DATA_MODULES and "seqio" not in str(e) and "tensorflow" not in str(e):
                raise


def parse_gin(files: Sequence[str] = (), bindings: Sequence[str] = ()) -> None:
    """Parse gin files and bindings; unknown configurables raise before any compile.

    Files are looked up as given, then relative to the repository root, so
    `--gin_file=gin_configs/models/tiny.gin` works from anywhere in a checkout.
    """
    register_configurables()
    gin.add_config_file_search_path(REPO_ROOT)
    gin.add_config_file_search_path(os.path.join(REPO_ROOT, "gin_configs"))
    files = [_resolve(f) for f in files]
    try:
        gin.parse_config_files_and_bindings(files, list(bindings), finalize_config=False)
    except (ValueError, KeyError, IOError) as e:
        raise ValueError(f"bad gin configuration: {e}") from e


def _resolve(path: str) -> str:
    if os.path.exists(path) or os.path.isabs(path):
        return path
    for root in (REPO_ROOT, os.path.join(REPO_ROOT, "gin_configs")):
        if os.path.exists(os.path.join(root, path)):
            return os.path.join(root, path)
    raise ValueError(f"bad gin configuration: gin file {path!r} not found (looked in the "
                     f"working directory and {REPO_ROOT})")


def model_config():
    """The DecoderConfig that the parsed gin files describe."""
    from mathft_jax.models.config import DecoderConfig
    return DecoderConfig()

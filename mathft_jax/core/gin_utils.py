"""Gin helpers shared by every entry point: parse files and bindings, fail early."""
from __future__ import annotations

import os
from typing import Sequence

import gin

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # mathft_jax/
REPO_ROOT = os.path.dirname(_PACKAGE)


def gin_configs_root() -> str:
    """The folder that holds `gin_configs/`: the checkout, or the installed package, where
    setup.py ships gin_configs/ as `mathft_jax/gin_configs` (so `include` works in a
    non-editable install too)."""
    packaged = os.path.join(_PACKAGE, "gin_configs")
    return os.path.dirname(packaged) if os.path.isdir(packaged) else REPO_ROOT


# Every module that defines gin configurables; imported before parsing so that a gin file
# may bind any of them, and an unknown name is an error rather than silently ignored.
CONFIGURABLE_MODULES = (
    "mathft_jax.models.config", "mathft_jax.models.partitioning", "mathft_jax.models.lora",
    "mathft_jax.models.quantization",
    "mathft_jax.training.optim",
    "mathft_jax.training.objectives", "mathft_jax.train", "mathft_jax.infer",
    "mathft_jax.scoring.evaluator", "mathft_jax.pipeline", "mathft_jax.scoring.reference",
    "mathft_jax.rl.grpo",
    "mathft_jax.rl.rewards", "mathft_jax.rl.loop", "mathft_jax.data.prompts",
)
# These need seqio/TensorFlow, which accelerator images may lack: skipped when absent.
DATA_MODULES = ("mathft_jax.data.vocab", "mathft_jax.data.tasks", "mathft_jax.data.formats",
                "mathft_jax.data.synthetic", "mathft_jax.data.paths", "mathft_jax.data.dataset")


def register_configurables(data: bool = True) -> None:
    """Import every module that defines configurables; the data modules (seqio, TensorFlow:
    seconds to import) only with `data`, and only where seqio is installed."""
    import importlib
    for name in CONFIGURABLE_MODULES + (DATA_MODULES if data else ()):
        try:
            importlib.import_module(name)
        except ImportError as e:
            if name not in DATA_MODULES and "seqio" not in str(e) and "tensorflow" not in str(e):
                raise


def parse_gin(files: Sequence[str] = (), bindings: Sequence[str] = (),
              search_paths: Sequence[str] = ()) -> None:
    """Parse gin files and bindings; unknown configurables raise before any compile.

    Files (and their `include`s) are looked up as given, then in each of `search_paths`
    (`--gin_search_paths`, as in T5X), then where `gin_configs/` lives, so
    `--gin_file=gin_configs/models/tiny.gin` works from any working directory.
    """
    _guard_gin_resource_reader()
    roots = [*search_paths, gin_configs_root(), os.path.join(gin_configs_root(), "gin_configs")]
    for root in roots:
        gin.add_config_file_search_path(root)
    files = [_resolve(f, roots) for f in files]
    # The data modules (TensorFlow) only when the configuration names one of their
    # configurables: `models`, `evaluate` and model-only configs start without TensorFlow.
    register_configurables(data=False)
    try:
        try:
            gin.parse_config_files_and_bindings(files, list(bindings), finalize_config=False)
        except ValueError as e:
            if "No configurable matching" not in str(e):
                raise
            gin.clear_config()
            register_configurables(data=True)
            gin.parse_config_files_and_bindings(files, list(bindings), finalize_config=False)
    except (ValueError, KeyError, IOError) as e:
        from mathft_jax.core.cli_errors import UsageError
        raise UsageError(f"bad gin configuration: {e}") from e


def _resolve(path: str, roots: Sequence[str]) -> str:
    if os.path.exists(path) or os.path.isabs(path):
        return path
    for root in roots:
        if os.path.exists(os.path.join(root, path)):
            return os.path.join(root, path)
    from mathft_jax.core.cli_errors import UsageError
    raise UsageError(f"bad gin configuration: gin file {path!r} not found (looked in the "
                     f"working directory and {', '.join(roots)})")


def _guard_gin_resource_reader() -> None:
    """gin's package-resource lookup raises TypeError, instead of answering "no", when the
    folder of an `include` is importable as a namespace package (gin_configs/ on
    PYTHONPATH); make it answer "no" so the search paths are tried."""
    from gin import config, resource_reader

    def exists(path: str) -> bool:
        try:
            return resource_reader.system_path_file_exists(path)
        except TypeError:
            return False

    config._FILE_READERS[:] = [  # noqa: SLF001 (gin has no API to replace a reader)
        (reader, exists if check is resource_reader.system_path_file_exists else check)
        for reader, check in config._FILE_READERS]


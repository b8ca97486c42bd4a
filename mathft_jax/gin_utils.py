"""Gin helpers shared by every entry point: parse files and bindings, fail early."""
from __future__ import annotations

import os
from typing import Sequence

import gin

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_gin(files: Sequence[str] = (), bindings: Sequence[str] = ()) -> None:
    """Parse gin files and bindings; unknown configurables raise before any compile.

    Files are looked up as given, then relative to the repository root, so
    `--gin_file=gin_configs/models/tiny.gin` works from anywhere in a checkout.
    """
    gin.add_config_file_search_path(REPO_ROOT)
    gin.add_config_file_search_path(os.path.join(REPO_ROOT, "gin_configs"))
    try:
        gin.parse_config_files_and_bindings(list(files), list(bindings), finalize_config=False)
    except (ValueError, KeyError, IOError) as e:
        raise ValueError(f"bad gin configuration: {e}") from e


def model_config():
    """The DecoderConfig that the parsed gin files describe."""
    from mathft_jax.models.config import DecoderConfig
    return DecoderConfig()

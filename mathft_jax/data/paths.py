"""Data locations, each a gin parameter.

Defaults: `$MATHFT_DATA_DIR`, else `../shared/data` beside the repository checkout. Bind e.g.
`data_root.path = "/data"`, `prm800k_label_files.paths = ["/d/phase2_train.jsonl"]` or
`scr_candidates_file.path = "runs/x/candidates.jsonl"`; the tasks pick the values up when
they are next read (`tasks.ensure_registered`, docs/data.md).
"""
from __future__ import annotations

import os
import pathlib
from typing import Optional, Sequence

import gin

from mathft_jax.core import storage

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@gin.configurable
def data_root(path: Optional[str] = None) -> pathlib.Path:
    """Every path here is local or `gs://` (storage.path: an etils epath.Path)."""
    if path:
        return storage.path(path)
    env = os.environ.get("MATHFT_DATA_DIR")
    return storage.path(env) if env else storage.path(REPO_ROOT.parent / "shared" / "data")


@gin.configurable
def math_dir(path: Optional[str] = None) -> pathlib.Path:
    """MATH as `{train,test}.jsonl` or the original `{train,test}/<subject>/<n>.json`."""
    return storage.path(path) if path else data_root() / "math"


@gin.configurable
def math_splits_dir(path: Optional[str] = None) -> pathlib.Path:
    """PRM800K's `math_splits` folder: `train.jsonl` (12,000) and `test.jsonl` (MATH500)."""
    return storage.path(path) if path else data_root() / "prm800k" / "math_splits"


@gin.configurable
def benchmarks_dir(path: Optional[str] = None) -> pathlib.Path:
    """The evaluation benchmarks: `<name>/test.jsonl` for gsm8k, aime24, amc23, minerva_math,
    olympiadbench (mathft_jax/data/benchmarks.py)."""
    return storage.path(path) if path else data_root() / "benchmarks"


@gin.configurable
def prm800k_label_files(paths: Optional[Sequence[str]] = None) -> list[pathlib.Path]:
    """PRM800K step-level label files (not shipped in ../shared/data: users bring them)."""
    if paths:
        return [storage.path(p) for p in paths]
    return [data_root() / "prm800k" / "data" / f"phase{i}_train.jsonl" for i in (1, 2)]


@gin.configurable
def scr_candidates_file(path: Optional[str] = None) -> Optional[pathlib.Path]:
    """Graded candidates file (docs/formats.md) for the evaluator tasks; no default."""
    return storage.path(path) if path else None


@gin.configurable
def preference_file(path: Optional[str] = None) -> Optional[pathlib.Path]:
    """Preference file with reference log-likelihoods (docs/formats.md, written by
    `python -m mathft_jax.scoring.reference`) for the `dpo_pairs` task; no default."""
    return storage.path(path) if path else None

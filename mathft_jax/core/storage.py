"""Paths that may be local or remote (`gs://...`): the one place that tells them apart.

Every file the project writes or reads under a run (checkpoints, stage markers, candidates,
metrics, reports, plots) goes through `path()`, an etils `epath.Path`, the path library that
Orbax itself uses; local paths are made absolute, URLs are left as they are
(`os.path.abspath("gs://b/x")` would make `<cwd>/gs:/b/x`).

Object stores have no rename and no append. What holds where:
  - local: `atomic.write_text` writes a temporary file and renames it over the target, so a
    reader sees the old file or the new one;
  - `gs://`: an object becomes visible only once its upload completes, so a reader sees the
    old object or the new one (write-once semantics, same guarantee, no temporary file);
  - Orbax checkpoints on `gs://` commit with a marker file instead of a rename.
Appending (metrics.jsonl) is emulated remotely by rewriting the whole object
(`metrics_writer`).

A GCS emulator: `STORAGE_EMULATOR_HOST` is all a user sets (tests/gcs_emulator.py runs
one). Two libraries would ignore it and talk to the real endpoint, so `use_emulator_everywhere`
(run at import, before either is used) points them at it too: etils picks `tf.io.gfile` for
`gs://` when TensorFlow is installed (`EPATH_USE_TF=false` makes it use gcsfs, which honours
the variable), and TensorStore, which writes Orbax's arrays, reads `TENSORSTORE_GCS_HTTP_URL`
(without it a checkpoint save retried the real GCS forever, with no credentials).
"""
from __future__ import annotations

import logging
import os
from typing import Union

from etils import epath

PathLike = Union[str, os.PathLike]
_SCHEMES = ("gs://", "s3://", "gcs://")


def use_emulator_everywhere() -> None:
    """Where `STORAGE_EMULATOR_HOST` is set, send epath and TensorStore there too (a value
    the user set for either wins)."""
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if not host:
        return
    os.environ.setdefault("EPATH_USE_TF", "false")
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", host if "://" in host else f"http://{host}")
    # gcsfs asks GCS's control plane, which emulators lack, for each bucket's layout, and
    # warns of the failure every time (hundreds of lines a run); it then works as it should.
    logging.getLogger("gcsfs").addFilter(
        lambda record: not record.getMessage().startswith("Could not determine bucket type"))


use_emulator_everywhere()


def is_remote(p: PathLike) -> bool:
    return str(p).startswith(_SCHEMES)


def path(p: PathLike) -> epath.Path:
    """`p` as an epath.Path: absolute if local, untouched if a URL."""
    text = os.fspath(p)
    return epath.Path(text if is_remote(text) else os.path.abspath(text))


def join(base: PathLike, *parts: str) -> str:
    """`base/parts...` as a string (local absolute, or a URL)."""
    return str(path(base).joinpath(*parts))


def exists(p: PathLike) -> bool:
    return path(p).exists()


def read_text(p: PathLike) -> str:
    return path(p).read_text(encoding="utf-8")


def makedirs(p: PathLike) -> None:
    path(p).mkdir(parents=True, exist_ok=True)

"""Files that are either whole or absent: write beside the target, then rename over it.

A crash mid-write (of the process or of the machine) leaves the old file (or none), never
half a file that a resumed run would read as done. On object storage (`gs://`) an object
is visible only once its upload completes, which gives the same guarantee without a
temporary file (mathft_jax/core/storage.py).
"""
from __future__ import annotations

import json
import os
import tempfile

from mathft_jax.core import storage


def write_text(path: str, text: str) -> None:
    """Write text to path atomically (a temporary file in the same directory, os.replace)."""
    if storage.is_remote(path):
        target = storage.path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}-",
                                             suffix=".tmp")
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would
        os.fchmod(descriptor, 0o666 & ~_umask())
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())  # the bytes are on disk before the name points at them
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def write_bytes(path: str, data: bytes) -> None:
    """Binary content (plots), whole or absent like write_text."""
    target = storage.path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target if storage.is_remote(path) else target.parent / f".{target.name}.tmp"
    temporary.write_bytes(data)
    if temporary != target:
        os.replace(temporary, target)


def write_json(path: str, obj, **dump_kwargs) -> None:
    """json.dumps(obj, **dump_kwargs) plus a final newline, written atomically."""
    write_text(path, json.dumps(obj, **dump_kwargs) + "\n")

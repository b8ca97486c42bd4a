"""Files that are either whole or absent: write beside the target, then rename over it.

A crash mid-write leaves the old file (or none), never half a file that a resumed run
would read as done.
"""
from __future__ import annotations

import json
import os
import tempfile


def write_text(path: str, text: str) -> None:
    """Write text to path atomically (a temporary file in the same directory, os.replace)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}-",
                                             suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_json(path: str, obj, **dump_kwargs) -> None:
    """json.dumps(obj, **dump_kwargs) plus a final newline, written atomically."""
    write_text(path, json.dumps(obj, **dump_kwargs) + "\n")

"""Output directories that appear only once complete: write to a sibling temp dir, rename."""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil

from mathft_jax.convert.errors import ConversionError


@contextlib.contextmanager
def staged_dir(out):
    """Yield a fresh temp dir beside `out`; rename it to `out` if the block succeeds, delete
    it otherwise. `out` must not exist or be empty, so a failure never leaves a partial or
    mixed directory there."""
    out = pathlib.Path(out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{out}: output exists and is not an empty directory")
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)

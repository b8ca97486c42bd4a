"""An ordered process-pool map with a progress bar, shared by grading and evaluation.

Workers are spawned, not forked: callers (the pipeline) may have JAX threads running, and
forking a threaded process can deadlock.
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence

from tqdm import tqdm


def parallel_map(fn: Callable, items: Sequence, processes: int | None = None,
                 desc: str | None = None, progress: bool = True,
                 initializer: Callable | None = None) -> list:
    """[fn(item) for item in items], in order, over `processes` workers (default: all cores).
    `initializer` runs once in each worker (or once here, serially) before any item: grading
    starts its sympy helpers there, so no graded call spends its time bound on start-up."""
    processes = min(processes or os.cpu_count() or 1, len(items))
    bar = dict(total=len(items), desc=desc, disable=not progress, dynamic_ncols=True)
    if processes <= 1:
        if initializer is not None and items:
            initializer()
        return [fn(item) for item in tqdm(items, **bar)]
    chunksize = max(1, min(16, len(items) // (processes * 8)))
    with multiprocessing.get_context("spawn").Pool(processes, initializer) as pool:
        return list(tqdm(pool.imap(fn, items, chunksize=chunksize), **bar))

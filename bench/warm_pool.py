"""A spawned process pool whose workers have all finished their initializer: the clock of a
parallel bench starts after imports and warm-ups, not during them."""
from __future__ import annotations

import multiprocessing
import threading


def _initialize(barrier, initializer, args) -> None:
    try:
        initializer(*args)
    except BaseException:
        barrier.abort()  # the parent stops waiting instead of hanging on respawned workers
        raise
    barrier.wait()


def warm_pool(workers: int, initializer, args=(), timeout_s: float = 600.0):
    """`Pool(workers)` after every worker has run `initializer(*args)` (use it in a `with`).
    Raises RuntimeError if an initializer fails or they take longer than `timeout_s`."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers + 1)
    pool = context.Pool(workers, _initialize, (barrier, initializer, args))
    try:
        barrier.wait(timeout_s)
    except threading.BrokenBarrierError as error:
        pool.terminate()
        raise RuntimeError("a pool worker's initializer failed or timed out") from error
    return pool

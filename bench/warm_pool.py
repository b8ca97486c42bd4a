"""A spawned process pool whose workers have all finished their initializer: the clock of a
parallel bench starts after imports and warm-ups, not during them."""
from __future__ import annotations

import multiprocessing


def _initialize(barrier, initializer, args) -> None:
    initializer(*args)
    barrier.wait()


def warm_pool(workers: int, initializer, args=()) -> multiprocessing.pool.Pool:
    """`Pool(workers)` after every worker has run `initializer(*args)` (use it in a `with`)."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers + 1)
    pool = context.Pool(workers, _initialize, (barrier, initializer, args))
    barrier.wait()
    return pool

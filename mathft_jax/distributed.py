"""Multi-host set-up: jax.distributed from flags or environment, process-0 helpers.

Every host runs the same program (JAX's multi-controller model). `initialize()` connects
them: automatic on TPU VMs, from MATHFT_COORDINATOR / MATHFT_NUM_PROCESSES /
MATHFT_PROCESS_ID (what launch/run.sh sets) elsewhere, and a no-op for one process.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging

_initialized = False


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 120) -> None:
    global _initialized
    if _initialized:
        return
    coordinator = coordinator or os.environ.get("MATHFT_COORDINATOR")
    num_processes = num_processes or int(os.environ.get("MATHFT_NUM_PROCESSES", "0") or 0)
    if process_id is None and os.environ.get("MATHFT_PROCESS_ID"):
        process_id = int(os.environ["MATHFT_PROCESS_ID"])
    if coordinator and num_processes > 1:
        if jax.default_backend() == "cpu" or os.environ.get("JAX_PLATFORMS", "") == "cpu":
            # CPU collectives across processes go through gloo.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        logging.info("jax.distributed: process %s of %d, coordinator %s", process_id,
                     num_processes, coordinator)
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout_s)
    elif _on_tpu_pod():
        jax.distributed.initialize()
    _initialized = True


def _on_tpu_pod() -> bool:
    return bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))


def is_main_process() -> bool:
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any (e.g. one host got SIGTERM)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))

"""Multi-host set-up: jax.distributed from flags or environment, process-0 helpers.

Every host runs the same program (JAX's multi-controller model). `initialize()` connects
them, taking the coordinator address, process count and process id from (first found)

  1. its arguments,
  2. the flags --coordinator_address, --num_processes, --process_id,
  3. MATHFT_COORDINATOR, MATHFT_NUM_PROCESSES, MATHFT_PROCESS_ID (what launch/run.sh sets).

On Cloud TPU VMs (or with MATHFT_AUTO_DISTRIBUTED=1, e.g. SLURM) JAX detects all three
itself. With one process it is a no-op. Failures are bounded in time: an unreachable
coordinator raises `DistributedInitError` after `timeout_s` (MATHFT_INIT_TIMEOUT, default
120 s), and a coordinator port already in use raises at once on process 0.

Process-0 helpers: `is_main_process`, `quiet_other_processes`, `barrier`. Metrics and output
files are written by process 0 only; every process feeds its own shards of the input.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from typing import Optional

import jax
import numpy as np
from absl import flags, logging

from mathft_jax.core import platforms

COORDINATOR_FLAG = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0's jax.distributed coordinator "
    "(else MATHFT_COORDINATOR; automatic on TPU VMs).")
NUM_PROCESSES_FLAG = flags.DEFINE_integer(
    "num_processes", None, "Number of processes (else MATHFT_NUM_PROCESSES).")
PROCESS_ID_FLAG = flags.DEFINE_integer(
    "process_id", None, "This process's id in [0, num_processes) (else MATHFT_PROCESS_ID).")

DEFAULT_TIMEOUT_S = 120


class DistributedInitError(RuntimeError):
    """jax.distributed could not start: bad address, port in use, or a peer never came."""


_initialized = False


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, timeout_s: Optional[int] = None) -> None:
    """Connect this process to the others (see the module docstring). Idempotent.

    Must run before anything touches a JAX backend (jax.devices(), an array, a jit).
    """
    global _initialized
    if _initialized:
        return
    coordinator = coordinator or _flag(COORDINATOR_FLAG) or os.environ.get("MATHFT_COORDINATOR")
    num_processes = num_processes or _flag(NUM_PROCESSES_FLAG) or _env_int("MATHFT_NUM_PROCESSES")
    if process_id is None:
        process_id = _flag(PROCESS_ID_FLAG)
    if process_id is None:
        process_id = _env_int("MATHFT_PROCESS_ID")
    if timeout_s is None:
        timeout_s = _env_int("MATHFT_INIT_TIMEOUT") or DEFAULT_TIMEOUT_S

    if num_processes and num_processes > 1:
        if not coordinator or process_id is None:
            raise DistributedInitError(
                f"num_processes={num_processes} needs a coordinator address and a process id "
                "(--coordinator_address/--process_id or MATHFT_COORDINATOR/MATHFT_PROCESS_ID)")
        _connect(coordinator, num_processes, process_id, timeout_s)
        quiet_other_processes()
    elif _auto_detectable():
        logging.info("jax.distributed: auto-detecting the cluster (TPU VM or scheduler)")
        _use_gloo_on_cpu()
        jax.distributed.initialize(initialization_timeout=timeout_s)
        quiet_other_processes()
    _initialized = True


def _connect(coordinator: str, num_processes: int, process_id: int, timeout_s: int) -> None:
    if not 0 <= process_id < num_processes:
        raise DistributedInitError(f"process_id={process_id} is not in [0, {num_processes})")
    host, port = _split_address(coordinator)
    if process_id == 0:
        check_port_free(port)
    else:
        wait_for_listener(host, port, timeout_s)
    _use_gloo_on_cpu()
    logging.info("jax.distributed: process %d of %d, coordinator %s (timeout %d s)",
                 process_id, num_processes, coordinator, timeout_s)
    # JAX aborts the process (LOG(FATAL), no Python exception) when its own deadline
    # passes; the watchdog fires first and says what went wrong.
    with _deadline(timeout_s, f"process {process_id} of {num_processes}: not all processes "
                   f"joined the coordinator at {coordinator} within {timeout_s} s. Are all "
                   f"{num_processes} running, with the same coordinator address and process "
                   "count and distinct process ids?"):
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout_s + 30)


INIT_FAILED_EXIT_CODE = 3


@contextlib.contextmanager
def _deadline(timeout_s: float, message: str):
    """Exit the process with `message` if the block has not finished in `timeout_s`."""
    finished = threading.Event()

    def watch():
        if not finished.wait(timeout_s):
            sys.stderr.write(f"DistributedInitError: {message}\n")
            sys.stderr.flush()
            os._exit(INIT_FAILED_EXIT_CODE)

    threading.Thread(target=watch, name="distributed-init-deadline", daemon=True).start()
    try:
        yield
    finally:
        finished.set()


def wait_for_listener(host: str, port: int, timeout_s: float) -> None:
    """Wait until something accepts TCP connections at host:port (process 0 may start a
    little later), or raise: a wrong address fails here with a clear message."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=2).close()
            return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise DistributedInitError(
                    f"nothing accepted connections at the coordinator address {host}:{port} "
                    f"within {timeout_s} s ({e}): is process 0 running, on that host, with "
                    "that port?") from e
            time.sleep(0.5)


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise DistributedInitError(f"coordinator address {address!r} is not host:port")
    host = host.strip("[]")
    try:
        socket.getaddrinfo(host, int(port))
    except socket.gaierror as e:
        raise DistributedInitError(f"coordinator host {host!r} does not resolve: {e}") from e
    return host, int(port)


def check_port_free(port: int) -> None:
    """Raise if something already listens on `port` (all addresses), as jax's coordinator
    would bind. gRPC binds with SO_REUSEPORT, so without this check a second job on the
    same port could share it silently and hang instead of failing."""
    for family, addr in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 on this host
            continue
        try:
            # SO_REUSEADDR: a port in TIME_WAIT is fine; a listening socket still fails.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
        except OSError as e:
            raise DistributedInitError(
                f"coordinator port {port} is already in use on this host ({e}); pick another "
                "port (launch/run.sh local picks a free one) or stop the job holding it") from e
        finally:
            s.close()
        return


def _use_gloo_on_cpu() -> None:
    """Cross-process collectives on CPU go through gloo (the default in jax 0.10/0.11; set
    explicitly so that local multi-process runs never run without any); a jax without the
    option keeps its default."""
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):
        pass


def _auto_detectable() -> bool:
    """Cloud TPU VM (several workers, or the TPU device files) or an explicit opt-in."""
    if os.environ.get("MATHFT_AUTO_DISTRIBUTED") == "1":
        return True
    if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        return True
    if os.environ.get("JAX_PLATFORMS", "") in ("cpu", "cuda", "gpu"):
        return False
    return platforms.tpu_present()


def _flag(holder):
    return holder.value if flags.FLAGS.is_parsed() else None


def _env_int(name: str) -> Optional[int]:
    value = os.environ.get(name, "").strip()
    return int(value) if value else None


# --- process-0 helpers ------------------------------------------------------------------

def is_main_process() -> bool:
    return jax.process_index() == 0


def progress_bar(enabled: bool, start: int, total: int, desc: str, unit: str):
    """A tqdm bar on process 0 (None elsewhere, or when disabled): the loops' one bar."""
    if not enabled or not is_main_process():
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=start, desc=desc, unit=unit, dynamic_ncols=True)


def quiet_other_processes() -> None:
    """Keep INFO logs on process 0 only, so N processes do not print everything N times
    (warnings and errors still come from every process)."""
    if jax.process_count() > 1 and not is_main_process():
        logging.set_verbosity(logging.WARNING)


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any (e.g. one host got SIGTERM).
    A collective: every process must call it at the same point."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))


def barrier(name: str) -> None:
    """Wait until every process reaches this point (no-op for one process), e.g. after
    process 0 wrote a file the others will read."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def check_shared_dir(directory: str) -> None:
    """With several processes, fail at once unless every process sees the same `directory`
    (a `gs://` bucket, or a shared file system): process 0 writes a token there and each
    process reads it back. A per-host local path would otherwise hang at a later barrier,
    on a stage marker only process 0 can see. A collective; no-op for one process."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    from mathft_jax.core import atomic, storage
    token_path = storage.join(directory, ".shared_dir_check")
    token = np.asarray([time.time_ns() % (2 ** 31)], np.int32)
    token = np.asarray(multihost_utils.broadcast_one_to_all(token))
    if is_main_process():
        atomic.write_text(token_path, str(int(token[0])))
    barrier("check_shared_dir")
    try:
        seen = storage.read_text(token_path).strip() == str(int(token[0]))
    except OSError:
        seen = False
    if any_process(not seen):
        raise RuntimeError(f"{directory} is not shared by all {jax.process_count()} processes "
                           "(use a gs:// path or a shared file system for a multi-host run)")

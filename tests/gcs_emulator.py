"""A GCS API on 127.0.0.1 for tests: `gcp-storage-emulator` (from the package registry,
a test extra), started in a subprocess with one bucket.

`environment()` is what a process needs to use it through every library the project
touches: gcsfs (via etils epath, with `EPATH_USE_TF=false`, since `tf.io.gfile` ignores
emulators) and TensorStore (which Orbax writes arrays with).
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(url: str) -> dict:
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
            "EPATH_USE_TF": "false", "GOOGLE_CLOUD_PROJECT": "test"}


@contextlib.contextmanager
def gcs_emulator(bucket: str, log_path: str, startup_timeout_s: float = 120.0):
    """Yield the emulator's URL with `bucket` created; stop it afterwards. The variables of
    `environment()` are set in this process too while it runs."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
             f"--port={port}", "--in-memory", f"--default-bucket={bucket}"],
            stdout=log, stderr=subprocess.STDOUT)
    saved = {k: os.environ.get(k) for k in environment(url)}
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:  # wait for the event (a listening socket), with a generous limit
            if proc.poll() is not None:
                raise RuntimeError(f"GCS emulator exited with {proc.returncode}; see {log_path}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"GCS emulator not listening after {startup_timeout_s} s")
                time.sleep(0.1)
        os.environ.update(environment(url))
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

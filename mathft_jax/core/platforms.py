"""Which JAX platform a process asks for, where the user did not say (JAX_PLATFORMS).

With libtpu installed (the `tpu` and `test` extras bring it, for the planner's TPU
compiles), every JAX process on a machine without a TPU would initialise libtpu when it
first touches a backend: libtpu then looks for its TPU host (accelerator type, worker
addresses, the GCE metadata server) and prints errors to stderr. So where libtpu is
installed and neither a TPU nor a GPU is present, `choose_default()` (run when `mathft_jax`
is imported, before JAX is) sets JAX_PLATFORMS=cpu, which is what JAX would end up on
anyway. It never overrides a JAX_PLATFORMS the user set, and does nothing on TPU or GPU
machines. The planner still compiles for TPU topologies: libtpu's compile-only devices do
not need the TPU backend (planning/compile.py).
"""
from __future__ import annotations

import glob
import importlib.util
import os

# A TPU VM's chips (v4, v5p: /dev/accel*; v5e, v6e: VFIO groups); GPUs' device files.
TPU_DEVICE_FILES = ("/dev/accel*", "/dev/vfio/[0-9]*")
GPU_DEVICE_FILES = ("/dev/nvidia[0-9]*", "/dev/kfd")


def tpu_present() -> bool:
    return any(glob.glob(pattern) for pattern in TPU_DEVICE_FILES)


def gpu_present() -> bool:
    return any(glob.glob(pattern) for pattern in GPU_DEVICE_FILES)


def libtpu_installed() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def choose_default(environ=os.environ) -> str | None:
    """Set JAX_PLATFORMS=cpu where libtpu is installed and there is no TPU or GPU and the
    user set no JAX_PLATFORMS; returns what it set (None: nothing)."""
    if "JAX_PLATFORMS" in environ or not libtpu_installed():
        return None
    if tpu_present() or gpu_present():
        return None
    environ["JAX_PLATFORMS"] = "cpu"
    return "cpu"

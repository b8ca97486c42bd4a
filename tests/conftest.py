"""Test set-up: fake CPU devices for sharding tests, and the shared-data fixture.

XLA_FLAGS must be set before JAX initialises its backends, so it is set here at import
time, before any test module imports jax.
"""
import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def shared_data_dir() -> pathlib.Path:
    """`MATHFT_DATA_DIR`, else `../shared/data` beside the checkout."""
    env = os.environ.get("MATHFT_DATA_DIR")
    return pathlib.Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    d = shared_data_dir()
    if not (d / "math" / "train.jsonl").exists():
        pytest.skip(f"shared MATH data not found at {d} (set MATHFT_DATA_DIR to run this test)")
    return d

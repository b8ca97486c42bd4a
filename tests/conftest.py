"""Test set-up: fake CPU devices for sharding tests, fast compiles (tests/xla_env.py), and
the shared-data fixture.

XLA_FLAGS must be set before JAX initialises its backends, so it is set here at import
time, before any test module imports jax.
"""
import os

from xla_env import EIGHT_DEVICES, FAST_COMPILE, with_flags  # noqa: E402 (tests/ is on sys.path)

os.environ["XLA_FLAGS"] = with_flags(os.environ.get("XLA_FLAGS", ""), EIGHT_DEVICES, FAST_COMPILE)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# gs:// through gcsfs, which honours STORAGE_EMULATOR_HOST (tests/gcs_emulator.py): etils
# caches its choice of tf.io.gfile on first use, so it is made before any test runs.
os.environ.setdefault("EPATH_USE_TF", "false")
# One persistent compilation cache for the test workers and the CLIs they start, which would
# otherwise each recompile the same tiny programs (about a third of a smoke pipeline's time),
# as would a test that builds a second loop of the same shapes. Entries are keyed by
# program, devices and XLA flags. A size bound turns on JAX's file lock, so that no process
# reads an entry half written; the lock's LRU bookkeeping scans every entry on each write,
# so programs that compile in under 0.5 s (most of them, a small share of the time) are
# not stored (cold runs at 0.2 s and 1.0 s took 13:21 and 13:55 against 11:23, one run each,
# 2026-12-06). It lives in .pytest_cache (git-ignored).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax_compilation_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 << 30))

import pathlib  # noqa: E402

import gin  # noqa: E402
import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: starts command lines or runs a pipeline (tens of seconds); "
        "`pytest -m 'not slow'` is the quick loop")


@pytest.fixture(autouse=True)
def _clean_gin():
    """Every test starts and ends with no gin bindings: what one binds never reaches another.
    A module-scoped fixture that needs bindings parses them itself."""
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    """`MATHFT_DATA_DIR`, else `../shared/data` beside the checkout (`data_root`'s default)."""
    from mathft_jax.data.paths import data_root
    d = data_root(None)  # the default, whatever a test has bound in gin
    if not (d / "math" / "train.jsonl").exists():
        pytest.skip(f"shared MATH data not found at {d} (set MATHFT_DATA_DIR to run this test)")
    return d


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test slower than ~20 s (deselect with -m 'not slow')")

"""storage: a GCS emulator named once (STORAGE_EMULATOR_HOST) reaches every library."""
import logging
import os

from mathft_jax.core import storage

EMULATOR_VARIABLES = ("STORAGE_EMULATOR_HOST", "EPATH_USE_TF", "TENSORSTORE_GCS_HTTP_URL")


def test_an_emulator_host_reaches_epath_and_tensorstore_unless_set_apart(monkeypatch):
    for name in EMULATOR_VARIABLES:  # set first, so that the teardown restores each
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    storage.use_emulator_everywhere()
    assert not any(name in os.environ for name in EMULATOR_VARIABLES)  # no emulator: no change

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:4443")
    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", "http://elsewhere:1")  # the user's own wins
    storage.use_emulator_everywhere()
    assert os.environ["EPATH_USE_TF"] == "false"  # gcsfs, which honours the emulator
    assert os.environ["TENSORSTORE_GCS_HTTP_URL"] == "http://elsewhere:1"
    monkeypatch.delenv("TENSORSTORE_GCS_HTTP_URL")
    storage.use_emulator_everywhere()
    assert os.environ["TENSORSTORE_GCS_HTTP_URL"] == "http://127.0.0.1:4443"

    def passes(message):
        return logging.getLogger("gcsfs").filter(
            logging.LogRecord("gcsfs", logging.WARNING, __file__, 0, message, None, None))
    assert not passes("Could not determine bucket type for bucket name b: no credentials")
    assert passes("Error: Bucket b not found or you lack permissions")  # other warnings stay

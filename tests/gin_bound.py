"""Gin bindings for one block of a test or of a module-scoped fixture.

tests/conftest.py clears gin before and after every test, so a module-scoped fixture's
bindings would not reach the tests; code that reads gin binds what it needs around itself.
"""
import contextlib

import gin

from mathft_jax.core import gin_utils


@contextlib.contextmanager
def gin_bound(bindings):
    """`bindings` (gin lines) parsed for the block; no bindings at all after it."""
    gin_utils.parse_gin(bindings=bindings)
    try:
        yield
    finally:
        gin.clear_config()

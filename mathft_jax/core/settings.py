"""Checks of numeric settings, run by every entry point before it builds or writes anything:
a bad value fails in seconds with a one-line error naming its gin binding (`train.batch_size=0
must be an integer >= 1`), not minutes later deep inside JAX."""
from __future__ import annotations

import math
from typing import Union

from mathft_jax.core.errors import UsageError

Number = Union[int, float]


class SettingError(UsageError):
    """A setting out of its range; the message names the gin binding. A usage error: the
    entry points print it as one line and exit 2."""


def check(configurable: str, **values) -> None:
    """Each keyword is `name=value` (an integer >= 1) or `name=(value, minimum)` (an
    integer >= minimum); None values are skipped (unset optional settings)."""
    for name, spec in values.items():
        value, minimum = spec if isinstance(spec, tuple) else (spec, 1)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise SettingError(f"{configurable}.{name}={value!r} must be an integer >= {minimum}")


def check_real(configurable: str, name: str, value: Number, low: float, high: float,
               low_open: bool = False) -> None:
    """`value` is a finite number in [low, high] ((low, high] with low_open)."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value > low if low_open else value >= low) and value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise SettingError(f"{configurable}.{name}={value!r} must be a number in {interval}")


def resolve(cls, config=None, **fields):
    """`config` (default: `cls()`, i.e. from gin in the current scope) with `fields`
    replaced, validated: how every entry point turns its arguments into its typed config."""
    import dataclasses
    return (dataclasses.replace(config, **fields) if config is not None else cls(**fields)).validate()

"""What configuration produced a directory's outputs, and whether a rerun still matches it.

  config.gin     gin's operative config (every parameter of every configurable used so
                 far, defaults included), as T5X writes it: for people, and to rerun
  bindings.json  the explicit gin bindings that can affect the outputs: the configurables
                 used and the gin scopes in force, and {"scope/configurable.param":
                 repr(value)} of their bindings, for the comparison on a rerun

`train` writes both into its model_dir; the pipeline writes them into each stage directory
when the stage completes and, on a rerun, compares every finished stage's bindings.json with
the bindings now in force before any stage runs (`check_unchanged`).
"""
from __future__ import annotations

import contextlib
import json
import re
from typing import Iterable, Optional

import gin

from mathft_jax.core import atomic, distributed, moved, storage
from mathft_jax.core.errors import UsageError

OPERATIVE = "config.gin"
BINDINGS = "bindings.json"
_CONFIGURABLE = re.compile(r"^(?:[\w./]+/)?([\w.]+)\.\w+\s*=", re.M)


class ConfigChangedError(UsageError):
    """A finished stage was run with other settings than a rerun asks for (one line, exit 2)."""


@contextlib.contextmanager
def unrecorded():
    """Calls inside do not count as used in gin's operative config (checking every stage's
    settings up front must not make a stage look as if it used the later stages' ones)."""
    saved = {key: dict(params) for key, params in gin.config._OPERATIVE_CONFIG.items()}  # noqa: SLF001
    try:
        yield
    finally:
        gin.config._OPERATIVE_CONFIG.clear()  # noqa: SLF001
        gin.config._OPERATIVE_CONFIG.update(saved)  # noqa: SLF001


def used_configurables() -> set[str]:
    """Names of the configurables called so far in this process (gin's operative config)."""
    return set(_CONFIGURABLE.findall(gin.operative_config_str()))


def explicit_bindings(configurables: Iterable[str], scopes: Iterable[str] = ("",),
                      ignore: Iterable[str] = ()) -> dict[str, str]:
    """{"scope/name.param": repr(value)} of the bindings made in gin files and flags for
    these configurables, unscoped or in one of `scopes`."""
    configurables, scopes, ignore = set(configurables), set(scopes), set(ignore)
    out = {}
    for (scope, selector), params in gin.config._CONFIG.items():  # noqa: SLF001 (no public view)
        name = selector.rsplit(".", 1)[-1]
        if name not in configurables or (scope or "") not in scopes:
            continue
        for param, value in params.items():
            key = f"{scope + '/' if scope else ''}{name}.{param}"
            if f"{name}.{param}" not in ignore:
                out[key] = repr(value)
    return out


def stable_repr(value) -> str:
    """repr, but a function by its name (its repr holds a per-process address)."""
    if callable(value) and hasattr(value, "__qualname__"):
        return f"@{value.__module__}.{value.__qualname__}"
    return repr(value)


def binding_record(scopes: Iterable[str], ignore: Iterable[str] = (),
                   resolved: Optional[dict] = None) -> dict:
    """What bindings.json holds: the configurables used so far, the scopes, their bindings,
    and `resolved`, the stage's own settings as the pipeline derived them ({"train.task":
    repr}: what comes from pipeline settings rather than from a binding of its own)."""
    configurables, scopes = sorted(used_configurables()), sorted(set(scopes) | {""})
    return {"configurables": configurables, "scopes": scopes,
            "bindings": explicit_bindings(configurables, scopes, ignore),
            "resolved": dict(resolved or {})}


def write_operative(path: str) -> None:
    """gin's operative config to `path` (process 0): what `infer` keeps beside its output."""
    if distributed.is_main_process():
        atomic.write_text(path, gin.operative_config_str())


def record(directory: str, bindings: Optional[dict] = None) -> None:
    """Write config.gin (and bindings.json, when given) into directory, on process 0."""
    if not distributed.is_main_process():
        return
    write_operative(storage.join(directory, OPERATIVE))
    if bindings is not None:
        atomic.write_json(storage.join(directory, BINDINGS), bindings, indent=1, sort_keys=True)


def check_unchanged(directory: str, what: str, override: str, ignore: Iterable[str] = (),
                    resolved: Optional[dict] = None, defaults: Optional[dict] = None) -> None:
    """Raise ConfigChangedError if the bindings recorded in directory differ from those in
    force now (for the same configurables and scopes), or the stage's resolved settings from
    `resolved`, naming each; no record, no check. A resolved setting the record lacks (added
    to the code since) is no change where it equals its entry in `defaults`."""
    path = storage.join(directory, BINDINGS)
    if not storage.exists(path):
        return
    recorded = json.loads(storage.read_text(path))
    current = explicit_bindings(recorded["configurables"], recorded["scopes"], ignore)
    diff = differences(recorded["bindings"], current)
    diff += differences(recorded.get("resolved", {}), dict(resolved or {}), defaults)
    if diff:
        raise ConfigChangedError(
            f"{what} finished with other settings than this run asks for: {'; '.join(diff)}. "
            f"Use a new run directory, delete the stage's directory to redo it, or bind "
            f"{override} = True to reuse its outputs anyway")


def differences(recorded: dict, current: dict, defaults: Optional[dict] = None) -> list[str]:
    """'key: old -> new' for each binding that differs (absent = the default). A key only
    `current` has is no difference where its value is `defaults[key]`: a setting added to
    the code after the record was written, at the value that keeps the old behaviour."""
    defaults = defaults or {}
    # A record made before the package's layer folders names moved modules by their old path.
    recorded = {k: moved.current_name(v) for k, v in recorded.items()}

    def added_at_default(k: str) -> bool:
        return k not in recorded and k in defaults and current[k] == defaults[k]

    keys = sorted(set(recorded) | set(current))
    return [f"{k}: {recorded.get(k, '<default>')} -> {current.get(k, '<default>')}"
            for k in keys if recorded.get(k) != current.get(k) and not added_at_default(k)]

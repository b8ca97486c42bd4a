"""Parameter checkpoints for the converters: `mathft_jax.checkpoints` where it provides
`save_params` / `load_params` (the trainer's layout), else a plain Orbax
StandardCheckpointer at `<path>/params`, which `checkpoints.load_params` also reads."""
from __future__ import annotations

import pathlib

from mathft_jax.convert.placement import param_targets
from mathft_jax.models.config import DecoderConfig


def _trainer_checkpoints():
    try:
        from mathft_jax import checkpoints  # noqa: PLC0415 (the trainer's module, if present)
    except ImportError:
        return None
    has_api = hasattr(checkpoints, "save_params") and hasattr(checkpoints, "load_params")
    return checkpoints if has_api else None


def save_params(path, params) -> None:
    ckpts = _trainer_checkpoints()
    if ckpts is not None:
        return ckpts.save_params(str(path), params)
    import orbax.checkpoint as ocp  # noqa: PLC0415

    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(pathlib.Path(path).absolute() / "params", params)
        ckptr.wait_until_finished()


def load_params(path, cfg: DecoderConfig, mesh=None, rules=None):
    ckpts = _trainer_checkpoints()
    if ckpts is not None:
        return ckpts.load_params(str(path), cfg, mesh, rules)
    import orbax.checkpoint as ocp  # noqa: PLC0415

    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(pathlib.Path(path).absolute() / "params", param_targets(cfg, mesh, rules))

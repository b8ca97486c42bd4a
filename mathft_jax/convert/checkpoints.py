"""Orbax checkpoints: one CheckpointManager step holds three items.

  <model_dir>/<step>/params     parameters (DecoderConfig.param_dtype, float32 when
                                 training), restorable alone: init_checkpoint,
                                 infer and HF export read only this item
  <model_dir>/<step>/opt_state  optimizer state
  <model_dir>/<step>/meta       JSON: step and input-pipeline position

Orbax writes each step into a temporary directory and renames it when complete, so a
crash mid-save leaves no step that `latest_step` would pick up. Restores take abstract
targets carrying NamedShardings, so a checkpoint saved on one mesh loads onto another.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging

from mathft_jax.core import storage
from mathft_jax.models import partitioning
from mathft_jax.models.config import DecoderConfig


def manager(model_dir: str, keep: Optional[int] = 3, async_save: bool = True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
    return ocp.CheckpointManager(storage.path(model_dir), options=options,
                                 item_names=("params", "opt_state", "meta"))


def save(mngr: ocp.CheckpointManager, step: int, params, opt_state, meta: dict) -> None:
    mngr.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave(meta)), force=True)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_params, abstract_opt_state):
    """(params, opt_state, meta) of `step`, placed as the abstract targets' shardings say."""
    out = mngr.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params),
        opt_state=ocp.args.StandardRestore(abstract_opt_state),
        meta=ocp.args.JsonRestore()))
    return out["params"], out["opt_state"], out["meta"]


def resolve_params_dir(path: str) -> str:
    """A model_dir (latest step), a step directory, or a params directory -> params dir
    (local or `gs://`)."""
    p = storage.path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if (p / "params").is_dir():
        return str(p / "params")
    latest = any_complete(str(p))
    if latest is not None:
        return str(p / str(latest) / "params")
    if (p / "_METADATA").exists() or (p / "_CHECKPOINT_METADATA").exists():
        return str(p)
    raise FileNotFoundError(f"no complete checkpoint (no params item) under {p}")


def load_params(path: str, cfg: DecoderConfig,
                partitioner: Optional[partitioning.Partitioner] = None):
    """Parameters only (for fine-tuning starts, inference and export), resharded onto the
    partitioner's mesh (default: `Partitioner.create(cfg)`, the mesh of `make_mesh.*`)."""
    partitioner = partitioner or partitioning.Partitioner.create(cfg)
    target = partitioner.param_targets(cfg)
    params_dir = resolve_params_dir(path)
    logging.info("loading parameters from %s", params_dir)
    with ocp.StandardCheckpointer() as ckptr:
        try:
            return ckptr.restore(params_dir, target)
        except (ValueError, KeyError) as e:
            raise ValueError(f"checkpoint {params_dir} does not match the model config: {e}") from e


def save_params(path: str, params) -> None:
    """A params-only checkpoint as step 0 of a model_dir (what HF import writes)."""
    mngr = ocp.CheckpointManager(storage.path(path), options=ocp.CheckpointManagerOptions(
        create=True, enable_async_checkpointing=False), item_names=("params",))
    mngr.save(0, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
    mngr.wait_until_finished()
    mngr.close()


def any_complete(model_dir: str) -> Optional[int]:
    """Latest complete step under model_dir, or None."""
    root = storage.path(model_dir)
    if not root.is_dir():
        return None
    # Orbax's own step listing knows which steps are committed (a rename locally, a commit
    # marker on gs://); a bare directory named like a step may be an unfinished save.
    steps = [s for s in ocp.path.step.checkpoint_steps(root)
             if (root / str(s) / "params").is_dir()]
    return max(steps) if steps else None


def tree_equal(a: Any, b: Any) -> bool:
    """Bitwise equality of two parameter trees (used by resume tests)."""
    import numpy as np
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))

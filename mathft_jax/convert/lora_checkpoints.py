"""LoRA checkpoints: a model_dir of adapters, and the base they apply to named by path and
content hash.

    <model_dir>/lora.json          {"lora": the LoraConfig, "base": BASE}
    <model_dir>/<step>/params      the adapters (models/lora.py's tree); opt_state is the
                                   adapters' optimizer state (checkpoints.py's items)

BASE describes the parameters the adapters apply to, recursively:

    {"params": "<params dir>", "hash": "<content hash>"}          a plain checkpoint
    {"params": "<adapters' params dir>", "hash": ..., "lora": {...}, "base": BASE}
                                                                   a LoRA checkpoint, merged

`params` is a resolved step's params directory (it never moves on to a later step). Every
load checks each hash on the way and refuses a changed base with a one-line error; so does
a resumed run. `model_files` (model.gin, tokenizer/, hf/) sit beside lora.json as in any
model_dir, so export finds the model, the vocabulary and the base.

How a run gets its base from `init_checkpoint` (`LoraConfig.start`): a plain checkpoint is
the base, with fresh adapters. A LoRA checkpoint either goes on (`continue`: its base, its
adapters trained further; e.g. SCR's evaluator as adapters on the SSFT base, which then
serves generator and evaluator from one base), or is merged (`merge`: its base plus its
adapters is the new base, with fresh adapters; the reference of DPO and GRPO, the base with
the adapters off, is then the SSFT model).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Optional

import flax.linen as nn
import jax
import orbax.checkpoint as ocp

from mathft_jax.convert import checkpoints, model_files
from mathft_jax.core import atomic, distributed, storage
from mathft_jax.core.errors import DataError
from mathft_jax.models import lora as lora_lib
from mathft_jax.models import partitioning
from mathft_jax.models.config import DecoderConfig
from mathft_jax.models.lora import LoraConfig

RECORD = "lora.json"
SEED_BASE = "base"  # <model_dir>/base: the seed's init, the base of a run without one


class BaseChangedError(DataError):
    """The base a LoRA checkpoint names is not the one its adapters were trained on."""


def content_hash(params_dir: str) -> str:
    """BLAKE2b of a params directory's files (their relative paths and bytes, in order)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, f in _files(storage.path(params_dir), ""):
        digest.update(name.encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _files(directory, prefix: str):
    """(relative name, path) of every file under `directory`, sorted; a walk of listings, as
    gs:// paths take no recursive glob."""
    out = []
    for child in sorted(directory.iterdir(), key=lambda p: p.name):
        name = prefix + child.name
        out += _files(child, name + "/") if child.is_dir() else [(name, child)]
    return out


def settings_dict(lora: LoraConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(lora)))


def settings_from(d: dict) -> LoraConfig:
    d = dict(d)
    d["targets"] = tuple(d["targets"])
    d["layers"] = None if d["layers"] is None else tuple(d["layers"])
    return LoraConfig(**d)


def read_record(path) -> Optional[dict]:
    """lora.json of the model_dir holding `path` (a model_dir, step or params dir), or None
    for a plain checkpoint."""
    try:
        model_dir = model_files.find_model_dir(path)
    except FileNotFoundError:
        model_dir = storage.path(path)
    record = model_dir / RECORD
    return json.loads(record.read_text()) if record.exists() else None


def describe(path: str) -> dict:
    """The BASE entry of the model a checkpoint holds (plain, or its adapters merged)."""
    params_dir = checkpoints.resolve_params_dir(path)
    entry = {"params": params_dir, "hash": content_hash(params_dir)}
    record = read_record(path)
    if record is not None:
        entry.update(lora=record["lora"], base=record["base"])
    return entry


def base_for(init_checkpoint: str, lora: LoraConfig) -> tuple[dict, Optional[str]]:
    """(BASE of a run starting from `init_checkpoint`, the adapters it goes on training or
    None for fresh ones); see the module docstring."""
    record = read_record(init_checkpoint)
    if record is None or lora.start == "merge":
        return describe(init_checkpoint), None
    theirs = settings_from(record["lora"])
    if _shape_fields(theirs) != _shape_fields(lora):
        raise DataError(f"lora.start='continue' from {init_checkpoint}: its adapters have "
                        f"{_shape_fields(theirs)}, this run's settings {_shape_fields(lora)}; "
                        "use the same rank, targets and layers, or lora.start='merge'")
    return record["base"], checkpoints.resolve_params_dir(init_checkpoint)


def _shape_fields(lora: LoraConfig) -> dict:
    return {"rank": lora.rank, "targets": list(lora.targets),
            "layers": None if lora.layers is None else list(lora.layers), "dtype": lora.dtype}


def record_run(model_dir: str, lora: LoraConfig, base: dict) -> dict:
    """The run's BASE: lora.json's when the model_dir has one (a resume: the same settings
    are required), else `base`, written there (process 0)."""
    existing = read_record(model_dir) if storage.path(model_dir).exists() else None
    ours = settings_dict(lora)
    if existing is not None:
        if existing["lora"] != ours:
            raise DataError(f"{storage.join(model_dir, RECORD)}: this model_dir's adapters were "
                            f"trained with lora settings {existing['lora']}, not {ours}")
        return existing["base"]
    if distributed.is_main_process():
        atomic.write_json(storage.join(model_dir, RECORD), {"lora": ours, "base": base},
                          indent=1)
    return base


def verify(base: dict) -> None:
    """Refuse a BASE whose files changed since it was recorded (each level of it)."""
    now = content_hash(base["params"])
    if now != base["hash"]:
        raise BaseChangedError(f"LoRA base changed: {base['params']} now hashes to {now}, "
                               f"the adapters were trained on {base['hash']}")
    if "base" in base:
        verify(base["base"])


def load_base(base: dict, cfg: DecoderConfig, partitioner: partitioning.Partitioner):
    """The plain parameters a BASE describes (checked, merged where it says so)."""
    verify(base)
    return _load_unchecked(base, cfg, partitioner)


def _load_unchecked(base: dict, cfg, partitioner):
    if "lora" not in base:
        return checkpoints.load_params(base["params"], cfg, partitioner)
    settings = settings_from(base["lora"])
    params = _load_unchecked(base["base"], cfg, partitioner)
    return merged(params, load_adapters(base["params"], settings, cfg, partitioner), settings,
                  cfg, partitioner)


def _placing(cfg: DecoderConfig, partitioner: partitioning.Partitioner):
    """Where parameters go: the partitioner's mesh, or one device without one (as
    `checkpoints.load_params` places them)."""
    if partitioner.mesh is not None:
        return partitioner
    return partitioning.Partitioner.single_device(cfg)


def merged(params, adapters, lora: LoraConfig, cfg: DecoderConfig,
           partitioner: partitioning.Partitioner):
    """`lora.merge`, each merged weight placed as the base's weights are (what a jitted step
    with the parameters' shardings expects)."""
    out = lora_lib.merge(params, adapters, lora, cfg)
    return jax.device_put(out, _placing(cfg, partitioner).param_shardings(cfg))


def load_adapters(path: str, lora: LoraConfig, cfg: DecoderConfig,
                  partitioner: partitioning.Partitioner):
    """A LoRA checkpoint's adapters, placed by their logical axes on the partitioner's mesh."""
    placing = _placing(cfg, partitioner)
    boxes = lora_lib.adapter_boxes(lora, cfg, placing.abstract_params(cfg))
    target = partitioning.with_shardings(nn.unbox(boxes), placing.shardings(boxes))
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(checkpoints.resolve_params_dir(path), target)


def load_model(path: str, cfg: DecoderConfig, partitioner: partitioning.Partitioner,
               merge: bool = True, bases: Optional[dict] = None):
    """Parameters to sample or score with: a plain checkpoint's, or a LoRA checkpoint's
    base with its adapters merged once (`merge`) or applied unmerged (`lora.Adapted`).
    `bases`: a dict kept across calls so that adapter sets on the same base (a generator's
    and an evaluator's) share one copy of it."""
    record = read_record(path)
    if record is None:
        return checkpoints.load_params(path, cfg, partitioner)
    settings = settings_from(record["lora"])
    key = json.dumps(record["base"], sort_keys=True)
    bases = {} if bases is None else bases
    if key not in bases:
        bases[key] = load_base(record["base"], cfg, partitioner)
    adapters = load_adapters(path, settings, cfg, partitioner)
    if merge:
        return merged(bases[key], adapters, settings, cfg, partitioner)
    return lora_lib.adapted(bases[key], adapters, settings, cfg)

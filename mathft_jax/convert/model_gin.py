"""The model config as a gin file (`DecoderConfig.field = value` lines) and back.

The file is plain gin, so `--gin_file=<ckpt>/model.gin` configures train and infer;
`read_model_gin` reads it back without touching gin's global state (export uses it),
from a local or `gs://` path.
"""
from __future__ import annotations

import ast
import dataclasses
import re

from etils import epath

from mathft_jax.convert.errors import ConversionError
from mathft_jax.models.config import DecoderConfig

MODEL_GIN = "model.gin"
_LINE = re.compile(r"^\s*DecoderConfig\.(\w+)\s*=\s*(.+?)\s*$")


def model_gin_text(cfg: DecoderConfig, comment: str = "") -> str:
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [f"DecoderConfig.{f.name} = {getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg)]
    return "\n".join(lines) + "\n"


def read_model_gin(path) -> DecoderConfig:
    """DecoderConfig from a file of one-line `DecoderConfig.x = literal` bindings; other
    lines (comments, other configurables) are skipped."""
    path = epath.Path(path)  # local or gs://
    if not path.exists():
        raise ConversionError(f"{path}: missing (the model config of the checkpoint)")
    names = {f.name for f in dataclasses.fields(DecoderConfig)}
    kw = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        m = _LINE.match(line)
        if not m:
            continue
        field, text = m.groups()
        if field not in names:
            raise ConversionError(f"{path}:{number}: DecoderConfig has no field {field!r}")
        try:
            kw[field] = ast.literal_eval(text)
        except (ValueError, SyntaxError) as e:
            raise ConversionError(f"{path}:{number}: cannot read {text!r} ({e})") from e
    return DecoderConfig(**kw)

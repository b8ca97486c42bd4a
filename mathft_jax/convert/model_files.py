"""The files that make a model directory self-describing: whoever holds only the directory
(export, infer, a later stage) knows the model and its vocabulary.

    <model_dir>/model.gin                    DecoderConfig bindings (convert/model_gin.py)
    <model_dir>/vocab.gin                    get_vocabulary bindings naming tokenizer/ below
    <model_dir>/tokenizer/special_ids.json   {"kind", "bos_id", "eos_id", "pad_id",
                                              "decoder_start_id"}
    <model_dir>/tokenizer/tokenizer.json ... the tokenizer's files (TOKENIZER_FILES; a
                                             SentencePiece vocabulary: tokenizer.model)
    <model_dir>/hf/                          models that came from import_hf: the HF
                                             config.json and generation/tokenizer files
    <model_dir>/<step>/params ...            the checkpoints (checkpoints.py)
    <model_dir>/lora.json                    a LoRA model_dir: the adapters' settings and their
                                             base by path and content hash; its checkpoints
                                             hold the adapters (lora_checkpoints.py)

import_hf writes it, and training writes it into every model_dir (process 0, at start), so
an imported checkpoint and any stage's checkpoints look alike. Paths may be local or
`gs://` (etils epath, the path library Orbax uses). Writing is idempotent: a resumed run
rewrites nothing that is already identical.

Importing this module does not import TensorFlow (train and export need it lightly).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

from absl import logging
from etils import epath

from mathft_jax.core import atomic, distributed, storage
from mathft_jax.convert import model_gin, tokenizer
from mathft_jax.models.config import DecoderConfig

MODEL_GIN = model_gin.MODEL_GIN
VOCAB_GIN = "vocab.gin"
TOKENIZER_DIR = "tokenizer"
HF_DIR = "hf"
SPECIAL_IDS = "special_ids.json"
SENTENCEPIECE_MODEL = "tokenizer.model"
# The HF files a model_dir keeps from an import (and passes on to the models trained from it).
HF_FILES = ("config.json",) + tokenizer.TOKENIZER_FILES + (tokenizer.GENERATION_CONFIG,)


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    """What a model_dir says about its model. tokenizer_dir: the HF tokenizer files (None for
    a byte or SentencePiece vocabulary); hf_dir: the imported model's HF files, if any."""
    model_dir: epath.Path
    config: DecoderConfig
    ids: dict  # special_ids.json
    tokenizer_dir: Optional[epath.Path]
    hf_dir: Optional[epath.Path]


def special_ids(vocabulary) -> dict:
    """special_ids.json of a seqio vocabulary. `pad_id` is the tokenizer's pad token where
    its files name one, else EOS (the usual choice for tokenizers without one); seqio's own
    padding (id 0, zero loss weight) never reaches the model. `decoder_start_id` is the
    token every sequence starts with (`data.vocab.decoder_start_id`)."""
    if isinstance(vocabulary, tokenizer.TokenizerFiles):  # import_hf: no seqio, no TF
        bos, eos = vocabulary.bos_id, vocabulary.eos_id
        pad = tokenizer.pad_token_id(epath.Path(vocabulary.path).parent)
        return {"kind": "hf", "bos_id": bos, "eos_id": eos, "pad_id": eos if pad is None else pad,
                # data.vocab.decoder_start_id's rule: the BOS where there is one, else 0
                "decoder_start_id": bos if bos is not None and bos >= 0 else 0}
    from mathft_jax.data import vocab as vocab_lib  # noqa: PLC0415 (TF; loaded by the caller)

    kind = _kind(vocabulary)
    eos = _optional_int(vocabulary.eos_id)
    pad = None
    if kind == "hf":
        pad = tokenizer.pad_token_id(epath.Path(vocabulary.path).parent)
    elif kind == "sentencepiece":
        pad = _optional_int(vocabulary.pad_id)
    elif kind == "byte":
        pad = 0  # ByteVocabulary reserves 0 for padding
    return {"kind": kind, "bos_id": _optional_int(vocabulary.bos_id), "eos_id": eos,
            "pad_id": eos if pad is None else pad,
            "decoder_start_id": vocab_lib.decoder_start_id(vocabulary)}


def write_model_files(model_dir, cfg: DecoderConfig, vocabulary=None, hf_side_dir=None, *,
                      comment: str = "", final_dir=None) -> None:
    """Write model.gin, the vocabulary (vocab.gin, tokenizer/) and hf/ into model_dir.

    vocabulary: the seqio vocabulary the model is trained with (None: model.gin and hf/
    only). hf_side_dir: an HF directory (or a model_dir's hf/) whose config and
    tokenizer/generation files to keep in hf/. final_dir: where model_dir will live when it
    is a staged copy (vocab.gin names paths there). Only process 0 writes.
    """
    if not distributed.is_main_process():
        return
    model_dir = epath.Path(model_dir)
    final_dir = storage.path(final_dir if final_dir is not None else model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    _write(model_dir / MODEL_GIN, model_gin.model_gin_text(cfg, comment))
    if hf_side_dir is not None:
        _copy_files(epath.Path(hf_side_dir), model_dir / HF_DIR, HF_FILES)
    if vocabulary is not None:
        _write_vocabulary(model_dir, final_dir, vocabulary)


def inherited_hf_dir(checkpoint) -> Optional[epath.Path]:
    """The hf/ directory of the model_dir holding `checkpoint` (e.g. train's
    init_checkpoint), to pass on as `hf_side_dir`; None when there is none."""
    if not checkpoint:
        return None
    try:
        hf_dir = find_model_dir(checkpoint) / HF_DIR
    except FileNotFoundError:
        return None
    return hf_dir if hf_dir.is_dir() else None


def generation_eos_ids(checkpoint) -> tuple[int, ...]:
    """The EOS ids of the generation config an imported model brought (its model_dir's
    hf/, `tokenizer.generation_eos_ids`); () for a model that came with none or a
    checkpoint outside a model_dir."""
    hf_dir = inherited_hf_dir(checkpoint)
    return tokenizer.generation_eos_ids(hf_dir) if hf_dir is not None else ()


def find_model_dir(path) -> epath.Path:
    """The model_dir of a model_dir, a step directory (`<model_dir>/<step>`) or a params
    directory (`<model_dir>/<step>/params`): the nearest of these holding model.gin."""
    start = epath.Path(path)
    if not start.exists():
        raise FileNotFoundError(f"{path}: not found")
    candidate = start
    for _ in range(3):  # the path, its parent (a step), its grandparent (a params dir)
        if (candidate / MODEL_GIN).exists():
            return candidate
        if candidate.parent == candidate:
            break
        candidate = candidate.parent
    raise FileNotFoundError(
        f"{path}: no {MODEL_GIN} there or in the two directories above it, so the model "
        "config and vocabulary are unknown. Expected a model_dir written by import_hf or "
        "train (or one of its <step> or <step>/params directories); a model_dir from before "
        "model files were recorded needs --gin_file")


def read_model_files(model_dir) -> ModelFiles:
    """The model config, special ids and tokenizer of a model_dir. A checkpoint from an
    older import_hf (model.gin, vocab.gin, hf/ only) reads its vocabulary from hf/."""
    model_dir = epath.Path(model_dir)
    cfg = model_gin.read_model_gin(model_dir / MODEL_GIN)
    hf_dir = model_dir / HF_DIR
    hf_dir = hf_dir if hf_dir.is_dir() else None
    tok_dir = model_dir / TOKENIZER_DIR
    if (tok_dir / SPECIAL_IDS).exists():
        ids = json.loads((tok_dir / SPECIAL_IDS).read_text())
        tok_dir = tok_dir if ids["kind"] == "hf" else None
    elif hf_dir is not None and (hf_dir / tokenizer.TOKENIZER_JSON).exists():
        tok_dir, ids = hf_dir, special_ids(tokenizer.hf_tokenizer_files(hf_dir))
    else:
        tok_dir, ids = None, {}
    return ModelFiles(model_dir, cfg, ids, tok_dir, hf_dir)


# ----------------------------------------------------------------------------- helpers


def _write_vocabulary(model_dir: epath.Path, final_dir: epath.Path, vocabulary) -> None:
    ids = special_ids(vocabulary)
    tok_dir = model_dir / TOKENIZER_DIR
    tok_dir.mkdir(parents=True, exist_ok=True)
    if ids["kind"] == "hf":
        source = epath.Path(vocabulary.path)
        _write(tok_dir / tokenizer.TOKENIZER_JSON, source.read_bytes())  # whatever its name
        _copy_files(source.parent, tok_dir, tokenizer.TOKENIZER_FILES[1:])
        name = final_dir / TOKENIZER_DIR / tokenizer.TOKENIZER_JSON
        gin_text = tokenizer.vocab_gin_text(name, ids["bos_id"], ids["eos_id"], _VOCAB_COMMENT)
    elif ids["kind"] == "sentencepiece":
        _write(tok_dir / SENTENCEPIECE_MODEL,
               epath.Path(vocabulary.sentencepiece_model_file).read_bytes())
        name = final_dir / TOKENIZER_DIR / SENTENCEPIECE_MODEL
        gin_text = tokenizer.vocab_gin_text(name, comment=_VOCAB_COMMENT)
    else:
        gin_text = tokenizer.vocab_gin_text("byte", comment=_VOCAB_COMMENT)
    _write(tok_dir / SPECIAL_IDS, json.dumps(ids, indent=1) + "\n")
    _write(model_dir / VOCAB_GIN, gin_text)


_VOCAB_COMMENT = "The vocabulary this model is trained with (mathft_jax.convert.model_files)."


def _kind(vocabulary) -> str:
    import seqio  # noqa: PLC0415 (TF; loaded by whoever made the vocabulary)

    from mathft_jax.data import vocab as vocab_lib  # noqa: PLC0415

    for cls, kind in ((vocab_lib.HfTokenizerVocabulary, "hf"),
                      (seqio.SentencePieceVocabulary, "sentencepiece"),
                      (seqio.ByteVocabulary, "byte")):
        if isinstance(vocabulary, cls):
            return kind
    raise TypeError(f"cannot record vocabulary {vocabulary!r}: expected a HuggingFace "
                    "tokenizer, SentencePiece or byte vocabulary (data.vocab.get_vocabulary)")


def _optional_int(value) -> Optional[int]:
    return None if value is None else int(value)


def _copy_files(src: epath.Path, dst: epath.Path, names) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (src / name).exists():
            _write(dst / name, (src / name).read_bytes())


def _write(path: epath.Path, data) -> None:
    """Write `data` unless the file already holds it (a resumed run changes nothing), whole
    or not at all (atomic.py)."""
    data = data.encode() if isinstance(data, str) else data
    if path.exists():
        if path.read_bytes() == data:
            return
        logging.warning("%s changes (the model_dir was written with another model or "
                        "vocabulary before); rewriting it", path)
    atomic.write_bytes(str(path), data)

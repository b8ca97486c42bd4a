"""The HF directory's tokenizer as the model's vocabulary, with its BOS/EOS ids.

Ids come from config.json (`bos_token_id` / `eos_token_id`; the first of a list), else
from tokenizer_config.json's `bos_token` / `eos_token` looked up in tokenizer.json.
"""
from __future__ import annotations

import json
import pathlib
from typing import Optional, Tuple

from mathft_jax.convert.errors import ConversionError

TOKENIZER_JSON = "tokenizer.json"


def special_token_ids(hf_dir) -> Tuple[Optional[int], Optional[int]]:
    """(bos_id, eos_id) of an HF directory; None where it names none."""
    hf_dir = pathlib.Path(hf_dir)
    config = _read_json(hf_dir / "config.json")
    tok_config = _read_json(hf_dir / "tokenizer_config.json")
    ids = []
    for kind in ("bos", "eos"):
        value = config.get(f"{kind}_token_id")
        if isinstance(value, list):  # e.g. Llama 3 instruct lists several EOS ids
            value = value[0] if value else None
        if value is None:
            value = _token_to_id(hf_dir, tok_config.get(f"{kind}_token"))
        ids.append(None if value is None else int(value))
    return ids[0], ids[1]


def hf_vocabulary(hf_dir):
    """`HfTokenizerVocabulary` over the directory's tokenizer.json (needs the data extra)."""
    from mathft_jax.data.vocab import HfTokenizerVocabulary  # noqa: PLC0415 (imports TF/seqio)

    path = pathlib.Path(hf_dir) / TOKENIZER_JSON
    if not path.exists():
        raise ConversionError(f"{path}: missing; the HF directory has no tokenizer.json")
    bos, eos = special_token_ids(hf_dir)
    return HfTokenizerVocabulary(str(path), eos_id=eos, bos_id=bos)


def vocab_gin_text(tokenizer_json, bos_id: Optional[int], eos_id: Optional[int]) -> str:
    """Gin bindings that make `get_vocabulary()` this tokenizer (parse with mathft_jax.data)."""
    lines = [f"get_vocabulary.name_or_path = {str(tokenizer_json)!r}"]
    lines += [f"get_vocabulary.{k} = {v}" for k, v in (("bos_id", bos_id), ("eos_id", eos_id))
              if v is not None]
    return "\n".join(lines) + "\n"


def _token_to_id(hf_dir: pathlib.Path, token) -> Optional[int]:
    if isinstance(token, dict):  # tokenizer_config may hold an AddedToken dict
        token = token.get("content")
    if not token or not (hf_dir / TOKENIZER_JSON).exists():
        return None
    tok = _read_json(hf_dir / TOKENIZER_JSON)
    for added in tok.get("added_tokens", []):
        if added.get("content") == token:
            return added["id"]
    vocab = (tok.get("model") or {}).get("vocab")
    return vocab.get(token) if isinstance(vocab, dict) else None


def _read_json(path: pathlib.Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from e

"""The HF directory's tokenizer as the model's vocabulary, with its special ids, and the
tokenizer files an export writes.

Ids come from config.json (`bos_token_id` / `eos_token_id`; the first of a list), else
from tokenizer_config.json's `bos_token` / `eos_token` looked up in tokenizer.json. The
pad id comes from the tokenizer files alone (`pad_token_id`), so a copy of them without
config.json gives the same id. Paths may be local or `gs://` (etils epath).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Mapping, Optional, Tuple

from etils import epath

from mathft_jax.convert.errors import ConversionError

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"
# The files of an HF tokenizer that travel with a model: the fast tokenizer, its settings,
# the SentencePiece model some slow tokenizers also read, and the chat template transformers
# >= 4.50 saves beside tokenizer_config.json (data/chat_template.py reads it).
TOKENIZER_FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG, "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja")


def special_token_ids(hf_dir) -> Tuple[Optional[int], Optional[int]]:
    """(bos_id, eos_id) of an HF directory; None where it names none."""
    hf_dir = epath.Path(hf_dir)
    config = _read_json(hf_dir / "config.json")
    tok_config = _read_json(hf_dir / TOKENIZER_CONFIG)
    ids = []
    for kind in ("bos", "eos"):
        value = config.get(f"{kind}_token_id")
        if isinstance(value, list):  # e.g. Llama 3 instruct lists several EOS ids
            value = value[0] if value else None
        if value is None:
            value = _token_to_id(hf_dir, tok_config.get(f"{kind}_token"))
        ids.append(None if value is None else int(value))
    return ids[0], ids[1]


def generation_eos_ids(hf_dir) -> Tuple[int, ...]:
    """Every EOS id an HF directory's generation_config.json lists (else config.json's), in
    its order: what `generate` stops on (Llama 3 instruct lists <|end_of_text|>, <|eom_id|>
    and <|eot_id|>); () where neither names one."""
    hf_dir = epath.Path(hf_dir)
    for name in (GENERATION_CONFIG, "config.json"):
        value = _read_json(hf_dir / name).get("eos_token_id")
        if value is not None:
            return tuple(int(v) for v in (value if isinstance(value, list) else [value]))
    return ()


def pad_token_id(tokenizer_dir) -> Optional[int]:
    """The pad id the tokenizer files name: tokenizer_config.json's `pad_token`, else
    tokenizer.json's padding settings; None where neither does."""
    tokenizer_dir = epath.Path(tokenizer_dir)
    pad_token = _read_json(tokenizer_dir / TOKENIZER_CONFIG).get("pad_token")
    value = _token_to_id(tokenizer_dir, pad_token)
    if value is None:
        value = (_read_json(tokenizer_dir / TOKENIZER_JSON).get("padding") or {}).get("pad_id")
    return None if value is None else int(value)


@dataclasses.dataclass(frozen=True)
class TokenizerFiles:
    """An HF tokenizer as its tokenizer.json and special ids: what a model directory records
    of it (model_files), without seqio or TensorFlow (import_hf needs neither)."""

    path: str
    bos_id: Optional[int]
    eos_id: Optional[int]


def hf_tokenizer_files(hf_dir) -> TokenizerFiles:
    """The directory's tokenizer.json and ids. It must name an EOS token: training appends
    it to every solution and sampling stops on it."""
    path = epath.Path(hf_dir) / TOKENIZER_JSON
    if not path.exists():
        raise ConversionError(f"{path}: missing; the HF directory has no tokenizer.json")
    files = TokenizerFiles(str(path), *special_token_ids(hf_dir))
    if files.eos_id is None:
        raise ConversionError(f"{hf_dir}: names no EOS token (config.json's eos_token_id, "
                              "tokenizer_config.json's eos_token): set one of them to the "
                              "token that ends a solution")
    return files


def hf_vocabulary(hf_dir):
    """`HfTokenizerVocabulary` over the directory's tokenizer.json (needs the data extra)."""
    from mathft_jax.data.vocab import HfTokenizerVocabulary  # noqa: PLC0415 (imports TF/seqio)

    files = hf_tokenizer_files(hf_dir)
    return HfTokenizerVocabulary(files.path, eos_id=files.eos_id, bos_id=files.bos_id)


def vocab_gin_text(name_or_path, bos_id: Optional[int] = None, eos_id: Optional[int] = None,
                   comment: str = "") -> str:
    """Gin bindings that make `get_vocabulary()` this vocabulary (parse with mathft_jax.data):
    a tokenizer.json (with its ids), a SentencePiece `.model` file, or 'byte'."""
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [f"get_vocabulary.name_or_path = {str(name_or_path)!r}"]
    lines += [f"get_vocabulary.{k} = {v}" for k, v in (("bos_id", bos_id), ("eos_id", eos_id))
              if v is not None]
    return "\n".join(lines) + "\n"


def tokenizer_config(tokenizer_dir, ids: Mapping[str, Optional[int]],
                     model_max_length: int) -> dict:
    """tokenizer_config.json for an export: the source's own, with the BOS/EOS/PAD tokens it
    does not name filled in from `ids` ({"bos_id", "eos_id", "pad_id"}); without one, a
    minimal config that makes `AutoTokenizer` a `PreTrainedTokenizerFast` over tokenizer.json.

    A token the source names (even as null, as Qwen's `bos_token` is) is kept: the tokenizer
    is the user's, and generation_config.json carries the ids generation uses.
    """
    tokenizer_dir = epath.Path(tokenizer_dir)
    config = _read_json(tokenizer_dir / TOKENIZER_CONFIG)
    if not config:
        config = {"tokenizer_class": "PreTrainedTokenizerFast",
                  "model_max_length": model_max_length, "clean_up_tokenization_spaces": False}
    for kind in ("bos", "eos", "pad"):
        token_id = ids.get(f"{kind}_id")
        if f"{kind}_token" not in config and token_id is not None:
            token = _id_to_token(tokenizer_dir, token_id)
            if token is not None:
                config[f"{kind}_token"] = token
    return config


def hf_token_ids(ids: Mapping[str, Optional[int]]) -> dict:
    """config.json's and generation_config.json's token ids from special_ids.json: what the
    model was fine-tuned with (its BOS is the start token it reads first)."""
    return {"bos_token_id": ids.get("decoder_start_id"), "eos_token_id": ids.get("eos_id"),
            "pad_token_id": ids.get("pad_id")}


def _id_to_token(tokenizer_dir: epath.Path, token_id: int) -> Optional[str]:
    import tokenizers  # noqa: PLC0415 (a dependency of the data extra, needed only here)

    tok = tokenizers.Tokenizer.from_str((tokenizer_dir / TOKENIZER_JSON).read_text())
    return tok.id_to_token(int(token_id))


def _token_to_id(hf_dir: epath.Path, token) -> Optional[int]:
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


def _read_json(path: epath.Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from e

"""Vocabularies: bytes for tiny models, SentencePiece models, HuggingFace `tokenizer.json`.

`get_vocabulary(name_or_path)` picks one: "byte", a `*.model` SentencePiece file, or a
`tokenizer.json` (or a directory holding one).
"""
from __future__ import annotations

from typing import Optional, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf
from etils import epath

from mathft_jax.core.settings import SettingError


class HfTokenizerVocabulary(seqio.Vocabulary):
    """A seqio Vocabulary over a HuggingFace `tokenizer.json`, via the `tokenizers` package.

    Ids are the tokenizer's own. `encode` adds no special tokens (seqio appends EOS itself;
    a model's BOS is the decoder's start token, see `dataset.get_dataset`). `decode` skips
    special tokens. seqio pads with id 0 (`pad_id`); padded positions carry zero loss weight
    and segment id 0, so a real token 0 (e.g. Qwen's "!") is harmless there.
    `eos_id` / `bos_id` default to the tokenizer's `</s>`/`<|endoftext|>`-style tokens when
    named by `eos_token` / `bos_token`, else must be given.
    """

    def __init__(self, tokenizer_json: str, eos_id: Optional[int] = None,
                 bos_id: Optional[int] = None, eos_token: Optional[str] = None,
                 bos_token: Optional[str] = None, extra_ids: int = 0):
        self._path = str(tokenizer_json)
        self._tokenizer = None
        self._eos_id = eos_id if eos_id is not None else self._token_id(eos_token)
        self._bos_id = bos_id if bos_id is not None else self._token_id(bos_token)
        if self._eos_id is None:  # seqio appends EOS to every target; sampling stops on it
            raise SettingError(f"{self._path}: the tokenizer names no EOS token; bind "
                               "get_vocabulary.eos_id (or get_vocabulary.eos_token) to the "
                               "token that ends a solution")
        super().__init__(extra_ids=extra_ids)

    # Lazy loading keeps the object picklable (gin deep-copies configurable arguments).
    def __getstate__(self):
        return {**self.__dict__, "_tokenizer": None}

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            import tokenizers  # noqa: PLC0415 (optional dependency of the data extra)

            # from_str on epath's text, not from_file: the path may be gs:// (a model_dir's copy)
            self._tokenizer = tokenizers.Tokenizer.from_str(epath.Path(self._path).read_text())
        return self._tokenizer

    @property
    def path(self) -> str:
        """The tokenizer.json this vocabulary reads (its siblings hold the tokenizer's other
        files, see `mathft_jax.convert.model_files`)."""
        return self._path

    def _token_id(self, token: Optional[str]) -> Optional[int]:
        if token is None:
            return None
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{self._path}: token {token!r} is not in the vocabulary")
        return token_id

    @property
    def eos_id(self) -> Optional[int]:
        return self._eos_id

    @property
    def bos_id(self) -> Optional[int]:
        return self._bos_id

    @property
    def unk_id(self) -> Optional[int]:
        model = self.tokenizer.model
        unk = getattr(model, "unk_token", None)
        return self.tokenizer.token_to_id(unk) if unk else None

    @property
    def _base_vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def _encode(self, s: str) -> Sequence[int]:
        return self.tokenizer.encode(s, add_special_tokens=False).ids

    def _decode(self, ids) -> str:
        ids = [int(i) for i in ids if 0 <= int(i) < self._base_vocab_size]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        def encode(text) -> np.ndarray:
            # Eagerly a 0-d object array; inside tf.data / tf.function plain `bytes`.
            raw = text.item() if isinstance(text, np.ndarray) else text
            return np.asarray(self._encode(raw.decode("utf-8")), dtype=np.int32)

        ids = tf.numpy_function(encode, [s], tf.int32, stateful=False)
        ids.set_shape([None])
        return ids

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        def decode(batch: np.ndarray) -> np.ndarray:
            rows = batch.reshape(-1, batch.shape[-1]) if batch.ndim else batch.reshape(1, 1)
            # seqio pads with 0 and zeroes everything after EOS: drop those trailing ids.
            texts = [self._decode(np.trim_zeros(row, "b")).encode("utf-8") for row in rows]
            return np.asarray(texts, dtype=object).reshape(batch.shape[:-1])

        texts = tf.numpy_function(decode, [ids], tf.string, stateful=False)
        texts.set_shape(ids.shape[:-1])
        return texts

    def __eq__(self, other) -> bool:
        return (isinstance(other, HfTokenizerVocabulary) and self._path == other._path
                and (self.eos_id, self.bos_id, self.extra_ids)
                == (other.eos_id, other.bos_id, other.extra_ids))

    def __hash__(self) -> int:
        return hash((self._path, self.eos_id, self.bos_id, self.extra_ids))

    def __str__(self) -> str:
        return f"HfTokenizerVocabulary(file={self._path}, size={self.vocab_size})"


@gin.configurable
def get_vocabulary(name_or_path: str = "byte", **kwargs) -> seqio.Vocabulary:
    """"byte" -> ByteVocabulary; `*.model` -> SentencePieceVocabulary; `tokenizer.json` or a
    directory holding one -> HfTokenizerVocabulary (kwargs such as eos_id/bos_id go to it)."""
    if name_or_path == "byte":
        return seqio.ByteVocabulary(**kwargs)
    path = epath.Path(name_or_path)  # local or gs://
    if path.is_dir() and (path / "tokenizer.json").exists():
        path = path / "tokenizer.json"
    if path.suffix == ".json" and path.exists():
        return HfTokenizerVocabulary(str(path), **kwargs)
    if path.suffix == ".model" and path.exists():
        return seqio.SentencePieceVocabulary(str(path), **kwargs)
    if not path.exists():
        raise SettingError(f"get_vocabulary.name_or_path={name_or_path!r}: not found (a "
                           "checkpoint's vocab.gin names its tokenizer/ by absolute path: if "
                           "the checkpoint moved, bind get_vocabulary.name_or_path to its "
                           "tokenizer/ folder there)")
    raise SettingError(f"get_vocabulary.name_or_path={name_or_path!r}: expected 'byte', a "
                       "SentencePiece .model file, a HuggingFace tokenizer.json or a folder "
                       "holding one")


def decoder_start_id(vocabulary: seqio.Vocabulary) -> int:
    """The token the decoder reads before the first prompt token: the vocabulary's BOS where
    it has one (imported Llama/Gemma checkpoints expect it), else seqio's 0."""
    try:
        bos = vocabulary.bos_id
    except NotImplementedError:
        return 0
    return int(bos) if bos is not None and bos >= 0 else 0

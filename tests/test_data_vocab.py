"""Vocabularies: bytes, a SentencePiece model and a HuggingFace tokenizer.json, both trained
here on MATH text read from ../shared/data; every MATH500 problem must round-trip."""
import copy
import io
import json
import pickle

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
seqio = pytest.importorskip("seqio")

from mathft_jax.data import vocab  # noqa: E402
from mathft_jax.core.settings import SettingError  # noqa: E402

SPECIALS = ["<pad>", "</s>", "<unk>", "<s>"]  # ids 0..3, the seqio convention plus a BOS


def _math_lines(data_dir, limit=3000):
    rows = [json.loads(line) for line in (data_dir / "math/train.jsonl").open()][:limit]
    return [line for r in rows for line in (r["problem"] + "\n" + r["solution"]).split("\n") if line.strip()]


@pytest.fixture(scope="session")
def spm_path(data_dir, tmp_path_factory):
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_math_lines(data_dir)), model_writer=model, vocab_size=1000,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, byte_fallback=True, character_coverage=1.0,
        # Identity normalisation and no dummy prefix make decode(encode(s)) == s exactly.
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, user_defined_symbols=["\n"], minloglevel=2, num_threads=2)
    path = tmp_path_factory.mktemp("spm") / "math.model"
    path.write_bytes(model.getvalue())
    return path


@pytest.fixture(scope="session")
def tokenizer_json(data_dir, tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_math_lines(data_dir), trainer)
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="session")
def vocabularies(spm_path, tokenizer_json):
    return {
        "byte": vocab.get_vocabulary("byte"),
        "sentencepiece": vocab.get_vocabulary(str(spm_path)),
        "hf": vocab.get_vocabulary(str(tokenizer_json), eos_token="</s>", bos_token="<s>"),
    }


@pytest.fixture(scope="session")
def math500(data_dir):
    return [json.loads(line)["problem"] for line in (data_dir / "prm800k/math_splits/test.jsonl").open()]


@pytest.mark.parametrize("name", ["byte", "sentencepiece", "hf"])
def test_every_math500_problem_round_trips(vocabularies, math500, name):
    v = vocabularies[name]
    assert len(math500) == 500
    failures = [i for i, text in enumerate(math500) if v.decode(v.encode(text)) != text]
    assert not failures, f"{name}: {len(failures)} problems do not round-trip, e.g. #{failures[:5]}"
    if name != "byte":  # a trained vocabulary compresses MATH text
        assert sum(len(v.encode(t)) for t in math500) < 0.6 * sum(len(t.encode()) for t in math500)


@pytest.mark.parametrize("name", ["byte", "sentencepiece", "hf"])
def test_tf_side_matches_python_side(vocabularies, math500, name):
    v = vocabularies[name]
    for text in math500[:25]:
        ids = v.encode(text)
        assert v.encode_tf(tf.constant(text)).numpy().tolist() == ids
        assert v.decode_tf(tf.constant(ids, tf.int32)).numpy().decode() == text
    # Batched, padded decode stops at EOS and ignores the padding after it.
    rows = [v.encode(t) + [v.eos_id] for t in math500[:3]]
    width = max(map(len, rows)) + 4
    padded = tf.constant([r + [0] * (width - len(r)) for r in rows], tf.int32)
    assert [s.decode() for s in v.decode_tf(padded).numpy()] == math500[:3]


def test_hf_vocabulary_ids_and_pickling(tokenizer_json):
    v = vocab.HfTokenizerVocabulary(str(tokenizer_json), eos_id=1, bos_id=3)
    assert (v.eos_id, v.bos_id, v.pad_id, v.unk_id) == (1, 3, 0, None)
    assert v.vocab_size == 800
    assert 1 not in v.encode("a</s>b".replace("</s>", " ")), "encode adds no special tokens"
    assert v.decode(v.encode("x = 1") + [1, 57, 58]) == "x = 1"  # stops at EOS
    clone = pickle.loads(pickle.dumps(v))
    assert clone == v and clone.encode("\\frac{1}{2}") == v.encode("\\frac{1}{2}")
    assert copy.deepcopy(v) == v
    by_name = vocab.HfTokenizerVocabulary(str(tokenizer_json), eos_token="</s>", bos_token="<s>")
    assert (by_name.eos_id, by_name.bos_id) == (1, 3)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vocab.HfTokenizerVocabulary(str(tokenizer_json), eos_token="<eos_missing>")
    # no EOS at all: named now, not as a TensorFlow error at the first padded batch
    with pytest.raises(SettingError, match="names no EOS token; bind get_vocabulary.eos_id"):
        vocab.HfTokenizerVocabulary(str(tokenizer_json), bos_id=3)


def test_get_vocabulary_dispatch_and_decoder_start(tokenizer_json, spm_path):
    assert isinstance(vocab.get_vocabulary("byte"), seqio.ByteVocabulary)
    assert isinstance(vocab.get_vocabulary(str(spm_path)), seqio.SentencePieceVocabulary)
    from_dir = vocab.get_vocabulary(str(tokenizer_json.parent), bos_id=3, eos_id=1)
    assert isinstance(from_dir, vocab.HfTokenizerVocabulary)
    with pytest.raises(SettingError, match="'/no/such/tokenizer.json': not found .* if the "
                       "checkpoint moved, bind get_vocabulary.name_or_path"):
        vocab.get_vocabulary("/no/such/tokenizer.json")
    with pytest.raises(SettingError, match="expected 'byte', a SentencePiece"):
        vocab.get_vocabulary(str(spm_path.parent))  # a folder with no tokenizer.json
    assert vocab.decoder_start_id(from_dir) == 3  # BOS starts the decoder for HF models
    assert vocab.decoder_start_id(vocab.get_vocabulary("byte")) == 0
    assert vocab.decoder_start_id(vocab.get_vocabulary(str(spm_path))) == 0  # bos_id = -1
    assert np.asarray(vocab.get_vocabulary("byte").encode("A")).tolist() == [ord("A") + 3]

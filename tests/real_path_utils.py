"""What a user of the real path brings, built at test time (no downloads): a BPE tokenizer
trained with `tokenizers` on MATH text, and a tiny random HF model saved with transformers.

Special ids follow Llama's convention (0 <unk>, 1 <s> = BOS, 2 </s> = EOS), unlike seqio's
(EOS 1), so a code path that assumes seqio's ids shows up.
"""
from __future__ import annotations

import json
import pathlib

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3
UNK, BOS, EOS, PAD = range(4)


def math_lines(data_dir, limit=2000) -> list[str]:
    rows = [json.loads(line) for line in (pathlib.Path(data_dir) / "math/train.jsonl").open()][:limit]
    return [line for r in rows for line in (r["problem"] + "\n" + r["solution"]).split("\n")
            if line.strip()]


def train_tokenizer(lines, out_dir, vocab_size=512) -> pathlib.Path:
    """A byte-level BPE `tokenizer.json` (+ tokenizer_config.json) in out_dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": False}))
    return out / "tokenizer.json"


def save_tiny_llama(out_dir, tokenizer_dir, vocab_size, family="llama", seed=0, **overrides):
    """A tiny random Llama (or Qwen2) with the tokenizer's files beside it."""
    import shutil

    import torch
    import transformers

    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, bos_token_id=BOS, eos_token_id=EOS,
                  pad_token_id=PAD)
    cls = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
           "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}[family]
    config = getattr(transformers, cls[0])(**{**common, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, cls[1])(config)
    out = pathlib.Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(pathlib.Path(tokenizer_dir) / name, out / name)
    return out

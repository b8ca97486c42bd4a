"""`python -m mathft_jax.convert.export_hf --checkpoint=CKPT --out=DIR`: our checkpoint
as an HF directory that `transformers.AutoTokenizer` and `AutoModelForCausalLM` load.

CKPT is any model_dir (import_hf's output or a training stage's checkpoints, local or
`gs://`), one of its `<step>` directories or a `<step>/params` directory; a model_dir
exports its latest step. The model config, vocabulary and special ids come from the
model_dir's files (`mathft_jax.convert.model_files`), and the imported model's `hf/` adds its
config.json fields and generation settings. DIR gets config.json and
generation_config.json with our BOS/EOS/PAD ids, the tokenizer files (tokenizer_config.json
completed or made up), and the safetensors shards. `--gin_file` overrides the model
config (the only way to export a model_dir from before model files were recorded, which
then has no tokenizer). DIR appears only once everything is written.

A LoRA checkpoint (convert/lora_checkpoints.py) exports as its base, the model DIR holds,
plus the adapters as a PEFT folder in DIR/adapter (adapter_config.json,
adapter_model.safetensors: `peft.PeftModel.from_pretrained(model, "DIR/adapter")`; in a
folder of its own because transformers, finding adapter_config.json in DIR, would load
DIR as an adapter); `--merge` exports one plain model, the adapters merged into the base.
"""
from __future__ import annotations

import argparse
import json
import pathlib
from typing import Optional, Sequence

from absl import logging

from mathft_jax.convert import checkpoints, lora_checkpoints, model_files, peft_format
from mathft_jax.convert.errors import ConversionError
from mathft_jax.core import cli_errors
from mathft_jax.models import lora as lora_lib, partitioning
from mathft_jax.convert import hf, model_gin, tokenizer
from mathft_jax.convert.staging import staged_dir

ADAPTER_DIR = "adapter"  # a LoRA checkpoint's PEFT folder, beside the base it applies to


def export_checkpoint(checkpoint, out, *, gin_file=None, dtype: Optional[str] = None,
                      max_shard_bytes: int = hf.DEFAULT_SHARD_BYTES, mesh=None,
                      merge: bool = False) -> str:
    """Export `checkpoint` to the HF directory `out`; returns the params directory read.

    A LoRA checkpoint (lora.json) exports its base with the adapters as a PEFT folder in
    `out/adapter`, or with `merge` the base with the adapters merged into it."""
    files = _model_files(checkpoint, gin_file)
    cfg = model_gin.read_model_gin(gin_file) if gin_file else files.config
    hf_dir = files.hf_dir if files else None
    extra = hf.read_hf_config(hf_dir) if hf_dir and (hf_dir / hf.CONFIG_FILE).exists() else {}
    if files and files.ids:
        extra = {**extra, **tokenizer.hf_token_ids(files.ids)}
    # default: the imported checkpoint's own dtype (params are float32 for training)
    dtype = dtype or hf.checkpoint_dtype(extra)
    params_dir = checkpoints.resolve_params_dir(str(checkpoint))
    record = lora_checkpoints.read_record(checkpoint)
    if merge and record is None:
        raise ConversionError(f"{checkpoint}: --merge needs a LoRA checkpoint (lora.json); "
                              "this one holds plain parameters")
    partitioner = partitioning.Partitioner.create(cfg, mesh)
    with staged_dir(out) as tmp:
        if record is None:
            params = checkpoints.load_params(params_dir, cfg, partitioner)
        else:
            lora = lora_checkpoints.settings_from(record["lora"])
            params = lora_checkpoints.load_base(record["base"], cfg, partitioner)
            adapters = lora_checkpoints.load_adapters(params_dir, lora, cfg, partitioner)
            if merge:
                params = lora_lib.merge(params, adapters, lora, cfg)
            else:
                peft_format.write_adapter(tmp / ADAPTER_DIR, adapters, lora, cfg,
                                          base_model_name_or_path=str(pathlib.Path(out).absolute()))
        hf.save_hf(tmp, cfg, params, extra=extra, dtype=dtype, max_shard_bytes=max_shard_bytes)
        if files:
            write_tokenizer_files(tmp, files, cfg.max_seq_len)
    return params_dir


def write_tokenizer_files(out: pathlib.Path, files: model_files.ModelFiles,
                          model_max_length: int) -> None:
    """The tokenizer files and generation_config.json of an export (into `out`, local)."""
    if files.tokenizer_dir is not None:
        for name in tokenizer.TOKENIZER_FILES:
            if name != tokenizer.TOKENIZER_CONFIG and (files.tokenizer_dir / name).exists():
                (out / name).write_bytes((files.tokenizer_dir / name).read_bytes())
        config = tokenizer.tokenizer_config(files.tokenizer_dir, files.ids, model_max_length)
        _write_json(out / tokenizer.TOKENIZER_CONFIG, config)
    else:
        logging.warning("%s has no HuggingFace tokenizer (vocabulary %r): the export holds "
                        "none", files.model_dir, files.ids.get("kind"))
    generation = files.hf_dir / tokenizer.GENERATION_CONFIG if files.hf_dir else None
    base = json.loads(generation.read_text()) if generation and generation.exists() else {}
    if files.ids:
        base = {**base, **tokenizer.hf_token_ids(files.ids)}
    if base:
        _write_json(out / tokenizer.GENERATION_CONFIG, base)


def _model_files(checkpoint, gin_file) -> Optional[model_files.ModelFiles]:
    try:
        return model_files.read_model_files(model_files.find_model_dir(checkpoint))
    except FileNotFoundError:
        if not gin_file:
            raise
        logging.warning("%s: no model files (model.gin, tokenizer/); exporting the weights "
                        "with --gin_file's config, without a tokenizer", checkpoint)
        return None


def _write_json(path: pathlib.Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True,
                        help="a model_dir (import_hf output or a stage's checkpoints), a step "
                             "directory or a params directory")
    parser.add_argument("--out", required=True, help="HF directory to create")
    parser.add_argument("--gin_file", default=None,
                        help="model config override (default: the model_dir's model.gin)")
    parser.add_argument("--dtype", default=None,
                        help="tensor dtype (default: the imported checkpoint's, else the params')")
    parser.add_argument("--max_shard_bytes", type=int, default=hf.DEFAULT_SHARD_BYTES)
    parser.add_argument("--merge", action="store_true",
                        help="a LoRA checkpoint: one plain model with the adapters merged "
                             "(default: its base, and the adapters as a PEFT folder in "
                             f"DIR/{ADAPTER_DIR})")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    args = parser.parse_args(argv)
    params_dir = cli_errors.guard(
        lambda: export_checkpoint(args.checkpoint, args.out, gin_file=args.gin_file,
                                  dtype=args.dtype, max_shard_bytes=args.max_shard_bytes,
                                  merge=args.merge),
        "export_hf", args.debug)
    print(json.dumps({"wrote": args.out, "params": params_dir}))


if __name__ == "__main__":
    main()
